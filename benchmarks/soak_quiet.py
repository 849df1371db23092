"""
Soak check (issue 3): a quiet 5-node cluster of real ``twistd`` processes on
loopback, left alone for a while; counts suspicions, view installs and
elections on every node from their Prometheus metrics. Prints one JSON line.

This is a soak check rather than a side-by-side comparison: the figure that
matters is zero (no false suspicion), and the machine's load average over the
run is printed as the context any reader needs.

    python benchmarks/soak_quiet.py --seconds 600
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clustron.testkit.processes import ProcessCluster  # noqa: E402


def total(text: str, name: str) -> float:
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--nodes", type=int, default=5)
    args = parser.parse_args()
    with ProcessCluster(args.nodes) as cluster:
        cluster.start()
        cluster.wait_formed(timeout=20)
        load_before = os.getloadavg()
        time.sleep(args.seconds)
        load_after = os.getloadavg()
        result = {"benchmark": "soak_quiet", "nodes": args.nodes, "seconds": args.seconds}
        for metric in ("suspicions", "views_installed", "elections"):
            result[metric] = [
                total(cluster.metrics_text(n) or "", f"clustron_{metric}_total")
                for n in cluster.running_ids()
            ]
        result["loadavg_1m_before_after"] = [load_before[0], load_after[0]]
        print(json.dumps(result))


if __name__ == "__main__":
    main()
