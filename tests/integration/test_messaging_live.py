"""
Messaging between real processes over real TCP: request/response, remote
errors, and total-order broadcasts from several nodes seen in one order.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import yaml
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from clustron import ClusterNode, NodeConfig, RemoteError
from clustron.cli.demo import _free_ports, child_environment

HERE = os.path.dirname(os.path.abspath(__file__))


class LiveMessagingTests(TestCase):
    """
    One node in this process, two in child processes.
    """

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        ports = _free_ports(3)
        seeds = [f"127.0.0.1:{p}" for p in ports]
        paths = []
        for i, port in enumerate(ports, 1):
            doc = {
                "cluster_id": "live-messaging",
                "node_id": f"n{i}",
                "listen": f"tcp:{port}:interface=127.0.0.1",
                "advertise": f"127.0.0.1:{port}",
                "discovery": {"static": {"seeds": seeds}},
                "membership": {"bootstrap_expect": 3},
            }
            path = os.path.join(self.dir, f"n{i}.yaml")
            with open(path, "w", encoding="utf-8") as f:
                yaml.safe_dump(doc, f)
            paths.append(path)
        self.children = []
        for path in paths[1:]:
            log = open(path + ".log", "wb")
            self.addCleanup(log.close)
            child = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "messaging_peer.py"), path],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_environment(),
            )
            self.children.append(child)
            self.addCleanup(self._stop_child, child)
        self.node = ClusterNode(NodeConfig.from_file(paths[0]), reactor=reactor)
        self.received: list[Any] = []
        self.node.on_message("b", lambda message: self.received.append(message.body))
        self.node.startService()
        self.addCleanup(self.node.stopService)
        for _ in range(200):
            view = self.node.view
            if view is not None and len(view.active_ids()) == 3:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        else:
            self.fail("the three nodes did not form one cluster within 10 s")

    def _stop_child(self, child: subprocess.Popen[bytes]) -> None:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    @defer.inlineCallbacks
    def test_request_response(self) -> Any:
        reply = yield self.node.request("n2", "echo", {"x": 1})
        self.assertEqual(reply, {"echo": {"x": 1}, "by": "n2"})

    @defer.inlineCallbacks
    def test_remote_error(self) -> Any:
        with self.assertRaises(RemoteError) as raised:
            yield self.node.request("n3", "fail", "please")
        self.assertEqual(raised.exception.type_name, "ValueError")
        self.assertIn("refused 'please'", raised.exception.message)

    @defer.inlineCallbacks
    def test_total_order_across_processes(self) -> Any:
        sends = []
        for i in range(20):
            sends.append(self.node.broadcast("b", f"n1-{i}", order="total"))
            sends.append(
                self.node.request("n2", "broadcast", {"body": f"n2-{i}", "order": "total"})
            )
            sends.append(
                self.node.request("n3", "broadcast", {"body": f"n3-{i}", "order": "total"})
            )
        yield defer.gatherResults(sends)
        for _ in range(100):
            if len(self.received) == 60:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        seen_by_n2 = yield self.node.request("n2", "received", None)
        seen_by_n3 = yield self.node.request("n3", "received", None)
        self.assertEqual(len(self.received), 60)
        self.assertEqual(seen_by_n2, self.received)
        self.assertEqual(seen_by_n3, self.received)
        # FIFO per sender holds inside the total order.
        mine = [b for b in self.received if b.startswith("n1-")]
        self.assertEqual(mine, [f"n1-{i}" for i in range(20)])
