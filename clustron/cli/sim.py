"""
``clustron sim``: run seeds of a simulated-cluster scenario and report every
broken promise.

    clustron sim --nodes 5 --seeds 0-199 --scenario partitions
    clustron sim --nodes 5 --seeds 17 --scenario mixed --duration 10   # replay one
    clustron sim --scenario partitions --seeds 0-9 --quorum none       # must fail

Each seed runs a whole cluster in this process on a simulated network (see
L{clustron.testkit.scenarios}). A progress bar goes to stderr; each failing
seed is printed with its violations and the one-line command that replays
it. With C{--json}, stdout gets one JSON object per seed instead.

Exit status: 0 when every seed passed, 1 when any seed broke a promise, 2
for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from clustron.testkit.scenarios import SCENARIOS, SeedResult, run_seed

#: The exit status when a seed broke a promise.
EXIT_VIOLATION = 1
#: The exit status of bad arguments.
EXIT_USAGE = 2
#: Most seeds one command runs.
MAX_SEEDS = 1_000_000


def parse_seeds(text: str) -> list[int]:
    """
    Parse C{--seeds}: one seed (C{17}), a range with both ends included
    (C{0-199}), or a comma-separated list of those (C{1,5,10-12}).

    @raise ValueError: naming the bad part and why.
    """
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty seed in {text!r}")
        low, dash, high = part.partition("-")
        try:
            first = int(low)
            last = int(high) if dash else first
        except ValueError:
            raise ValueError(
                f"bad seed {part!r}: expected a number, a range A-B or a comma list"
            ) from None
        if first < 0 or last < first:
            raise ValueError(f"bad seed range {part!r}: need 0 <= A <= B")
        if len(seeds) + last - first + 1 > MAX_SEEDS:
            raise ValueError(f"too many seeds (more than {MAX_SEEDS})")
        seeds.extend(range(first, last + 1))
    return seeds


def _quorum(text: str) -> str | int:
    if text in ("majority", "none"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"quorum must be 'majority', 'none' or a number of members, not {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"quorum must be at least 1, not {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, not {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"seconds must be a finite number >= 0, not {text}")
    return value


def add_parser(subparsers: Any) -> None:
    """
    Register ``sim``.

    @param subparsers: the ``clustron`` command's sub-parsers.
    """
    parser = subparsers.add_parser(
        "sim",
        help="run seeds of a simulated-cluster scenario and check every promise",
        description=(
            "Run whole clusters on a simulated network, one per seed, under a fault "
            "scenario, checking the membership and messaging promises after every event "
            "and liveness after healing. Prints each failing seed with the command that "
            "replays it; exits 1 if any seed broke a promise."
        ),
    )
    parser.add_argument(
        "--scenario",
        default="mixed",
        help=f"the scenario: {', '.join(SCENARIOS)} (default: mixed)",
    )
    parser.add_argument("--nodes", type=_positive_int, default=5, help="cluster size (default: 5)")
    parser.add_argument(
        "--seeds",
        default="0-99",
        help="one seed (17), a range (0-199) or a comma list (1,5,10-12); default 0-99",
    )
    parser.add_argument(
        "--duration",
        type=_seconds,
        default=10.0,
        help="simulated seconds of the fault phase (default: 10)",
    )
    parser.add_argument(
        "--quorum",
        type=_quorum,
        default="majority",
        help="the nodes' membership.quorum: majority (default), none, or a number",
    )
    parser.add_argument(
        "--profile",
        choices=("lan", "wan", "local"),
        default="lan",
        help="the nodes' timing profile (default: lan)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object per seed on stdout"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also print the fault steps and the last network events of failing seeds",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.set_defaults(func=run)


class _Progress:
    """
    A one-line progress bar on a stream: redrawn in place on a terminal,
    otherwise a line at every tenth of the way.
    """

    WIDTH = 30

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.total = total
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.started = time.perf_counter()
        self._last_tenth = -1

    def update(self, done: int, failing: int) -> None:
        elapsed = time.perf_counter() - self.started
        filled = self.WIDTH * done // max(1, self.total)
        line = (
            f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{self.total} seeds, "
            f"{failing} failing, {elapsed:.1f} s"
        )
        if self.tty:
            self.stream.write("\r" + line)
            if done == self.total:
                self.stream.write("\n")
        else:
            tenth = 10 * done // max(1, self.total)
            if tenth != self._last_tenth or done == self.total:
                self._last_tenth = tenth
                self.stream.write(line + "\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.tty:
            self.stream.write("\r" + " " * (self.WIDTH + 60) + "\r")


def _report(result: SeedResult, out: TextIO, verbose: bool) -> None:
    out.write(
        f"seed {result.seed} FAILED ({len(result.violations)} violation"
        f"{'s' if len(result.violations) != 1 else ''}, trace {result.trace_hash[:16]}):\n"
    )
    for violation in result.violations:
        out.write(f"  - {violation}\n")
    if verbose:
        out.write("  fault steps:\n")
        for step in result.steps:
            out.write(f"    {step}\n")
        out.write("  last network events:\n")
        for line in result.recent:
            out.write(f"    {line}\n")
    out.write(f"  replay: {result.command}\n")


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """
    Run ``clustron sim``.

    @return: the exit status.
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if args.list:
        for scenario in SCENARIOS.values():
            out.write(f"{scenario.name:<12} {scenario.description}\n")
        return 0
    if args.scenario not in SCENARIOS:
        err.write(
            f"clustron sim: unknown scenario {args.scenario!r}; known: {', '.join(SCENARIOS)}\n"
        )
        return EXIT_USAGE
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as e:
        err.write(f"clustron sim: --seeds: {e}\n")
        return EXIT_USAGE
    progress = _Progress(err, len(seeds))
    failing = 0
    sim_seconds = 0.0
    started = time.perf_counter()
    for index, seed in enumerate(seeds):
        result = run_seed(
            args.scenario,
            seed,
            nodes=args.nodes,
            quorum=args.quorum,
            duration=args.duration,
            profile=args.profile,
        )
        sim_seconds += result.sim_seconds
        if not result.ok:
            failing += 1
        if args.json:
            out.write(json.dumps(result.to_json(), sort_keys=True) + "\n")
            out.flush()
        elif not result.ok:
            progress.clear()
            _report(result, out, args.verbose)
            out.flush()
        progress.update(index + 1, failing)
    wall = time.perf_counter() - started
    err.write(
        f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} of {args.scenario} on {args.nodes} "
        f"nodes: {failing} failing; {sim_seconds:.1f} simulated s in {wall:.1f} s "
        f"({sim_seconds / max(wall, 1e-9):.1f} simulated s per s, "
        f"{60 * len(seeds) / max(wall, 1e-9):.1f} seeds per minute)\n"
    )
    return EXIT_VIOLATION if failing else 0
