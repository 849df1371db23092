"""
Real C{twistd -n clustron} processes on loopback (LAN profile): connection,
refusal of another cluster, formation, coordinator crash and pause, restart.

Each test runs its blocking scenario (L{ProcessCluster}) in a thread and
registers the cluster's C{stop} as a clean-up, so no process outlives a test.
Time bounds are measured from the moment the last node's service was built
(its first incarnation), so interpreter start-up on a busy machine does not
count; the failover bounds are measured from the signal.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from clustron.errors import ConfigError
from clustron.testkit.processes import ProcessCluster

#: Generous bound for processes to start and settle before a measurement.
SETTLE = 30.0


def rank(cluster: ProcessCluster, node_id: str) -> tuple[int, str]:
    """
    The Bully rank of a node: C{(priority, node_id)}.
    """
    return (cluster.nodes[node_id].config.get("priority", 0), node_id)


def since_last_start(cluster: ProcessCluster, node_ids: list[str]) -> float:
    """
    Seconds from the last of the nodes' service start to now.
    """
    starts = [cluster.nodes[n].service_started_at for n in node_ids]
    assert all(s is not None for s in starts), starts
    return time.time() - max(s for s in starts if s is not None)


class ProcessClusterTests(TestCase):
    """
    Clusters of real node processes.
    """

    timeout = 60

    def make_cluster(self, size: int, **kwargs: Any) -> ProcessCluster:
        cluster = ProcessCluster(size, directory=self.mktemp(), **kwargs)
        self.addCleanup(cluster.stop)
        return cluster

    def test_three_connect_and_another_cluster_is_refused(self) -> Any:
        """
        Three nodes started together each list the other two as connected
        peers within 2 s. A fourth node with another cluster id dials them
        and is refused: both sides log C{cluster_id_mismatch}, and nobody
        counts it as a peer.
        """
        cluster = self.make_cluster(3)
        cluster.add_node("x1", {"cluster_id": "other"})
        return deferToThread(self._three_connect_and_another_cluster_is_refused, cluster)

    def _three_connect_and_another_cluster_is_refused(self, cluster: ProcessCluster) -> None:
        ids = cluster.node_ids
        cluster.start()

        def all_connected() -> bool:
            return all(cluster.connected_peers(n) == set(ids) - {n} for n in ids)

        cluster.wait_for(all_connected, SETTLE, "every node lists the other two as connected")
        elapsed = since_last_start(cluster, ids)
        self.assertLess(elapsed, 2.0, f"connected {elapsed:.2f} s after the last node started")
        view = cluster.wait_formed(timeout=SETTLE)

        cluster.start(["x1"])

        def refusals_logged() -> bool:
            foreign_log = cluster.log_text("x1").splitlines()
            for node_id in ids:
                address = cluster.nodes[node_id].address
                port = str(cluster.nodes[node_id].cluster_port)
                ours = [
                    line
                    for line in cluster.log_text(node_id).splitlines()
                    if "cluster_id_mismatch" in line and "x1" in line
                ]
                theirs = [
                    line
                    for line in foreign_log
                    if "cluster_id_mismatch" in line
                    and (node_id in line or address in line or port in line)
                ]
                if not ours or not theirs:
                    return False
            return True

        cluster.wait_for(refusals_logged, 10.0, "both sides log cluster_id_mismatch")
        for node_id in ids:
            self.assertEqual(cluster.connected_peers(node_id), set(ids) - {node_id})
        self.assertEqual(cluster.connected_peers("x1"), set())
        doc = cluster.cluster_doc("x1")
        assert doc is not None
        self.assertIsNone(doc["view"])
        self.assertEqual(cluster.formed(ids), view)

    def test_five_form_one_view(self) -> Any:
        """
        Five processes started together form one view, all alive, in under
        2 s.
        """
        cluster = self.make_cluster(5)
        return deferToThread(self._five_form_one_view, cluster)

    def _five_form_one_view(self, cluster: ProcessCluster) -> None:
        cluster.start()
        view = cluster.wait_formed(timeout=SETTLE)
        elapsed = since_last_start(cluster, cluster.node_ids)
        self.assertLess(elapsed, 2.0, f"formed {elapsed:.2f} s after the last node started")
        self.assertEqual(
            sorted(m["node_id"] for m in view["members"] if m["state"] == "alive"),
            cluster.node_ids,
        )

    def test_coordinator_killed(self) -> Any:
        """
        After C{kill -9} of the coordinator, every survivor names the
        highest-ranked survivor as coordinator in under 2 s.
        """
        cluster = self.make_cluster(3)
        return deferToThread(self._coordinator_killed, cluster)

    def _coordinator_killed(self, cluster: ProcessCluster) -> None:
        cluster.start()
        view = cluster.wait_formed(timeout=SETTLE)
        old = view["coordinator"]
        survivors = [n for n in cluster.node_ids if n != old]
        cluster.kill(old, signal.SIGKILL)
        new, elapsed = cluster.wait_coordinator(survivors, timeout=10.0, exclude=[old])
        self.assertEqual(new, max(survivors, key=lambda n: rank(cluster, n)))
        self.assertLess(elapsed, 2.0, f"new coordinator after {elapsed:.2f} s")

    def test_coordinator_paused(self) -> Any:
        """
        After C{kill -STOP} of the coordinator (its sockets stay open, only
        the failure detector can notice), every survivor names the
        highest-ranked survivor as coordinator in under 3 s; after
        C{SIGCONT} the old coordinator rejoins as an alive member.
        """
        cluster = self.make_cluster(3)
        return deferToThread(self._coordinator_paused, cluster)

    def _coordinator_paused(self, cluster: ProcessCluster) -> None:
        cluster.start()
        view = cluster.wait_formed(timeout=SETTLE)
        old = view["coordinator"]
        survivors = [n for n in cluster.node_ids if n != old]
        cluster.kill(old, signal.SIGSTOP)
        new, elapsed = cluster.wait_coordinator(survivors, timeout=10.0, exclude=[old])
        self.assertEqual(new, max(survivors, key=lambda n: rank(cluster, n)))
        self.assertLess(elapsed, 3.0, f"new coordinator after {elapsed:.2f} s")
        failover_doc = cluster.cluster_doc(new)
        assert failover_doc is not None
        failover_epoch = failover_doc["view"]["epoch"]
        self.assertGreater(failover_epoch, view["epoch"])

        cluster.kill(old, signal.SIGCONT)
        rejoined = cluster.wait_formed(timeout=15.0)
        member = {m["node_id"]: m for m in rejoined["members"]}[old]
        self.assertEqual(member["state"], "alive")
        self.assertGreaterEqual(rejoined["epoch"], failover_epoch)

    def test_restart_rejoins_with_higher_incarnation(self) -> Any:
        """
        A node killed with C{kill -9} and started again rejoins the view
        with a higher incarnation than before.
        """
        cluster = self.make_cluster(3)
        return deferToThread(self._restart_rejoins, cluster)

    def _restart_rejoins(self, cluster: ProcessCluster) -> None:
        cluster.start()
        view = cluster.wait_formed(timeout=SETTLE)
        victim = "n1"
        before = {m["node_id"]: m for m in view["members"]}[victim]["incarnation"]
        survivors = [n for n in cluster.node_ids if n != victim]
        cluster.kill(victim, signal.SIGKILL)
        cluster.wait_formed(survivors, timeout=10.0)
        cluster.restart(victim)
        rejoined = cluster.wait_formed(timeout=SETTLE)
        after = {m["node_id"]: m for m in rejoined["members"]}[victim]
        self.assertEqual(after["state"], "alive")
        self.assertGreater(after["incarnation"], before)
        self.assertEqual(cluster.nodes[victim].starts, 2)

    def test_stop_leaves_nothing_behind(self) -> Any:
        """
        L{ProcessCluster.stop} ends every process, a paused one included, and
        a second call does nothing.
        """
        cluster = self.make_cluster(2)
        return deferToThread(self._stop_leaves_nothing_behind, cluster)

    def _stop_leaves_nothing_behind(self, cluster: ProcessCluster) -> None:
        cluster.start()
        cluster.wait_ready(timeout=SETTLE)
        cluster.kill("n2", signal.SIGSTOP)
        cluster.stop()
        for node in cluster.nodes.values():
            assert node.process is not None
            self.assertIsNotNone(node.process.returncode, node.node_id)
            self.assertFalse(node.running)
        cluster.stop()
        self.assertRaises(RuntimeError, cluster.start)


class PlanningTests(SynchronousTestCase):
    """
    Mistakes in a L{ProcessCluster}'s plan fail before anything starts.
    """

    def test_bad_override(self) -> None:
        """
        An invalid configuration override raises L{ConfigError} naming the
        key.
        """
        error = self.assertRaises(
            ConfigError,
            ProcessCluster,
            2,
            directory=self.mktemp(),
            overrides={"failure_detector": {"dead_after": 0.1}},
        )
        self.assertIn("failure_detector.dead_after", str(error))

    def test_unknown_per_node(self) -> None:
        """
        C{per_node} for a node that is not in the cluster is refused.
        """
        error = self.assertRaises(
            ValueError, ProcessCluster, 2, directory=self.mktemp(), per_node={"n3": {}}
        )
        self.assertIn("n3", str(error))

    def test_add_node(self) -> None:
        """
        An added node gets its own ports, the cluster's seeds and the
        overrides; its id must be new.
        """
        cluster = ProcessCluster(2, directory=self.mktemp())
        self.addCleanup(cluster.stop)
        extra = cluster.add_node("x1", {"cluster_id": "other"})
        self.assertEqual(extra.config["cluster_id"], "other")
        self.assertEqual(
            extra.config["discovery"]["static"]["seeds"],
            [cluster.nodes[n].address for n in cluster.node_ids],
        )
        ports = {p for n in cluster.nodes.values() for p in (n.cluster_port, n.admin_port)}
        self.assertEqual(len(ports), 6)
        self.assertRaises(ValueError, cluster.add_node, "n1")
