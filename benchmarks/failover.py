"""
Leader failover of a 3-node cluster of real processes on loopback:
Clustron (LAN profile) after C{kill -9} and after C{kill -STOP} of the
coordinator, side by side with PySyncObj (Raft) after C{kill -9} of its
leader, its timeouts set to match Clustron's detection timeouts.

    python benchmarks/failover.py [--runs 10] [--only clustron|pysyncobj]

Clustron: three C{twistd -n clustron} nodes (L{ProcessCluster}). Each run
waits until the three share one view and lets it settle, signals the
coordinator, and polls C{GET /v1/cluster} on both survivors every 5 ms until
both name the same new coordinator. The time is from the signal to that
observation. The victim is then restarted (after C{SIGKILL}) or resumed
(after C{SIGSTOP}) and must rejoin before the next run. The two cases
alternate run by run.

PySyncObj: three processes (this script with C{--raft-node}), each a
C{SyncObj} holding a replicated counter that its leader increments every
100 ms, with C{raftMinTimeout = suspect_after}, C{raftMaxTimeout =
dead_after} and C{appendEntriesPeriod = heartbeat_interval}. Each process
polls its own C{_getLeader()} every 5 ms and prints every change with its
wall-clock time; the time is from the signal to the later of the two
survivors' switches to the agreed new leader. The victim is restarted and
must rejoin before the next run.

Prints one JSON line: for each case the failover times (median, p90, min,
max, all samples, in seconds) and their ratio to the configured timeout that
bounds detection (C{dead_after} for Clustron, C{raftMaxTimeout} for
PySyncObj).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

HOST = "127.0.0.1"

#: Clustron's LAN profile timings (seconds), which PySyncObj is set to match.
HEARTBEAT_INTERVAL = 0.2
SUSPECT_AFTER = 0.8
DEAD_AFTER = 1.6

#: How long a freshly formed cluster runs before it is disturbed.
SETTLE = 1.0


def _distribution(samples: list[float], timeout: float, timeout_name: str) -> dict[str, Any]:
    ordered = sorted(samples)
    if not ordered:
        return {"runs": 0}
    p90 = ordered[max(0, min(len(ordered) - 1, int(0.9 * len(ordered) + 0.5) - 1))]
    median = statistics.median(ordered)
    return {
        "runs": len(ordered),
        "median_s": round(median, 3),
        "p90_s": round(p90, 3),
        "min_s": round(ordered[0], 3),
        "max_s": round(ordered[-1], 3),
        "samples_s": [round(s, 3) for s in samples],
        "timeout": timeout_name,
        "timeout_s": timeout,
        "ratio_median_to_timeout": round(median / timeout, 2),
        "ratio_p90_to_timeout": round(p90 / timeout, 2),
    }


# -- Clustron --------------------------------------------------------------------


def measure_clustron(runs: int, log: Any) -> dict[str, Any]:
    """
    Alternate C{kill -9} and C{kill -STOP} of the coordinator, C{runs}
    times each.

    @return: the two distributions.
    """
    from clustron.testkit.processes import ProcessCluster

    samples: dict[str, list[float]] = {"sigkill": [], "sigstop": []}
    new_coordinators: dict[str, list[str]] = {"sigkill": [], "sigstop": []}
    with ProcessCluster(3, cluster_id="bench") as cluster:
        cluster.start()
        for index in range(2 * runs):
            case = "sigkill" if index % 2 == 0 else "sigstop"
            cluster.wait_formed(timeout=30.0)
            time.sleep(SETTLE)
            view = cluster.wait_formed(timeout=30.0)
            old = view["coordinator"]
            survivors = [n for n in cluster.node_ids if n != old]
            started = time.monotonic()
            cluster.kill(old, signal.SIGKILL if case == "sigkill" else signal.SIGSTOP)
            new, _ = cluster.wait_coordinator(
                survivors, timeout=20.0, exclude=[old], interval=0.005
            )
            elapsed = time.monotonic() - started
            samples[case].append(elapsed)
            new_coordinators[case].append(new)
            log(f"clustron {case} run {index // 2 + 1}: {old} -> {new} in {elapsed:.3f} s")
            if case == "sigkill":
                cluster.restart(old)
            else:
                cluster.kill(old, signal.SIGCONT)
    return {
        "clustron_sigkill": _distribution(samples["sigkill"], DEAD_AFTER, "dead_after"),
        "clustron_sigstop": _distribution(samples["sigstop"], DEAD_AFTER, "dead_after"),
    }


# -- PySyncObj -------------------------------------------------------------------


def raft_node(index: int, ports: list[int]) -> None:
    """
    One PySyncObj node (a child process): report every change of the
    leader it knows, as C{{"t": wall-clock time, "leader": "host:port" or
    null}} lines on standard output, until standard input closes.
    """
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class Counter(SyncObj):  # type: ignore[misc]
        def __init__(self, me: str, others: list[str], conf: Any) -> None:
            super().__init__(me, others, conf)
            self.value = 0

        @replicated  # type: ignore[misc]
        def incr(self) -> int:
            self.value += 1
            return self.value

    conf = SyncObjConf(
        raftMinTimeout=SUSPECT_AFTER,
        raftMaxTimeout=DEAD_AFTER,
        appendEntriesPeriod=HEARTBEAT_INTERVAL,
        connectionRetryTime=0.2,
        autoTickPeriod=0.005,
        commandsWaitLeader=False,
    )
    addresses = [f"{HOST}:{p}" for p in ports]
    me = addresses[index]
    node = Counter(me, [a for a in addresses if a != me], conf)

    def parent_watch() -> None:
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=parent_watch, daemon=True).start()
    last: str | None = "?"
    next_incr = 0.0
    while True:
        leader = node._getLeader()
        text = str(leader) if leader is not None else None
        now = time.time()
        if text != last:
            last = text
            sys.stdout.write(json.dumps({"t": now, "leader": text}) + "\n")
            sys.stdout.flush()
        if text == me and now >= next_incr:
            node.incr(sync=False)
            next_incr = now + 0.1
        time.sleep(0.005)


class _RaftProcess:
    """
    A PySyncObj child process and the leader changes it reported.
    """

    def __init__(self, index: int, ports: list[int]) -> None:
        self.index = index
        self.ports = ports
        self.address = f"{HOST}:{ports[index]}"
        self.reports: list[tuple[float, str | None]] = []
        self.process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            self.reports = []
        self.process = subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--raft-node",
                str(self.index),
                "--ports",
                ",".join(map(str, self.ports)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            report = json.loads(line)
            with self._lock:
                if process is self.process:
                    self.reports.append((report["t"], report["leader"]))

    def leader(self) -> tuple[float, str | None] | None:
        """
        The latest report, or None before the first.
        """
        with self._lock:
            return self.reports[-1] if self.reports else None

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.005)
    raise TimeoutError(f"not within {timeout} s: {what}")


def measure_pysyncobj(runs: int, log: Any) -> dict[str, Any]:
    """
    C{kill -9} the PySyncObj leader C{runs} times.

    @return: the distribution.
    """
    from clustron.testkit.processes import free_ports

    ports = free_ports(3)
    nodes = [_RaftProcess(i, ports) for i in range(3)]
    by_address = {n.address: n for n in nodes}
    samples: list[float] = []

    def agreed(chosen: list[_RaftProcess], exclude: str | None = None) -> str | None:
        seen = set()
        for node in chosen:
            latest = node.leader()
            seen.add(latest[1] if latest is not None else None)
        if len(seen) != 1:
            return None
        (leader,) = seen
        if leader is None or leader == exclude:
            return None
        return leader

    try:
        for node in nodes:
            node.start()
        for run in range(runs):
            _wait(lambda: agreed(nodes), 30.0, "the three PySyncObj nodes agree on a leader")
            time.sleep(SETTLE)
            old = _wait(lambda: agreed(nodes), 30.0, "the three agree on a leader")
            victim = by_address[old]
            survivors = [n for n in nodes if n is not victim]
            killed_at = time.time()
            victim.kill()
            new = _wait(
                lambda s=survivors, o=old: agreed(s, exclude=o),
                30.0,
                "the survivors agree on a new leader",
            )
            # Reports are changes only: a survivor's latest report is its
            # switch to the new leader.
            switched = [report[0] for report in map(_RaftProcess.leader, survivors) if report]
            elapsed = max(0.0, max(switched) - killed_at)
            samples.append(elapsed)
            log(f"pysyncobj sigkill run {run + 1}: {old} -> {new} in {elapsed:.3f} s")
            victim.start()
    finally:
        for node in nodes:
            node.stop()
    return {"pysyncobj_sigkill": _distribution(samples, DEAD_AFTER, "raftMaxTimeout")}


# -- main --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """
    Run the benchmark (or, with C{--raft-node}, one PySyncObj node).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per case (default 10)")
    parser.add_argument("--only", choices=["clustron", "pysyncobj"], help="measure one side only")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--raft-node", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.raft_node is not None:
        raft_node(args.raft_node, [int(p) for p in args.ports.split(",")])
        return 0
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    def log(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    started = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "failover",
        "nodes": 3,
        "config": {
            "clustron": {
                "profile": "lan",
                "heartbeat_interval": HEARTBEAT_INTERVAL,
                "suspect_after": SUSPECT_AFTER,
                "dead_after": DEAD_AFTER,
            },
            "pysyncobj": {
                "raftMinTimeout": SUSPECT_AFTER,
                "raftMaxTimeout": DEAD_AFTER,
                "appendEntriesPeriod": HEARTBEAT_INTERVAL,
            },
        },
    }
    if args.only in (None, "clustron"):
        result.update(measure_clustron(args.runs, log))
    if args.only in (None, "pysyncobj"):
        result.update(measure_pysyncobj(args.runs, log))
    if "clustron_sigkill" in result and "pysyncobj_sigkill" in result:
        result["ratio_median_clustron_sigkill_to_pysyncobj"] = round(
            result["clustron_sigkill"]["median_s"] / result["pysyncobj_sigkill"]["median_s"], 2
        )
        result["ratio_median_clustron_sigstop_to_pysyncobj"] = round(
            result["clustron_sigstop"]["median_s"] / result["pysyncobj_sigkill"]["median_s"], 2
        )
    result["python"] = platform.python_version()
    result["cpus"] = os.cpu_count()
    result["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
