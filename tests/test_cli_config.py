"""
Tests for C{clustron config check} (L{clustron.cli.config_check}).
"""

from __future__ import annotations

import io
import json
import os
import sys
from functools import partial
from typing import Any

import yaml
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from clustron import plugins
from clustron.cli import build_parser, config_check, main
from clustron.config import REDACTED, NodeConfig
from tests.test_config import EXAMPLES, INSTALLED, VALIDATORS, plugin_names

VALID = """\
cluster_id: demo
node_id: n1
admin:
  listen: "tcp:8101:interface=127.0.0.1"
  tokens: [{name: dev, role: admin, token: not-for-your-eyes}]
"""

INVALID = """\
cluster_id: demo
node_id: n1
profile: lna
failure_detector: {heartbeat_intervl: 0.1, dead_after: abc}
"""


class CheckTests(SynchronousTestCase):
    """
    C{clustron config check FILE [--json]}, with fake plugins.
    """

    def setUp(self) -> None:
        self.patch(
            config_check,
            "load",
            partial(
                NodeConfig.from_file,
                discovery_validators=VALIDATORS,
                plugin_names=plugin_names,
                environ={},
            ),
        )
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def write(self, name: str, content: str) -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)
        return path

    def test_valid(self) -> None:
        """
        A valid file prints the effective configuration as YAML, secrets
        redacted, and exits 0.
        """
        path = self.write("node.yaml", VALID)
        self.assertEqual(main(["config", "check", path]), 0)
        self.assertEqual(self.stderr.getvalue(), "")
        printed = yaml.safe_load(self.stdout.getvalue())
        self.assertEqual(printed["node_id"], "n1")
        self.assertEqual(printed["advertise"], "127.0.0.1:7101")
        self.assertEqual(printed["failure_detector"]["dead_after"], 1.6)
        self.assertEqual(printed["admin"]["tokens"][0]["token"], REDACTED)
        self.assertNotIn("not-for-your-eyes", self.stdout.getvalue())

    def test_invalid(self) -> None:
        """
        An invalid file prints one C{FILE: key: reason} line per error and
        a count on stderr, and exits 2.
        """
        path = self.write("node.yaml", INVALID)
        self.assertEqual(main(["config", "check", path]), 2)
        self.assertEqual(self.stdout.getvalue(), "")
        self.assertEqual(
            self.stderr.getvalue().splitlines(),
            [
                f"{path}: profile: must be one of: lan, wan, local, got 'lna'; "
                "did you mean 'lan'?",
                f"{path}: failure_detector.heartbeat_intervl: unknown key; "
                "did you mean 'heartbeat_interval'?",
                f"{path}: failure_detector.dead_after: must be a number, got 'abc'",
                "3 errors",
            ],
        )

    def test_oneError(self) -> None:
        """
        One error is counted in the singular.
        """
        path = self.write("node.json", '{"cluster_id": "demo"}')
        self.assertEqual(main(["config", "check", path]), 2)
        self.assertEqual(
            self.stderr.getvalue().splitlines(), [f"{path}: node_id: required", "1 error"]
        )

    def test_missingFile(self) -> None:
        """
        A missing file is reported without a key path.
        """
        path = os.path.abspath(os.path.join(self.mktemp(), "nope.yaml"))
        self.assertEqual(main(["config", "check", path]), 2)
        self.assertEqual(
            self.stderr.getvalue().splitlines(),
            [f"{path}: file not found: {path}", "1 error"],
        )

    def test_syntaxError(self) -> None:
        """
        A YAML syntax error is reported with its position.
        """
        path = self.write("node.yaml", "cluster_id: [demo\n")
        self.assertEqual(main(["config", "check", path]), 2)
        first = self.stderr.getvalue().splitlines()[0]
        self.assertTrue(first.startswith(f"{path}: invalid YAML at line 2"), first)

    def test_relativeFileName(self) -> None:
        """
        The file name is printed as given.
        """
        path = self.write("node.yaml", "node_id: n1\n")
        self.patch(config_check, "load", lambda p: NodeConfig.from_file(
            os.path.join(os.path.dirname(path), p),
            discovery_validators=VALIDATORS,
            plugin_names=plugin_names,
        ))
        self.assertEqual(main(["config", "check", "node.yaml"]), 2)
        self.assertEqual(
            self.stderr.getvalue().splitlines(), ["node.yaml: cluster_id: required", "1 error"]
        )

    def test_jsonInvalid(self) -> None:
        """
        With C{--json}, errors are one JSON document on stdout.
        """
        path = self.write("node.yaml", INVALID)
        self.assertEqual(main(["config", "check", "--json", path]), 2)
        self.assertEqual(self.stderr.getvalue(), "")
        report = json.loads(self.stdout.getvalue())
        self.assertEqual(report["file"], path)
        self.assertFalse(report["valid"])
        self.assertEqual(
            [error["key"] for error in report["errors"]],
            ["profile", "failure_detector.heartbeat_intervl", "failure_detector.dead_after"],
        )
        self.assertEqual(report["errors"][2]["reason"], "must be a number, got 'abc'")

    def test_jsonValid(self) -> None:
        """
        With C{--json}, the effective configuration is one JSON document.
        """
        path = self.write("node.yaml", VALID)
        self.assertEqual(main(["config", "check", path, "--json"]), 0)
        report = json.loads(self.stdout.getvalue())
        self.assertTrue(report["valid"])
        self.assertEqual(report["config"]["cluster_id"], "demo")
        self.assertEqual(report["config"]["admin"]["tokens"][0]["token"], REDACTED)

    def test_examples(self) -> None:
        """
        Every shipped example checks clean.
        """
        for name in ("node.yaml", "n1.yaml", "n2.yaml", "n3.yaml"):
            self.assertEqual(main(["config", "check", os.path.join(EXAMPLES, name)]), 0, name)
        self.assertEqual(self.stderr.getvalue(), "")


class RealLoadTests(SynchronousTestCase):
    """
    Without patching L{config_check.load}, plugins come from
    L{clustron.plugins.installed}.
    """

    def setUp(self) -> None:
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def test_installedPlugins(self) -> None:
        """
        Names are checked against the installed plugins.
        """

        def installed(kind: str) -> dict[str, Any]:
            if kind == "discovery":
                return {}
            return {name: object() for name in INSTALLED[kind]}

        self.patch(plugins, "installed", installed)
        path = os.path.join(EXAMPLES, "n1.yaml")
        self.assertEqual(main(["config", "check", path]), 2)
        self.assertEqual(
            self.stderr.getvalue().splitlines(),
            [f"{path}: discovery.static: unknown discovery plugin; installed: (none)", "1 error"],
        )

    def test_realPlugins(self) -> None:
        """
        With the built-in plugins installed, the examples check clean.
        """
        if "static" not in plugins.installed("discovery"):
            raise SkipTest("the static discovery plugin is not installed")
        self.assertEqual(main(["config", "check", os.path.join(EXAMPLES, "n2.yaml")]), 0)
        self.assertEqual(yaml.safe_load(self.stdout.getvalue())["node_id"], "n2")


class ParserTests(SynchronousTestCase):
    """
    The C{config} command's argument handling.
    """

    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def test_registered(self) -> None:
        """
        The dispatcher offers C{config check}.
        """
        args = build_parser().parse_args(["config", "check", "x.yaml", "--json"])
        self.assertIs(args.func, config_check.run)
        self.assertEqual((args.config_command, args.file, args.json), ("check", "x.yaml", True))

    def test_noSubcommand(self) -> None:
        """
        C{clustron config} alone prints usage and exits 2.
        """
        self.assertEqual(main(["config"]), 2)
        self.assertIn("usage: clustron config", self.stderr.getvalue())
        self.assertIn("a sub-command is required: check", self.stderr.getvalue())

    def test_noFile(self) -> None:
        """
        C{clustron config check} without a file is a usage error.
        """
        e = self.assertRaises(SystemExit, main, ["config", "check"])
        self.assertEqual(e.code, 2)
        self.assertIn("FILE", self.stderr.getvalue())
