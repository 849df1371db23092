"""
C{GET /metrics} of live C{twistd -n clustron} nodes passes
C{promtool check metrics} (Debian package C{prometheus}), which checks the
exposition format and Prometheus' naming rules (counters end in C{_total},
units as suffixes, snake_case names, help text on every metric).

Skips, saying why, when C{promtool} is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from clustron.testkit.processes import ProcessCluster

#: Generous bound for the processes to start and form one view.
SETTLE = 30.0


def promtool() -> str:
    """
    @return: the path of C{promtool}.
    @raise SkipTest: when it is not installed.
    """
    path = shutil.which("promtool")
    if path is None:
        raise SkipTest(
            "promtool is missing (Debian package 'prometheus': apt-get install prometheus)"
        )
    return path


def check_metrics(tool: str, text: str) -> tuple[int, str]:
    """
    Run C{promtool check metrics} on an exposition.

    @return: its exit status and everything it printed.
    """
    result = subprocess.run(
        [tool, "check", "metrics"],
        input=text.encode("utf-8"),
        capture_output=True,
        timeout=30,
        check=False,
    )
    return result.returncode, (result.stdout + result.stderr).decode("utf-8", "replace")


def families(text: str) -> dict[str, str]:
    """
    @return: metric family name to type, from the C{# TYPE} lines.
    """
    found = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            found[name] = kind
    return found


class PromtoolTests(TestCase):
    """
    The metrics of a live two-node cluster, checked by promtool.
    """

    timeout = 60

    def setUp(self) -> None:
        self.tool = promtool()

    def test_promtool_catches_bad_names(self) -> None:
        """
        The check this test relies on is live: promtool rejects a counter
        without C{_total} and a metric without help.
        """
        code, output = check_metrics(
            self.tool,
            "# HELP clustron_frames counted badly\n# TYPE clustron_frames counter\n"
            "clustron_frames 1\n# TYPE clustron_thing gauge\nclustron_thing 1\n",
        )
        self.assertNotEqual(code, 0, output)
        self.assertIn("_total", output)
        self.assertIn("no help text", output)

    def test_live_metrics_pass(self) -> Any:
        """
        Both nodes' C{/metrics}, fetched with the bearer token after the
        cluster formed, pass C{promtool check metrics}; every family is
        Clustron's, and the membership metrics show the formed view.
        """
        cluster = ProcessCluster(2, directory=self.mktemp())
        self.addCleanup(cluster.stop)
        return deferToThread(self._live_metrics_pass, cluster)

    def _live_metrics_pass(self, cluster: ProcessCluster) -> None:
        cluster.start()
        cluster.wait_formed(timeout=SETTLE)

        def settled() -> bool:
            # The quorum gauge follows on the membership tick after the view.
            return all(
                "clustron_has_quorum 1.0" in text
                and 'clustron_frames_received_total{type="heartbeat"}' in text
                for text in (cluster.metrics_text(n) for n in cluster.node_ids)
            )

        cluster.wait_for(settled, 10.0, "both nodes report quorum and count heartbeats")
        for node_id in cluster.node_ids:
            text = cluster.metrics_text(node_id)
            code, output = check_metrics(self.tool, text)
            self.assertEqual(
                (code, output.strip()), (0, ""), f"promtool check metrics on {node_id}:\n{output}"
            )
            kinds = families(text)
            self.assertTrue(kinds, "no metrics at all")
            strangers = sorted(name for name in kinds if not name.startswith("clustron_"))
            self.assertEqual(strangers, [], "metrics without the clustron_ prefix")
            for name, kind in kinds.items():
                if kind == "counter":
                    self.assertTrue(name.endswith("_total"), name)
            self.assertIn('clustron_members{state="alive"} 2.0', text)
            self.assertIn("clustron_peer_connections 1.0", text)
            self.assertEqual(kinds.get("clustron_heartbeat_rtt_seconds"), "histogram")
