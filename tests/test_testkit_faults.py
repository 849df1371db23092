"""
Tests for L{clustron.testkit.faults} and the fault methods of
L{clustron.testkit.cluster.SimCluster}.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from clustron.testkit import faults
from clustron.testkit.checkers import MembershipChecker
from clustron.testkit.cluster import SimCluster
from clustron.testkit.faults import Bimodal, Exponential, Fixed, Step, Uniform

NODES = ["n1", "n2", "n3", "n4", "n5"]


class DistributionTests(SynchronousTestCase):
    def test_bounds_and_determinism(self) -> None:
        for delay in (
            Fixed(0.01),
            Uniform(0.001, 0.02),
            Exponential(0.001, 0.01, 0.2),
            Bimodal(0.001, 0.3, 0.1),
        ):
            first = [delay(random.Random(7)) for _ in range(3)]
            draws = [delay(rng) for rng in [random.Random(7)] for _ in range(200)]
            self.assertEqual(first[0], draws[0])
            low, high = {
                "fixed": (0.01, 0.01),
                "uniform": (0.001, 0.02),
                "exponential": (0.001, 0.2),
                "bimodal": (0.001, 0.3),
            }[delay.name]
            self.assertTrue(all(low <= d <= high for d in draws), delay)

    def test_spec_round_trip(self) -> None:
        for delay in (
            Fixed(0.5),
            Uniform(0.0, 1.0),
            Exponential(0.0, 0.1, 1.0),
            Bimodal(0.1, 0.2, 0.5),
        ):
            self.assertEqual(faults.delay_from_spec(delay.spec()), delay)
        self.assertEqual(faults.delay_from_spec(0.25), 0.25)

    def test_bad_specs(self) -> None:
        for bad in ("gauss(1,2)", "uniform(2,1)", "uniform(1)", "fast", -1, "bimodal(0,1,2)"):
            self.assertRaises(ValueError, faults.delay_from_spec, bad)
        self.assertRaises(ValueError, Uniform, -1.0, 2.0)

    def test_traced_with_parameters(self) -> None:
        cluster = SimCluster(2, seed=1)
        cluster.set_links(delay=Uniform(0.001, 0.002))
        self.assertIn("delay=uniform(0.001,0.002)", cluster.network.recent_events()[-1])

    def test_random_link_params(self) -> None:
        params = faults.random_link_params(random.Random(3), max_loss=0.1)
        self.assertEqual(sorted(params), ["delay", "duplicate", "loss", "reorder"])
        self.assertLessEqual(params["loss"], 0.1)
        faults.delay_from_spec(params["delay"])


class ShapeTests(SynchronousTestCase):
    def test_halves(self) -> None:
        minority, majority = faults.halves(NODES, random.Random(1))
        self.assertEqual((len(minority), len(majority)), (2, 3))
        self.assertEqual(sorted(minority + majority), NODES)

    def test_isolate_one(self) -> None:
        lone, rest = faults.isolate_one(NODES, random.Random(2))
        self.assertEqual(len(lone), 1)
        self.assertEqual(sorted(lone + rest), NODES)

    def test_majorities_ring(self) -> None:
        """
        Every node sees a majority (itself included), and no two nodes see
        the same set.
        """
        for size in (4, 5, 7, 9):
            nodes = [f"n{i}" for i in range(1, size + 1)]
            cuts = set(faults.majorities_ring(nodes, random.Random(size)))
            seen = {}
            for a in nodes:
                reach = frozenset([a] + [b for b in nodes if b != a and (a, b) not in cuts])
                self.assertGreaterEqual(len(reach), size // 2 + 1)
                seen[a] = reach
                for b in nodes:
                    self.assertEqual((a, b) in cuts, (b, a) in cuts)
            self.assertEqual(len(set(seen.values())), size)

    def test_bridge(self) -> None:
        left, right = faults.bridge(NODES, random.Random(4))
        self.assertEqual(len(left) + len(right), 4)
        self.assertFalse(set(left) & set(right))

    def test_one_way(self) -> None:
        cuts = faults.one_way(NODES, random.Random(5))
        self.assertEqual(len(cuts), 4)
        common = set.intersection(*({a, b} for a, b in cuts))
        self.assertEqual(len(common), 1)
        target = common.pop()
        sources = {a for a, _ in cuts}
        self.assertTrue(sources == {target} or target not in sources)

    def test_swizzle_clog(self) -> None:
        steps = faults.swizzle_clog(NODES, random.Random(6), start=1.0)
        clogs = [s for s in steps if s.action == "clog"]
        unclogs = [s for s in steps if s.action == "unclog"]
        self.assertEqual(len(clogs), len(unclogs))
        self.assertGreater(len(clogs), 0)
        self.assertEqual(steps, sorted(steps, key=lambda s: s.at))
        self.assertLess(clogs[-1].at, unclogs[0].at)
        self.assertEqual(
            sorted(map(str, (s.params["pairs"] for s in clogs))),
            sorted(map(str, (s.params["pairs"] for s in unclogs))),
        )


class StepTests(SynchronousTestCase):
    def test_describe(self) -> None:
        self.assertEqual(
            Step(1.5, "partition", {"groups": [["n1"], ["n2", "n3"]]}).describe(),
            "t=1.500 partition groups=n1 | n2,n3",
        )
        self.assertEqual(
            Step(2, "cut", {"pairs": [("n1", "n2")]}).describe(), "t=2.000 cut pairs=n1>n2"
        )
        self.assertEqual(Step(0, "heal").describe(), "t=0.000 heal")

    def test_unknown_action(self) -> None:
        cluster = SimCluster(2)
        error = self.assertRaises(ValueError, faults.apply, cluster, Step(0, "explode"))
        self.assertIn("unknown fault action 'explode'", str(error))

    def test_bad_node(self) -> None:
        cluster = SimCluster(2)
        error = self.assertRaises(
            ValueError, faults.apply, cluster, Step(0, "crash", {"node": "n9"})
        )
        self.assertIn("node must be a node id", str(error))

    def test_restart_needs_crash(self) -> None:
        cluster = SimCluster(2)
        cluster.start()
        self.assertRaises(ValueError, faults.apply, cluster, Step(0, "restart", {"node": "n1"}))


class ApplyTests(SynchronousTestCase):
    """
    Fault steps act on a running cluster.
    """

    def setUp(self) -> None:
        self.cluster = SimCluster(5, seed=2)
        self.checker = MembershipChecker()
        self.cluster.on_node(self.checker.attach)
        self.cluster.start()
        self.assertTrue(self.cluster.run_until(self.cluster.converged, 5))

    def apply(self, action: str, **params: object) -> None:
        faults.apply(self.cluster, Step(0, action, params))

    def test_partition_and_heal(self) -> None:
        self.apply("partition", groups=[["n1", "n2"], ["n3", "n4", "n5"]])
        self.cluster.run(5)
        self.assertTrue(self.cluster.converged(["n3", "n4", "n5"]))
        self.apply("heal")
        self.assertTrue(self.cluster.run_until(self.cluster.converged, 10))
        self.checker.assert_ok()

    def test_cut_pairs(self) -> None:
        self.apply("cut", pairs=[("n1", "n2")])
        self.assertTrue(self.cluster.network.link("10.0.0.1", "10.0.0.2").cut)
        self.assertFalse(self.cluster.network.link("10.0.0.2", "10.0.0.1").cut)

    def test_links(self) -> None:
        self.apply("links", nodes=["n1", "n2"], loss=0.5, delay="uniform(0.1,0.2)")
        link = self.cluster.network.link("10.0.0.2", "10.0.0.1")
        self.assertEqual(link.loss, 0.5)
        self.assertEqual(link.delay, Uniform(0.1, 0.2))
        self.assertEqual(self.cluster.network.link("10.0.0.3", "10.0.0.1").loss, 0.0)

    def test_clog_unclog(self) -> None:
        self.apply("clog", pairs=[("n1", "n2")], seconds=1.0)
        self.assertTrue(self.cluster.network.clogged("10.0.0.1", "10.0.0.2"))
        self.apply("unclog", pairs=[("n1", "n2")])
        self.assertFalse(self.cluster.network.clogged("10.0.0.1", "10.0.0.2"))

    def test_crash_and_restart_kept(self) -> None:
        before = self.cluster.nodes["n2"].membership.incarnation
        self.apply("crash", node="n2")
        self.assertEqual(self.cluster.crashed, {"n2"})
        self.cluster.run(3)
        self.apply("restart", node="n2")
        self.assertTrue(self.cluster.run_until(self.cluster.converged, 10))
        self.assertGreater(self.cluster.nodes["n2"].membership.incarnation, before)
        self.checker.assert_ok()

    def test_restart_wiped_new_identity(self) -> None:
        """
        A wiped restart brings a new node id to the same address; later
        steps naming the old id act on the new one.
        """
        self.apply("crash", node="n2")
        self.cluster.run(3)
        self.apply("restart", node="n2", wipe=True)
        self.assertEqual(self.cluster.current("n2"), "n2w1")
        self.assertEqual(self.cluster.host_of("n2w1"), "10.0.0.2")
        self.assertEqual(self.cluster.retired, {"n2"})
        self.assertTrue(self.cluster.run_until(self.cluster.converged, 20))
        view = self.cluster.nodes["n1"].view
        assert view is not None
        self.assertTrue(view.is_active_member("n2w1"))
        self.assertFalse(view.is_active_member("n2"))
        self.apply("crash", node="n2")
        self.assertIn("n2w1", self.cluster.crashed)
        self.assertRaises(ValueError, self.cluster.restart, "n2")
        self.checker.assert_ok()

    def test_pause_resume(self) -> None:
        self.apply("pause", node="n1")
        self.assertEqual(self.cluster.paused(), ["n1"])
        self.apply("resume", node="n1")
        self.assertEqual(self.cluster.paused(), [])
        self.apply("crash", node="n1")
        self.assertRaises(ValueError, faults.apply, self.cluster, Step(0, "pause", {"node": "n1"}))

    def test_slow_and_skew(self) -> None:
        self.apply("slow", node="n3", delay="uniform(0.0,0.05)")
        self.assertEqual(self.cluster.host("n3").processing_delay, Uniform(0.0, 0.05))
        self.apply("skew", node="n3", seconds=-2.0)
        self.assertEqual(self.cluster.host("n3").skew, -2.0)
        self.cluster.run(10)
        self.assertTrue(self.cluster.converged())
        self.checker.assert_ok()
