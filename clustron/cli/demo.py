"""
``clustron demo``: a small local cluster of real ``twistd`` nodes, for a first
look.

It writes one configuration file per node into a temporary directory,
starts each node as its own ``twistd -n clustron`` process on loopback,
waits until they form one cluster, prints the dashboard and admin URLs with a
token, and stops every process cleanly on Ctrl-C (or after ``--duration``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

import yaml

#: Runs twistd with the arguments that follow (``python -c TWISTD ...``),
#: whatever directory the twistd script was installed in.
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def add_parser(subparsers: Any) -> None:
    """
    Register ``clustron demo``.
    """
    parser = subparsers.add_parser(
        "demo",
        help="start a local cluster of real nodes with the dashboard",
        description=(
            "Start a local cluster of twistd nodes on 127.0.0.1 and print the dashboard URL."
        ),
    )
    parser.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    parser.add_argument(
        "--base-port", type=int, default=0, help="first cluster port (default: pick free ports)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="stop after this many seconds (default: until Ctrl-C)",
    )
    parser.add_argument(
        "--dir", default=None, help="directory for configs and logs (default: a temp dir)"
    )
    parser.set_defaults(func=run)


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def node_configs(count: int, ports: list[int], token: str) -> list[dict[str, Any]]:
    """
    The configurations of a demo cluster: C{count} nodes on loopback, each
    with an admin listener, all seeded with every cluster address.
    """
    cluster_ports, admin_ports = ports[:count], ports[count:]
    seeds = [f"127.0.0.1:{p}" for p in cluster_ports]
    configs = []
    for i in range(count):
        configs.append(
            {
                "cluster_id": "demo",
                "node_id": f"n{i + 1}",
                "listen": f"tcp:{cluster_ports[i]}:interface=127.0.0.1",
                "advertise": f"127.0.0.1:{cluster_ports[i]}",
                "profile": "lan",
                "discovery": {"static": {"seeds": seeds}},
                "membership": {"bootstrap_expect": count // 2 + 1},
                "admin": {
                    "listen": f"tcp:{admin_ports[i]}:interface=127.0.0.1",
                    "tokens": [{"name": "demo", "role": "admin", "token": token}],
                },
            }
        )
    return configs


def _cluster_doc(admin_port: int, token: str) -> dict[str, Any] | None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{admin_port}/v1/cluster", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            doc: dict[str, Any] = json.load(response)
            return doc
    except (OSError, urllib.error.URLError, ValueError):
        return None


def child_environment() -> dict[str, str]:
    """
    The environment for node processes: this one, with the directory that
    holds the running C{clustron} package first on C{PYTHONPATH}, so a
    checkout runs its own code and plugins.
    """
    import clustron

    root = os.path.dirname(os.path.dirname(os.path.abspath(clustron.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def run(args: argparse.Namespace) -> int:
    """
    Run the demo until Ctrl-C; returns the exit status.
    """
    count = args.nodes
    if not 1 <= count <= 20:
        print("clustron demo: --nodes must be between 1 and 20", file=sys.stderr)
        return 2
    if args.base_port:
        ports = list(range(args.base_port, args.base_port + 2 * count))
    else:
        ports = _free_ports(2 * count)
    token = secrets.token_urlsafe(16)
    directory = args.dir or tempfile.mkdtemp(prefix="clustron-demo-")
    os.makedirs(directory, exist_ok=True)
    processes: list[subprocess.Popen[bytes]] = []
    admin_ports = ports[count:]
    env = child_environment()

    def stop(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        for config in node_configs(count, ports, token):
            node_id = config["node_id"]
            path = os.path.join(directory, f"{node_id}.yaml")
            with open(path, "w", encoding="utf-8") as f:
                yaml.safe_dump(config, f, sort_keys=False)
            log = open(os.path.join(directory, f"{node_id}.log"), "wb")
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        TWISTD,
                        "-n",
                        "--pidfile=",
                        "clustron",
                        "--config",
                        path,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=directory,
                    env=env,
                )
            )
        print(f"starting {count} nodes (configs and logs in {directory}) ...", flush=True)
        deadline = time.monotonic() + 20
        formed = None
        while time.monotonic() < deadline:
            for index, process in enumerate(processes):
                if process.poll() is not None:
                    print(
                        f"node n{index + 1} exited with status {process.returncode}; "
                        f"see {directory}/n{index + 1}.log",
                        file=sys.stderr,
                    )
                    return 1
            doc = _cluster_doc(admin_ports[0], token)
            view = doc.get("view") if doc else None
            if view and sum(1 for m in view["members"] if m["state"] == "alive") == count:
                formed = view
                break
            time.sleep(0.2)
        if formed is None:
            print(
                "the nodes did not form one cluster within 20 s; see the logs in " + directory,
                file=sys.stderr,
            )
            return 1
        print(
            f"cluster 'demo' formed: {count} nodes, coordinator {formed['coordinator']}, "
            f"view {formed['epoch']}.{formed['seq']}"
        )
        for i, port in enumerate(admin_ports):
            print(
                f"  n{i + 1}: dashboard http://127.0.0.1:{port}/  admin http://127.0.0.1:{port}/v1/cluster"
            )
        print(f"token: {token}")
        print(f"try:   clustron status --admin http://127.0.0.1:{admin_ports[0]} --token {token}")
        print("press Ctrl-C to stop", flush=True)
        started = time.monotonic()
        reported: set[int] = set()
        while not args.duration or time.monotonic() - started < args.duration:
            time.sleep(0.2)
            for index, process in enumerate(processes):
                if process.poll() is not None and index not in reported:
                    reported.add(index)
                    print(f"node n{index + 1} exited with status {process.returncode}", flush=True)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopping nodes ...", flush=True)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        print("stopped", flush=True)
