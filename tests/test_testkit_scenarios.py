"""
Tests for L{clustron.testkit.scenarios}: plans are drawn from the seed,
runs replay exactly, and the checkers catch a split brain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from clustron.testkit import faults
from clustron.testkit.faults import Step
from clustron.testkit.scenarios import SCENARIOS, Scenario, plan_for, replay_command, run_seed

ROOT = Path(__file__).resolve().parent.parent

_HASH_SCRIPT = """
from clustron.testkit.scenarios import run_seed
print(run_seed("mixed", 3, nodes=3, duration=3.0).trace_hash)
"""


class PlanTests(SynchronousTestCase):
    def test_same_seed_same_plan(self) -> None:
        for name in SCENARIOS:
            self.assertEqual(plan_for(name, 5, 5, 10.0), plan_for(name, 5, 5, 10))
        self.assertNotEqual(plan_for("mixed", 5, 5, 10.0), plan_for("mixed", 6, 5, 10.0))

    def test_plans_fit_and_apply(self) -> None:
        """
        Every scenario's steps lie within the fault phase, are sorted, and
        keep a majority of machines up (crashed plus paused is a minority).
        """
        for name in SCENARIOS:
            for seed in range(15):
                plan = plan_for(name, seed, 5, 8.0)
                times = [s.at for s in plan.faults]
                self.assertEqual(times, sorted(times))
                self.assertTrue(all(0 <= t <= 8.0 for t in times), (name, seed))
                self.assertTrue(all(s.action in faults.ACTIONS for s in plan.faults))
                down: set[str] = set()
                for step in plan.faults:
                    if step.action in ("crash", "pause"):
                        down.add(step.params["node"])
                    elif step.action in ("restart", "resume"):
                        down.discard(step.params["node"])
                    self.assertLessEqual(len(down), 2, (name, seed, step.describe()))
                self.assertTrue(all(0 <= s.at < 8.0 for s in plan.traffic))
        self.assertEqual(plan_for("quiet", 1, 5, 8.0).faults, ())

    def test_unknown_scenario(self) -> None:
        error = self.assertRaises(ValueError, run_seed, "chaos", 1)
        self.assertIn("unknown scenario 'chaos'; known: quiet, partitions", str(error))
        self.assertRaises(ValueError, run_seed, "quiet", 1, nodes=0)


class RunTests(SynchronousTestCase):
    def test_quiet_seed_passes(self) -> None:
        result = run_seed("quiet", 1, nodes=3, duration=2.0)
        self.assertTrue(result.ok, result.violations)
        self.assertEqual(result.violations, [])
        self.assertGreater(result.sim_seconds, 2.0)
        self.assertGreater(result.events, 100)
        self.assertEqual(len(result.trace_hash), 64)

    def test_same_seed_same_trace(self) -> None:
        first = run_seed("mixed", 7, nodes=3, duration=3.0)
        second = run_seed("mixed", 7, nodes=3, duration=3.0)
        self.assertEqual(first.trace_hash, second.trace_hash)
        self.assertEqual(first.violations, second.violations)
        self.assertEqual(first.sim_seconds, second.sim_seconds)
        self.assertNotEqual(
            first.trace_hash, run_seed("mixed", 8, nodes=3, duration=3.0).trace_hash
        )

    def test_same_trace_whatever_the_hash_seed(self) -> None:
        """
        The trace hash does not depend on C{PYTHONHASHSEED}.
        """
        expected = run_seed("mixed", 3, nodes=3, duration=3.0).trace_hash
        for hash_seed in ("0", "4242"):
            env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(ROOT))
            output = subprocess.run(
                [sys.executable, "-c", _HASH_SCRIPT],
                env=env,
                cwd=str(ROOT),
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            self.assertEqual(output.stdout.strip(), expected, f"PYTHONHASHSEED={hash_seed}")

    def test_result_json_and_replay_command(self) -> None:
        result = run_seed("partitions", 2, nodes=3, duration=2.0, quorum="none")
        doc = json.loads(json.dumps(result.to_json()))
        for key in (
            "seed",
            "ok",
            "violations",
            "trace_hash",
            "sim_seconds",
            "wall_seconds",
            "command",
        ):
            self.assertIn(key, doc)
        self.assertEqual(doc["seed"], 2)
        self.assertEqual(
            result.command,
            "clustron sim --nodes 3 --scenario partitions --seeds 2 --duration 2 --quorum none",
        )
        self.assertEqual(
            replay_command("mixed", 9, 5),
            "clustron sim --nodes 5 --scenario mixed --seeds 9 --duration 10",
        )

    def test_quorum_none_partitions_report_split_brain(self) -> None:
        """
        The checkers can fail: with quorum off, a partition lets a minority
        act, which the majority promise rules out.
        """
        result = run_seed("partitions", 0, nodes=5, quorum="none", duration=5.0)
        self.assertFalse(result.ok)
        self.assertTrue(
            any("without quorum" in v and "split brain possible" in v for v in result.violations),
            result.violations,
        )
        # The same seed with quorum on keeps the promise.
        safe = run_seed("partitions", 0, nodes=5, duration=5.0)
        self.assertFalse(any("split brain" in v for v in safe.violations), safe.violations)

    def test_heal_restarts_beyond_what_the_plan_keeps(self) -> None:
        """
        Crashed nodes beyond what the plan keeps are restarted at healing;
        the one kept must be dead everywhere once the cluster agrees.
        """

        def crash_two(rng: object, nodes: list[str], duration: float) -> tuple[list[Step], int]:
            return [Step(0.5, "crash", {"node": "n1"}), Step(0.6, "crash", {"node": "n2"})], 1

        scenario = Scenario("crash-two", "crash two nodes, keep one down", crash_two)
        result = run_seed(scenario, 1, nodes=5, duration=2.0)
        self.assertEqual(
            result.steps, ["t=0.500 crash node=n1", "t=0.600 crash node=n2", "heal restart node=n1"]
        )
        self.assertFalse(
            [v for v in result.violations if "no single view" in v or "still lists" in v],
            result.violations,
        )

    def test_error_during_the_run_is_a_violation(self) -> None:
        """
        A step that cannot apply (or node code that raises) ends the seed
        with a violation naming it, so a sweep goes on.
        """

        def bad(rng: object, nodes: list[str], duration: float) -> tuple[list[Step], int]:
            return [Step(0.5, "restart", {"node": "n1"})], 0

        result = run_seed(Scenario("bad", "restarts a running node", bad), 1, nodes=3, duration=1.0)
        self.assertFalse(result.ok)
        self.assertRegex(
            result.violations[-1],
            r"the run stopped on ValueError: step 't=0.500 restart node=n1': n1 is not crashed",
        )
