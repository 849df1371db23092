"""
A real partition of a 5-process cluster: five ``twistd clustron`` nodes, each
in its own network namespace, with nftables cutting the links between a
majority of three and a minority of two, then healing them. The majority
keeps (or elects) an acting coordinator, the minority reports no quorum, and
after healing all five agree on one view again.

Skips, saying why, where the machine does not allow network namespaces or
nftables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import yaml
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from clustron.testkit.netns import NetworkLab, unavailable
from clustron.testkit.processes import TWISTD, checkout_environment

NODES = ["n1", "n2", "n3", "n4", "n5"]
PORT = 7000
ADMIN = 8000
TOKEN = "partition-test-token"

FETCH = (
    "import json, sys, urllib.request\n"
    "headers = {'Authorization': 'Bearer ' + sys.argv[2]}\n"
    "request = urllib.request.Request(sys.argv[1], headers=headers)\n"
    "try:\n"
    "    print(urllib.request.urlopen(request, timeout=2).read().decode())\n"
    "except Exception as e:\n"
    "    print(json.dumps({'error': str(e)}))\n"
)


class PartitionProcessTests(SynchronousTestCase):
    """
    Five processes, a 3|2 partition, healing.
    """

    def setUp(self) -> None:
        reason = unavailable()
        if reason is not None:
            raise SkipTest(reason)
        self.lab = NetworkLab(NODES, subnet="10.214.0.0/24", prefix=f"cpt{os.getpid() % 100000}")
        self.addCleanup(self.lab.close)
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        seeds = [f"{self.lab.addresses[n]}:{PORT}" for n in NODES]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        env = checkout_environment()
        for node in NODES:
            address = self.lab.addresses[node]
            config = {
                "cluster_id": "netns",
                "node_id": node,
                "listen": f"tcp:{PORT}:interface={address}",
                "advertise": f"{address}:{PORT}",
                "discovery": {"static": {"seeds": seeds}},
                "membership": {"bootstrap_expect": 3},
                "admin": {
                    "listen": f"tcp:{ADMIN}:interface={address}",
                    "tokens": [{"name": "test", "role": "admin", "token": TOKEN}],
                },
            }
            path = os.path.join(self.dir, f"{node}.yaml")
            with open(path, "w", encoding="utf-8") as f:
                yaml.safe_dump(config, f)
            log = open(os.path.join(self.dir, f"{node}.log"), "wb")
            self.addCleanup(log.close)
            argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "clustron", "--config", path]
            self.processes[node] = subprocess.Popen(
                self.lab.command(node, argv), stdout=log, stderr=subprocess.STDOUT, env=env
            )
        self.addCleanup(self.stop)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            process.wait(timeout=10)

    def doc(self, node: str) -> dict[str, Any]:
        url = f"http://{self.lab.addresses[node]}:{ADMIN}/v1/cluster"
        result = subprocess.run(
            self.lab.command(node, [sys.executable, "-c", FETCH, url, TOKEN]),
            capture_output=True,
            text=True,
            timeout=20,
        )
        try:
            doc: dict[str, Any] = json.loads(result.stdout or "{}")
        except ValueError:
            return {}
        return doc

    def wait(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        views = {n: (self.doc(n).get("view") or {}) for n in NODES}
        self.fail(f"{what} not within {timeout} s: {views}")

    def agreed(self, nodes: list[str]) -> bool:
        views = []
        for node in nodes:
            view = self.doc(node).get("view")
            if not view:
                return False
            alive = sorted(m["node_id"] for m in view["members"] if m["state"] == "alive")
            views.append((view["epoch"], view["seq"], view["coordinator"], tuple(alive)))
        return len(set(views)) == 1 and list(views[0][3]) == sorted(nodes)

    def test_partition_and_heal(self) -> None:
        self.wait(lambda: self.agreed(NODES), 20, "the five nodes forming one view")
        majority, minority = ["n1", "n2", "n3"], ["n4", "n5"]
        self.lab.partition(majority, minority)
        self.wait(lambda: self.agreed(majority), 20, "the majority agreeing on a view of three")
        coordinator = self.doc("n1")["view"]["coordinator"]
        self.assertIn(coordinator, majority)
        self.assertTrue(self.doc(coordinator)["quorum"]["has_quorum"])
        self.wait(
            lambda: all(self.doc(n).get("quorum", {}).get("has_quorum") is False for n in minority),
            20,
            "the minority reporting no quorum",
        )
        acting = [n for n in NODES if self.doc(n).get("acting")]
        self.assertEqual(acting, [coordinator])
        self.lab.heal()
        self.wait(lambda: self.agreed(NODES), 40, "all five agreeing again after healing")
