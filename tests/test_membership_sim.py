"""
Membership, election, quorum and failure detection on the simulated network.

Every test runs whole clusters of real nodes on one clock from one seed, and
checks the promises of DESIGN section 4 after every event with
L{MembershipChecker}.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from clustron.testkit.checkers import MembershipChecker
from clustron.testkit.cluster import SimCluster


def make(size: int, seed: int = 1, **kwargs: Any) -> tuple[SimCluster, MembershipChecker]:
    cluster = SimCluster(size, seed=seed, **kwargs)
    checker = MembershipChecker()
    cluster.on_node(checker.attach)
    return cluster, checker


class FormingTests(SynchronousTestCase):
    """
    Clusters form once, with every node, quickly.
    """

    def test_five_nodes_form_one_view(self) -> None:
        cluster, checker = make(5)
        cluster.start()
        self.assertTrue(cluster.run_until(cluster.converged, timeout=2.0))
        coordinators = {cluster.coordinator_seen_by(n) for n in cluster.node_ids}
        self.assertEqual(coordinators, {"n5"})
        checker.assert_ok()

    def test_fifty_nodes_form_one_view(self) -> None:
        cluster, checker = make(50, seed=3)
        cluster.start()
        self.assertTrue(cluster.run_until(cluster.converged, timeout=6.0))
        # Rank compares node ids as strings: "n9" outranks "n50".
        self.assertEqual(cluster.coordinator_seen_by("n1"), "n9")
        checker.assert_ok()

    def test_bootstrap_expect_waits_for_enough_nodes(self) -> None:
        """
        With bootstrap_expect 3, two nodes alone never form a cluster; the
        third one's arrival forms it.
        """
        cluster, checker = make(3, overrides={"membership": {"bootstrap_expect": 3}})
        cluster.start(["n1", "n2"])
        cluster.run(5)
        self.assertFalse(any(n.membership.joined for n in cluster.live()))
        cluster.start(["n3"])
        self.assertTrue(cluster.run_until(cluster.converged, timeout=2.0))
        checker.assert_ok()

    def test_late_node_joins_existing_cluster(self) -> None:
        cluster, checker = make(4, overrides={"membership": {"bootstrap_expect": 3}})
        cluster.start(["n1", "n2", "n3"])
        self.assertTrue(cluster.run_until(lambda: cluster.converged(["n1", "n2", "n3"]), 2.0))
        epoch = cluster.nodes["n1"].view.epoch  # type: ignore[union-attr]
        cluster.start(["n4"])
        self.assertTrue(cluster.run_until(cluster.converged, timeout=2.0))
        view = cluster.nodes["n4"].view
        assert view is not None
        # n4 outranks n3 but joins: no new election, same epoch.
        self.assertEqual((view.epoch, view.coordinator), (epoch, "n3"))
        checker.assert_ok()

    def test_priority_outranks_node_id(self) -> None:
        cluster, checker = make(3, per_node={"n1": {"priority": 10}})
        cluster.start()
        self.assertTrue(cluster.run_until(cluster.converged, timeout=2.0))
        self.assertEqual(cluster.coordinator_seen_by("n3"), "n1")
        checker.assert_ok()

    def test_same_trace_for_same_seed(self) -> None:
        hashes = []
        for _ in range(2):
            cluster, _checker = make(5, seed=11)
            cluster.start()
            cluster.run(3)
            hashes.append(cluster.network.trace_hash())
        self.assertEqual(hashes[0], hashes[1])


class FailureTests(SynchronousTestCase):
    """
    Crashes, pauses and restarts are detected within the configured bounds.
    """

    def formed(self, size: int = 5, **kwargs: Any) -> tuple[SimCluster, MembershipChecker]:
        cluster, checker = make(size, **kwargs)
        cluster.start()
        self.assertTrue(cluster.run_until(cluster.converged, timeout=3.0))
        return cluster, checker

    def test_coordinator_crash(self) -> None:
        """
        After the coordinator crashes, every survivor names the next-ranked
        node coordinator of a new epoch, and lists the old one as dead.
        """
        cluster, checker = self.formed()
        old_epoch = cluster.nodes["n1"].view.epoch  # type: ignore[union-attr]
        start = cluster.clock.seconds()
        cluster.crash("n5")
        self.assertTrue(cluster.run_until(cluster.converged, timeout=2.0))
        self.assertLess(cluster.clock.seconds() - start, 2.0)
        for node in cluster.live():
            view = node.view
            assert view is not None
            self.assertEqual(view.coordinator, "n4")
            self.assertGreater(view.epoch, old_epoch)
            dead = view.member("n5")
            assert dead is not None
            self.assertEqual(dead.state, "dead")
            self.assertIn("refused", dead.reason)
        checker.assert_ok()

    def test_coordinator_pause_detected_by_heartbeats(self) -> None:
        """
        A paused coordinator keeps its connections; only missing heartbeats
        reveal it. The survivors elect within dead_after plus an election.
        """
        cluster, checker = self.formed()
        start = cluster.clock.seconds()
        cluster.pause("n5")
        survivors = ["n1", "n2", "n3", "n4"]

        def new_coordinator() -> bool:
            return all(cluster.coordinator_seen_by(n) == "n4" for n in survivors)

        self.assertTrue(cluster.run_until(new_coordinator, timeout=3.0))
        elapsed = cluster.clock.seconds() - start
        self.assertLess(elapsed, 3.0)
        self.assertGreaterEqual(elapsed, 1.6)  # dead_after of the lan profile
        view = cluster.nodes["n1"].view
        assert view is not None
        self.assertIn("nothing heard", view.member("n5").reason)  # type: ignore[union-attr]
        # The paused node wakes up, learns it was dropped, and rejoins.
        cluster.resume("n5")
        self.assertTrue(cluster.run_until(cluster.converged, timeout=5.0))
        self.assertEqual(cluster.coordinator_seen_by("n5"), "n4")
        checker.assert_ok()

    def test_member_crash_removed(self) -> None:
        cluster, checker = self.formed()
        cluster.crash("n2")
        self.assertTrue(cluster.run_until(cluster.converged, timeout=2.0))
        view = cluster.nodes["n5"].view
        assert view is not None
        self.assertEqual(view.member("n2").state, "dead")  # type: ignore[union-attr]
        self.assertEqual(view.coordinator, "n5")
        checker.assert_ok()

    def test_dead_member_reaped(self) -> None:
        cluster, checker = self.formed()
        cluster.crash("n2")
        cluster.run(20)
        view = cluster.nodes["n5"].view
        assert view is not None
        self.assertIsNone(view.member("n2"))
        checker.assert_ok()

    def test_restart_new_incarnation(self) -> None:
        cluster, checker = self.formed()
        before = cluster.nodes["n2"].membership.incarnation
        cluster.crash("n2")
        cluster.run(0.05)
        cluster.clock.advance(0)  # keep the clock moving deterministically
        cluster.restart("n2")
        self.assertTrue(cluster.run_until(cluster.converged, timeout=3.0))
        view = cluster.nodes["n1"].view
        assert view is not None
        member = view.member("n2")
        assert member is not None
        self.assertGreater(member.incarnation, before)
        self.assertEqual(member.state, "alive")
        checker.assert_ok()

    def test_no_false_suspicion_with_light_loss(self) -> None:
        """
        Below 10% loss and with pauses shorter than suspect_after, nobody is
        declared dead.
        """
        cluster, checker = self.formed()
        for a in cluster.node_ids:
            for b in cluster.node_ids:
                if a != b:
                    cluster.network.set_link(cluster.host_of(a), cluster.host_of(b), loss=0.05)
        deaths: list[dict[str, Any]] = []
        for node in cluster.live():
            node.subscribe(lambda e: deaths.append(e) if e["type"] == "member_died" else None)
        for _ in range(5):
            cluster.run(10)
            cluster.pause("n3")
            cluster.run(0.5)
            cluster.resume("n3")
        self.assertEqual(deaths, [])
        self.assertTrue(cluster.converged())
        checker.assert_ok()


class PartitionTests(SynchronousTestCase):
    """
    Partitions never give two acting coordinators, and heal into one view.
    """

    def formed(self, size: int = 5, **kwargs: Any) -> tuple[SimCluster, MembershipChecker]:
        cluster, checker = make(size, **kwargs)
        cluster.start()
        self.assertTrue(cluster.run_until(cluster.converged, timeout=3.0))
        return cluster, checker

    def test_majority_side_elects_minority_waits(self) -> None:
        cluster, checker = self.formed()
        events: list[dict[str, Any]] = []
        for node in cluster.live():
            node.subscribe(events.append)
        cluster.partition(["n1", "n2", "n3"], ["n4", "n5"])
        majority = ["n1", "n2", "n3"]
        self.assertTrue(cluster.run_until(lambda: cluster.converged(majority), timeout=4.0))
        self.assertEqual(cluster.coordinator_seen_by("n1"), "n3")
        cluster.run(2)
        self.assertEqual(cluster.acting_coordinators(), ["n3"])
        for node_id in ("n4", "n5"):
            self.assertFalse(cluster.nodes[node_id].membership.quorum_status()["has_quorum"])
        cluster.heal()
        self.assertTrue(cluster.run_until(cluster.converged, timeout=6.0))
        self.assertEqual(cluster.acting_coordinators(), ["n3"])
        self.assertIn("merged", {e["type"] for e in events if e["observer"] in ("n4", "n5")})
        checker.assert_ok()

    def test_isolate_one_then_heal(self) -> None:
        cluster, checker = self.formed()
        cluster.network.isolate(cluster.host_of("n2"))
        others = ["n1", "n3", "n4", "n5"]
        self.assertTrue(cluster.run_until(lambda: cluster.converged(others), timeout=4.0))
        cluster.heal()
        self.assertTrue(cluster.run_until(cluster.converged, timeout=6.0))
        checker.assert_ok()

    def test_asymmetric_link_keeps_membership(self) -> None:
        """
        n1 hears n2 but n2 does not hear n1: indirect probes through the
        others keep both alive; nobody is declared dead.
        """
        cluster, checker = self.formed()
        deaths: list[dict[str, Any]] = []
        for node in cluster.live():
            node.subscribe(lambda e: deaths.append(e) if e["type"] == "member_died" else None)
        cluster.network.cut_one_way(cluster.host_of("n1"), cluster.host_of("n2"))
        cluster.run(20)
        self.assertEqual(deaths, [])
        self.assertEqual(cluster.acting_coordinators(), ["n5"])
        checker.assert_ok()

    def test_asymmetric_from_coordinator(self) -> None:
        """
        The coordinator hears nobody but everyone hears it: it loses quorum,
        the others elect a new coordinator, and no split brain happens.
        """
        cluster, checker = self.formed()
        for other in ["n1", "n2", "n3", "n4"]:
            cluster.network.cut_one_way(cluster.host_of(other), cluster.host_of("n5"))
        self.assertTrue(
            cluster.run_until(
                lambda: all(cluster.coordinator_seen_by(n) == "n4" for n in ["n1", "n2", "n3"]),
                timeout=8.0,
            )
        )
        self.assertLessEqual(len(cluster.acting_coordinators()), 1)
        cluster.heal()
        self.assertTrue(cluster.run_until(cluster.converged, timeout=8.0))
        checker.assert_ok()

    def test_flapping_link(self) -> None:
        cluster, checker = self.formed()
        a, b = cluster.host_of("n1"), cluster.host_of("n5")
        for _ in range(20):
            cluster.network.set_link(a, b, cut=True)
            cluster.network.set_link(b, a, cut=True)
            cluster.run(0.3)
            cluster.network.heal()
            cluster.run(0.3)
        self.assertTrue(cluster.run_until(cluster.converged, timeout=6.0))
        checker.assert_ok()

    def test_join_during_election(self) -> None:
        cluster, checker = make(5, overrides={"membership": {"bootstrap_expect": 3}})
        cluster.start(["n1", "n2", "n3", "n4"])
        self.assertTrue(cluster.run_until(lambda: cluster.converged(["n1", "n2", "n3", "n4"]), 3.0))
        cluster.crash("n4")
        cluster.run(0.3)
        cluster.start(["n5"])
        self.assertTrue(cluster.run_until(cluster.converged, timeout=6.0))
        checker.assert_ok()

    def test_quorum_none_split_brain_is_caught(self) -> None:
        """
        With quorum off, both sides of a partition act: the checker reports
        it. This proves the checker can fail.
        """
        cluster, checker = make(5, overrides={"membership": {"quorum": "none"}})
        cluster.start()
        self.assertTrue(cluster.run_until(cluster.converged, timeout=3.0))
        cluster.partition(["n1", "n2", "n3"], ["n4", "n5"])
        cluster.run(5)
        self.assertEqual(cluster.acting_coordinators(), ["n3", "n5"])
        cluster.heal()
        cluster.run(8)
        # Both sides merged back into one view.
        self.assertTrue(cluster.converged())
        # n3 coordinated without a majority of the five: a violation of the
        # majority promise, which quorum "none" gives up.
        self.assertFalse(checker.ok)


class AdminOperationTests(SynchronousTestCase):
    """
    Drain, remove, forced election and graceful leave.
    """

    def formed(self) -> tuple[SimCluster, MembershipChecker]:
        cluster, checker = make(5)
        cluster.start()
        self.assertTrue(cluster.run_until(cluster.converged, timeout=3.0))
        return cluster, checker

    def test_force_election_toward_preferred(self) -> None:
        cluster, checker = self.formed()
        results: list[Any] = []
        cluster.nodes["n1"].force_election("n2").addBoth(results.append)
        self.assertTrue(
            cluster.run_until(
                lambda: all(cluster.coordinator_seen_by(n) == "n2" for n in cluster.node_ids), 3.0
            )
        )
        self.assertEqual(results[0]["expected"], "n2")
        self.assertTrue(cluster.run_until(cluster.converged, 2.0))
        checker.assert_ok()

    def test_drained_coordinator_hands_over(self) -> None:
        cluster, checker = self.formed()
        cluster.nodes["n5"].drain_member("n5")
        self.assertTrue(
            cluster.run_until(
                lambda: all(cluster.coordinator_seen_by(n) == "n4" for n in cluster.node_ids), 3.0
            )
        )
        view = cluster.nodes["n1"].view
        assert view is not None
        self.assertTrue(view.member("n5").draining)  # type: ignore[union-attr]
        # A later failover never elects the draining node.
        cluster.crash("n4")
        self.assertTrue(cluster.run_until(lambda: cluster.coordinator_seen_by("n1") == "n3", 4.0))
        checker.assert_ok()

    def test_remove_member(self) -> None:
        cluster, checker = self.formed()
        results: list[Any] = []
        cluster.nodes["n1"].remove_member("n2", by="ops").addBoth(results.append)
        self.assertTrue(cluster.run_until(lambda: not cluster.nodes["n2"].membership.joined, 2.0))
        cluster.run(3)
        view = cluster.nodes["n5"].view
        assert view is not None
        self.assertFalse(view.is_active_member("n2"))
        self.assertIn("removed by ops", view.member("n2").reason)  # type: ignore[union-attr]
        # It stays out.
        self.assertFalse(cluster.nodes["n2"].membership.joined)
        self.assertEqual(results[0]["node_id"], "n2")
        checker.assert_ok()

    def test_remove_unknown_member_fails(self) -> None:
        cluster, _checker = self.formed()
        failures: list[Any] = []
        cluster.nodes["n5"].remove_member("n9").addErrback(failures.append)
        self.assertEqual(failures[0].type.__name__, "UnknownMember")

    def test_graceful_leave(self) -> None:
        cluster, checker = self.formed()
        done: list[Any] = []
        cluster.nodes["n2"].leave().addBoth(done.append)
        self.assertTrue(cluster.run_until(lambda: bool(done), 3.0))
        view = cluster.nodes["n5"].view
        assert view is not None
        self.assertEqual(view.member("n2").state, "leaving")  # type: ignore[union-attr]
        checker.assert_ok()

    def test_coordinator_graceful_leave(self) -> None:
        cluster, checker = self.formed()
        done: list[Any] = []
        cluster.nodes["n5"].leave().addBoth(done.append)
        self.assertTrue(cluster.run_until(lambda: bool(done), 4.0))
        self.assertTrue(cluster.run_until(lambda: cluster.coordinator_seen_by("n1") == "n4", 3.0))
        checker.assert_ok()


class RestartedCoordinatorTests(SynchronousTestCase):
    """
    Three-node clusters, where one crash or partition leaves a view of two
    and a second fault leaves a view no election can fix: a coordinator
    that restarted (its earlier life's view has nobody to act in it), or a
    view of an older epoch than its members have seen. Every node still
    ends in one view with an acting coordinator, without reusing an epoch.
    """

    def formed(self) -> tuple[SimCluster, MembershipChecker]:
        cluster, checker = make(3)
        cluster.start()
        self.assertTrue(cluster.run_until(cluster.converged, timeout=3.0))
        self.assertEqual(cluster.coordinator_seen_by("n1"), "n3")
        return cluster, checker

    def epochs(self, cluster: SimCluster) -> set[int]:
        return {n.view.epoch for n in cluster.live() if n.view is not None}

    def test_member_of_newer_epoch_joins_older_view(self) -> None:
        """
        n3 is cut off; n1 and n2 elect n2 in epoch 2; n2 crashes and the
        cut heals. n3 acts again in epoch 1 (n1 is still listed in its
        view), and n1, whose epoch-2 view has lost its quorum for good, asks
        to join it: n3 takes n1 in with a view of a new epoch, since n1
        refuses views of epoch 1 (it used to answer with its epoch-1 view,
        refused forever).
        """
        cluster, checker = self.formed()
        cluster.isolate("n3")
        self.assertTrue(cluster.run_until(lambda: cluster.converged(["n1", "n2"]), 5.0))
        self.assertEqual(self.epochs(cluster) - {1}, {2})
        cluster.crash("n2")
        cluster.heal()
        self.assertTrue(cluster.run_until(cluster.converged, timeout=10.0))
        view = cluster.nodes["n1"].view
        assert view is not None
        self.assertEqual(view.coordinator, "n3")
        self.assertGreater(view.epoch, 2)
        checker.assert_ok()

    def test_restarted_coordinator_and_member_form_a_new_epoch(self) -> None:
        """
        n1 stays alone in the first view when n2 and n3 (its coordinator)
        crash together; they restart (n2 as a new identity). The restarted
        nodes see n1 in a view whose coordinator is an earlier life of n3
        (n1's heartbeats say which incarnation its view lists): they form a
        cluster at once rather than ask that life to let them join, in an
        epoch above n1's (not in epoch 1 again), and n1, whose coordinator's
        life ended, joins them.
        """
        cluster, checker = self.formed()
        cluster.crash("n2")
        cluster.crash("n3")
        cluster.run(1.0)
        cluster.restart("n3")
        cluster.restart("n2", wipe=True)
        start = cluster.clock.seconds()
        self.assertTrue(cluster.run_until(cluster.converged, timeout=10.0))
        # Well within a join timeout: nobody waited for n1 to give up.
        self.assertLess(cluster.clock.seconds() - start, 2.0)
        view = cluster.nodes["n1"].view
        assert view is not None
        self.assertEqual(view.coordinator, "n3")
        self.assertEqual(set(view.active_ids()), {"n1", "n2w1", "n3"})
        self.assertGreater(view.epoch, 1)
        checker.assert_ok()

    def test_restarted_nodes_do_not_reuse_an_epoch(self) -> None:
        """
        n3 is cut off, crashes and restarts; n1 and n2 elected n2 in epoch
        2; then n2 restarts too and the cut heals. The two restarted nodes,
        knowing no epoch, meet before n3 meets n1: n2, which heard from n1
        that epoch 2 exists, refuses to bootstrap epoch 1 again (a second
        view 1.0 with other members), and the cluster forms above epoch 2.
        """
        cluster, checker = self.formed()
        cluster.isolate("n3")
        self.assertTrue(cluster.run_until(lambda: cluster.converged(["n1", "n2"]), 5.0))
        cluster.crash("n3")
        cluster.restart("n3")
        cluster.run(1.0)
        cluster.crash("n2")
        cluster.restart("n2")
        cluster.heal()
        self.assertTrue(cluster.run_until(cluster.converged, timeout=10.0))
        self.assertGreater(min(self.epochs(cluster)), 2)
        checker.assert_ok()

    def test_orphaned_members_form_a_cluster_with_restarted_coordinator(self) -> None:
        """
        n1 is cut off and n3 drops it; n3 restarts and the cut heals. n1
        (still in the first view) and n2 (in a view of n2 and n3) both have
        a coordinator whose life ended, and neither can win an election in
        its view (n2 does not vote for n1, which its view lists dead, and n3
        votes in no earlier life's view); the restarted n3 is alone outside
        any view. After two join timeouts without an election, n1 and n2
        leave their views, and the three form a cluster.
        """
        cluster, checker = self.formed()
        events: list[dict[str, Any]] = []
        for node in cluster.live():
            node.subscribe(events.append)
        cluster.isolate("n1")
        self.assertTrue(cluster.run_until(lambda: cluster.converged(["n2", "n3"]), 5.0))
        cluster.crash("n3")
        cluster.restart("n3")
        cluster.heal()
        self.assertTrue(cluster.run_until(cluster.converged, timeout=15.0))
        left = {e["observer"]: e["reason"] for e in events if e["type"] == "left_cluster"}
        self.assertEqual(sorted(left), ["n1", "n2"])
        for reason in left.values():
            self.assertIn("restarted", reason)
            self.assertIn("no election replaced it", reason)
        view = cluster.nodes["n2"].view
        assert view is not None
        self.assertEqual(view.coordinator, "n3")
        self.assertGreater(view.epoch, 1)
        checker.assert_ok()

    def test_member_follows_restarted_coordinator_into_its_new_view(self) -> None:
        """
        n1 is cut off and n3 drops it; then n2 is cut off instead, and n3
        restarts: the restarted n3 and n1 form a cluster. When the cut heals,
        n2 sees n3 coordinating a view, and n2's own view is coordinated by
        n3 too, but by its earlier life: n2 does not take the new life's
        view for its own coordinator acting; it joins it.
        """
        cluster, checker = self.formed()
        cluster.isolate("n1")
        self.assertTrue(cluster.run_until(lambda: cluster.converged(["n2", "n3"]), 5.0))
        cluster.heal()
        cluster.partition(["n1", "n3"], ["n2"])
        cluster.crash("n3")
        cluster.restart("n3")
        self.assertTrue(cluster.run_until(lambda: cluster.converged(["n1", "n3"]), 10.0))
        cluster.heal()
        self.assertTrue(cluster.run_until(cluster.converged, timeout=10.0))
        view = cluster.nodes["n2"].view
        assert view is not None
        self.assertEqual(view.coordinator, "n3")
        self.assertEqual(
            view.member("n3").incarnation,  # type: ignore[union-attr]
            cluster.nodes["n3"].membership.incarnation,
        )
        checker.assert_ok()
