"""
Tests for C{clustron sim} (L{clustron.cli.sim}).
"""

from __future__ import annotations

import contextlib
import io
import json

from twisted.trial.unittest import SynchronousTestCase

from clustron.cli import build_parser
from clustron.cli.sim import EXIT_USAGE, EXIT_VIOLATION, parse_seeds, run


class ParseSeedsTests(SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(parse_seeds("17"), [17])
        self.assertEqual(parse_seeds("0-3"), [0, 1, 2, 3])
        self.assertEqual(parse_seeds("1,5, 10-12"), [1, 5, 10, 11, 12])

    def test_errors(self) -> None:
        for bad, reason in (
            ("", "empty seed"),
            ("a", "bad seed 'a'"),
            ("5-2", "need 0 <= A <= B"),
            ("1,,2", "empty seed"),
            ("-3", "bad seed '-3'"),
            ("0-99999999", "too many seeds"),
        ):
            error = self.assertRaises(ValueError, parse_seeds, bad)
            self.assertIn(reason, str(error))


class RunTests(SynchronousTestCase):
    def sim(self, *argv: str) -> tuple[int, str, str]:
        args = build_parser().parse_args(["sim", *argv])
        out, err = io.StringIO(), io.StringIO()
        status = run(args, out=out, err=err)
        return status, out.getvalue(), err.getvalue()

    def test_passing_seeds(self) -> None:
        status, out, err = self.sim(
            "--scenario", "quiet", "--nodes", "3", "--seeds", "0-2", "--duration", "1"
        )
        self.assertEqual((status, out), (0, ""))
        self.assertIn("[##############################] 3/3 seeds, 0 failing", err)
        self.assertIn("3 seeds of quiet on 3 nodes: 0 failing", err)
        self.assertIn("seeds per minute", err)

    def test_failing_seed_printed_with_replay_command(self) -> None:
        status, out, err = self.sim(
            "--scenario",
            "partitions",
            "--seeds",
            "0",
            "--quorum",
            "none",
            "--duration",
            "5",
            "--verbose",
        )
        self.assertEqual(status, EXIT_VIOLATION)
        self.assertIn("seed 0 FAILED (", out)
        self.assertIn("split brain possible", out)
        self.assertIn("  fault steps:\n    t=", out)
        self.assertIn("  last network events:\n", out)
        self.assertIn(
            "  replay: clustron sim --nodes 5 --scenario partitions --seeds 0 --duration 5 "
            "--quorum none\n",
            out,
        )
        self.assertIn("1 failing", err)

    def test_json_lines(self) -> None:
        status, out, _ = self.sim(
            "--scenario", "quiet", "--nodes", "3", "--seeds", "4,6", "--duration", "1", "--json"
        )
        self.assertEqual(status, 0)
        docs = [json.loads(line) for line in out.splitlines()]
        self.assertEqual([d["seed"] for d in docs], [4, 6])
        for doc in docs:
            self.assertEqual((doc["ok"], doc["violations"]), (True, []))
            self.assertEqual(len(doc["trace_hash"]), 64)

    def test_replay_gives_the_same_trace(self) -> None:
        _, first, _ = self.sim(
            "--scenario", "mixed", "--nodes", "3", "--seeds", "5", "--duration", "2", "--json"
        )
        _, again, _ = self.sim(
            "--scenario", "mixed", "--nodes", "3", "--seeds", "5", "--duration", "2", "--json"
        )
        self.assertEqual(json.loads(first)["trace_hash"], json.loads(again)["trace_hash"])

    def test_usage_errors(self) -> None:
        status, _, err = self.sim("--seeds", "9-1")
        self.assertEqual(status, EXIT_USAGE)
        self.assertIn("clustron sim: --seeds: bad seed range '9-1'", err)
        status, _, err = self.sim("--scenario", "nope")
        self.assertEqual(status, EXIT_USAGE)
        self.assertIn("unknown scenario 'nope'", err)
        for bad, reason in (
            (["--quorum", "most"], "quorum must be 'majority', 'none' or a number"),
            (["--nodes", "0"], "must be at least 1"),
            (["--duration", "-1"], "seconds must be a finite number >= 0"),
        ):
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr):
                self.assertRaises(SystemExit, build_parser().parse_args, ["sim", *bad])
            self.assertIn(reason, stderr.getvalue())

    def test_list(self) -> None:
        status, out, _ = self.sim("--list")
        self.assertEqual(status, 0)
        self.assertIn("partitions ", out)
        self.assertIn("mixed ", out)
