"""
Run every fuzz target for a while, one after the other, and report.

    python fuzz/run_all.py                 # 60 seconds each
    python fuzz/run_all.py --seconds 600   # longer
    python fuzz/run_all.py --seconds 5 framer handshake

Each target keeps its corpus in C{WORK/corpus/NAME/} (so later runs start
from what earlier ones found) and writes the input of a crash to
C{WORK/artifacts/NAME-crash-...}; C{WORK} is C{--work}, by default
C{clustron-fuzz} in the system's temporary directory (outside the
repository). Replay a crash with C{python fuzz/fuzz_NAME.py FILE}. The exit
status is 0 when no target crashed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = ("framer", "handshake", "envelope")


def run(name: str, seconds: int, work: str) -> tuple[int, str]:
    """
    Run one target for C{seconds}.

    @return: its exit status and its output.
    """
    corpus = os.path.join(work, "corpus", name)
    artifacts = os.path.join(work, "artifacts")
    os.makedirs(corpus, exist_ok=True)
    os.makedirs(artifacts, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
    process = subprocess.run(
        [
            sys.executable,
            os.path.join(HERE, f"fuzz_{name}.py"),
            f"-max_total_time={seconds}",
            f"-artifact_prefix={artifacts}/{name}-",
            "-print_final_stats=1",
            corpus,
        ],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    return process.returncode, process.stdout.decode("utf-8", "replace")


def main(argv: list[str] | None = None) -> int:
    """
    Parse the command line, run the targets, print one line for each.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--seconds", type=int, default=60, help="time per target (default 60)")
    parser.add_argument(
        "--work",
        default=os.path.join(tempfile.gettempdir(), "clustron-fuzz"),
        help="where corpora and crash inputs go (default: clustron-fuzz in the temp directory)",
    )
    parser.add_argument("targets", nargs="*", help=f"of {', '.join(TARGETS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        parser.error(
            f"unknown target(s) {', '.join(unknown)}; the targets are {', '.join(TARGETS)}"
        )
    failed = False
    for name in args.targets or TARGETS:
        status, output = run(name, args.seconds, os.path.abspath(args.work))
        runs = re.findall(r"Done (\d+) runs in (\d+) second", output)
        if status == 0 and runs:
            executions, seconds = runs[-1]
            print(f"fuzz_{name}: {executions} executions in {seconds} s, no crash")
        else:
            failed = True
            print(f"fuzz_{name}: CRASH (exit status {status}); the end of its output:")
            print("\n".join(output.splitlines()[-40:]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
