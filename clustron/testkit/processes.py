"""
L{ProcessCluster}: real ``twistd -n clustron`` node processes on loopback.

The harness writes one configuration file per node into a directory, starts
each node as its own process, talks to the nodes only through their admin
API (C{GET /v1/cluster}, C{GET /metrics}) and signals, and always tears every
process down again::

    with ProcessCluster(3) as cluster:
        cluster.start()
        view = cluster.wait_formed(timeout=10)
        cluster.kill(view["coordinator"], signal.SIGKILL)
        survivors = [n for n in cluster.node_ids if n != view["coordinator"]]
        new, elapsed = cluster.wait_coordinator(survivors, timeout=5)

Every call blocks (polling with C{urllib}), so the harness serves plain
scripts and benchmarks as it is. From a trial test, run the blocking
scenario in a thread and register L{ProcessCluster.stop} as a clean-up, so
the processes go away whatever happens to the test::

    def test_failover(self):
        cluster = ProcessCluster(3, directory=self.mktemp())
        self.addCleanup(cluster.stop)
        return deferToThread(self.scenario, cluster)

Node ids are C{n1} .. C{nN} (rank grows with the number: with equal
priorities C{nN} coordinates); every node lists every other node's cluster
address as a static seed. Ports are free loopback ports picked when the
cluster is built and kept across restarts. Configuration keys can be
overridden for all nodes (C{overrides}) or per node (C{per_node}), and extra
nodes (for example of another cluster) added with L{ProcessCluster.add_node}.
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any, TypeVar

import attrs
import yaml

from clustron.config import NodeConfig

#: Runs twistd with the arguments that follow (C{python -c TWISTD ...}),
#: whatever directory the twistd script was installed in.
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"

#: The loopback address every node listens on.
HOST = "127.0.0.1"

T = TypeVar("T")

#: Clusters not stopped yet: stopped when the interpreter exits normally, as
#: a last resort for scripts that forget (tests use addCleanup).
_unstopped: weakref.WeakSet[ProcessCluster] = weakref.WeakSet()


@atexit.register
def _stop_unstopped() -> None:
    for cluster in list(_unstopped):
        cluster.stop()


def free_ports(count: int) -> list[int]:
    """
    Ask the kernel for C{count} distinct free TCP ports on loopback.

    The ports are released before this returns, so another process may take
    one in between; on a test machine that is rare enough.

    @return: the port numbers.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def checkout_environment() -> dict[str, str]:
    """
    The environment for node processes: this one, with the directory that
    holds the running C{clustron} package first on C{PYTHONPATH} (so a
    checkout runs its own code and plugins) and unbuffered output (so logs
    reach their files at once).
    """
    import clustron

    root = os.path.dirname(os.path.dirname(os.path.abspath(clustron.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def merge_config(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """
    Merge configuration data: mappings merge key by key, anything else in
    C{extra} replaces the value in C{base}.

    @return: a new dict; neither argument is changed.
    """
    out = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@attrs.define
class NodeProcess:
    """
    One node of a L{ProcessCluster} and its current process.

    @ivar node_id: the node's id.
    @ivar cluster_port: the loopback port of its cluster listener.
    @ivar admin_port: the loopback port of its admin API.
    @ivar config: the configuration data written to L{config_path}.
    @ivar config_path: its configuration file.
    @ivar log_path: its log file (standard output and error of every start,
        appended).
    @ivar process: the current process, or None before the first start.
    @ivar starts: how many times it was started.
    @ivar spawned_at: C{time.monotonic()} when the current process was
        spawned.
    @ivar ready_at: C{time.monotonic()} when its admin API first answered
        after the latest start, or None.
    @ivar first_incarnation: the incarnation it reported first after the
        latest start, or None.
    @ivar paused: whether it was sent C{SIGSTOP} and not C{SIGCONT} since.
    @ivar expected_running: whether the harness started it and has not
        killed or stopped it since (an exit then is a crash worth reporting).
    """

    node_id: str
    cluster_port: int
    admin_port: int
    config: dict[str, Any]
    config_path: str
    log_path: str
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    spawned_at: float | None = None
    ready_at: float | None = None
    first_incarnation: int | None = None
    paused: bool = False
    expected_running: bool = False
    _log_file: IO[bytes] | None = None

    @property
    def address(self) -> str:
        """
        The C{"host:port"} that peers dial.
        """
        return f"{HOST}:{self.cluster_port}"

    @property
    def admin_url(self) -> str:
        """
        The base URL of its admin API (C{http://127.0.0.1:PORT}).
        """
        return f"http://{HOST}:{self.admin_port}"

    @property
    def pid(self) -> int | None:
        """
        The current process id, or None before the first start.
        """
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        """
        Whether its current process exists and has not exited (a paused
        process is running).
        """
        return self.process is not None and self.process.poll() is None

    @property
    def service_started_at(self) -> float | None:
        """
        The wall-clock time (C{time.time()}) at which the node's service was
        built in its latest start, as told by the first incarnation it
        reported: a Clustron node starts with the wall-clock time in
        milliseconds as its incarnation. None until its admin API answered.
        """
        if self.first_incarnation is None:
            return None
        return self.first_incarnation / 1000.0


class ProcessCluster:
    """
    N real Clustron node processes on loopback.

    @ivar node_ids: the ids of the cluster's own nodes, C{n1} .. C{nN}.
    @ivar nodes: every node (including those added with L{add_node}) by id.
    @ivar token: the admin bearer token every node accepts (role C{admin}).
    @ivar directory: where configuration and log files are written.
    @ivar cluster_id: the cluster id of the cluster's own nodes.
    """

    def __init__(
        self,
        size: int,
        cluster_id: str = "live",
        overrides: Mapping[str, Any] | None = None,
        per_node: Mapping[str, Mapping[str, Any]] | None = None,
        profile: str = "lan",
        directory: str | None = None,
        token: str | None = None,
        stop_timeout: float = 10.0,
        python: str = sys.executable,
        extra_args: Iterable[str] = (),
    ) -> None:
        """
        Plan the cluster: pick ports and write every configuration file
        (nothing is started yet; see L{start}).

        @param size: the number of nodes, 1 or more.
        @param cluster_id: the cluster id of the nodes.
        @param overrides: configuration data merged into every node's
            configuration (for example C{{"membership": {"quorum": "none"}}}).
        @param per_node: node id to configuration data merged into that
            node's configuration, after C{overrides}.
        @param profile: the timing profile, C{lan}, C{wan} or C{local}.
        @param directory: where to write configuration files and logs; a new
            temporary directory, removed by L{stop}, when None. A given
            directory is created if needed and left in place.
        @param token: the admin token; a random one when None.
        @param stop_timeout: how long L{stop} waits for processes to exit
            after C{SIGTERM} before killing them.
        @param python: the Python interpreter that runs C{twistd}.
        @param extra_args: more arguments for C{twistd clustron} (such as
            C{("--log-level", "debug")}).
        @raise ValueError: when C{size} is less than 1 or C{per_node} names
            a node that is not C{n1} .. C{nN}.
        @raise clustron.errors.ConfigError: when the overrides make an
            invalid configuration (checked before anything starts).
        """
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.size = size
        self.cluster_id = cluster_id
        self.token = token or secrets.token_urlsafe(16)
        self.stop_timeout = stop_timeout
        self._python = python
        self._extra_args = tuple(extra_args)
        self._overrides = dict(overrides or {})
        self._per_node = {k: dict(v) for k, v in (per_node or {}).items()}
        self._profile = profile
        self.node_ids = [f"n{i}" for i in range(1, size + 1)]
        unknown = sorted(set(self._per_node) - set(self.node_ids))
        if unknown:
            raise ValueError(
                f"per_node names unknown nodes {unknown}; nodes are {', '.join(self.node_ids)}"
            )
        self._owns_directory = directory is None
        self.directory = (
            tempfile.mkdtemp(prefix="clustron-processes-")
            if directory is None
            else os.path.abspath(directory)
        )
        os.makedirs(self.directory, exist_ok=True)
        self._env = checkout_environment()
        self._lock = threading.RLock()
        self._stopped = False
        _unstopped.add(self)
        ports = free_ports(2 * size)
        self._seeds = [f"{HOST}:{p}" for p in ports[:size]]
        self.nodes: dict[str, NodeProcess] = {}
        try:
            for index, node_id in enumerate(self.node_ids):
                extra = self._per_node.get(node_id, {})
                self._plan(node_id, ports[index], ports[size + index], extra)
        except BaseException:
            if self._owns_directory:
                shutil.rmtree(self.directory, ignore_errors=True)
            raise

    # -- planning ------------------------------------------------------------

    def _base_config(self, node_id: str, cluster_port: int, admin_port: int) -> dict[str, Any]:
        return {
            "cluster_id": self.cluster_id,
            "node_id": node_id,
            "listen": f"tcp:{cluster_port}:interface={HOST}",
            "advertise": f"{HOST}:{cluster_port}",
            "profile": self._profile,
            "discovery": {"static": {"seeds": list(self._seeds)}},
            "membership": {"bootstrap_expect": self.size // 2 + 1},
            "admin": {
                "listen": f"tcp:{admin_port}:interface={HOST}",
                "tokens": [{"name": "harness", "role": "admin", "token": self.token}],
            },
        }

    def _plan(
        self, node_id: str, cluster_port: int, admin_port: int, extra: Mapping[str, Any]
    ) -> NodeProcess:
        config = merge_config(self._base_config(node_id, cluster_port, admin_port), self._overrides)
        config = merge_config(config, extra)
        # Fail here, naming the bad key, rather than in a child process.
        NodeConfig.from_dict(config, base_dir=self.directory)
        config_path = os.path.join(self.directory, f"{node_id}.yaml")
        with open(config_path, "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        node = NodeProcess(
            node_id=node_id,
            cluster_port=cluster_port,
            admin_port=admin_port,
            config=config,
            config_path=config_path,
            log_path=os.path.join(self.directory, f"{node_id}.log"),
        )
        self.nodes[node_id] = node
        return node

    def add_node(self, node_id: str, overrides: Mapping[str, Any] | None = None) -> NodeProcess:
        """
        Plan one more node (not started; see L{start}) with its own ports.
        It is seeded with the cluster's addresses, but the cluster's nodes
        do not know its address: it has to dial them. Its configuration is
        the cluster's (C{overrides} given to the constructor included) with
        C{overrides} merged in, for example C{{"cluster_id": "other"}}.

        @return: the planned node.
        @raise ValueError: when the id is already taken.
        """
        with self._lock:
            if node_id in self.nodes:
                raise ValueError(f"node id {node_id!r} is already in this cluster")
            cluster_port, admin_port = free_ports(2)
            return self._plan(node_id, cluster_port, admin_port, dict(overrides or {}))

    # -- lifecycle -----------------------------------------------------------

    def start(self, node_ids: Iterable[str] | None = None) -> None:
        """
        Spawn node processes (the cluster's own nodes by default), without
        waiting for them; see L{wait_ready} and L{wait_formed}.

        @raise RuntimeError: after L{stop}.
        @raise ValueError: for an unknown node id or a node that is already
            running.
        """
        chosen = list(node_ids) if node_ids is not None else list(self.node_ids)
        for node_id in chosen:
            self._spawn(self._node(node_id))

    def _node(self, node_id: str) -> NodeProcess:
        node = self.nodes.get(node_id)
        if node is None:
            raise ValueError(f"unknown node {node_id!r}; nodes: {', '.join(sorted(self.nodes))}")
        return node

    def _spawn(self, node: NodeProcess) -> None:
        with self._lock:
            if self._stopped:
                raise RuntimeError("this ProcessCluster was stopped")
            if node.running:
                raise ValueError(f"node {node.node_id!r} is already running (pid {node.pid})")
            if node._log_file is None:
                node._log_file = open(node.log_path, "ab")
            node.starts += 1
            node._log_file.write(
                f"---- harness: start {node.starts} of {node.node_id} ----\n".encode()
            )
            node._log_file.flush()
            node.process = subprocess.Popen(
                [
                    self._python,
                    "-c",
                    TWISTD,
                    "-n",
                    "--pidfile=",
                    "clustron",
                    "--config",
                    node.config_path,
                    *self._extra_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=node._log_file,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=self._env,
            )
            node.spawned_at = time.monotonic()
            node.ready_at = None
            node.first_incarnation = None
            node.paused = False
            node.expected_running = True

    def kill(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        """
        Send a signal to a node's process: C{SIGKILL} (a crash: the process
        is reaped before this returns), C{SIGSTOP} (a pause: its sockets stay
        open), C{SIGCONT} (resume), C{SIGTERM} (a graceful stop, not waited
        for), or any other.

        @raise ValueError: when the node is not running.
        """
        with self._lock:
            node = self._node(node_id)
            if not node.running:
                raise ValueError(f"node {node_id!r} is not running")
            assert node.process is not None
            if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
                node.expected_running = False
            node.process.send_signal(sig)
            if sig == signal.SIGSTOP:
                node.paused = True
            elif sig == signal.SIGCONT:
                node.paused = False
            elif sig == signal.SIGKILL:
                node.process.wait()
                node.paused = False

    def restart(self, node_id: str) -> NodeProcess:
        """
        Start a node again with the same configuration and ports; a running
        node is stopped first (gracefully, bounded by C{stop_timeout}).

        @return: the node.
        """
        node = self._node(node_id)
        self._terminate([node])
        self._spawn(node)
        return node

    def stop(self) -> None:
        """
        Stop every process: C{SIGCONT} to paused ones, C{SIGTERM} to all,
        then C{SIGKILL} to any still running after C{stop_timeout} seconds.
        Close the log files, and remove the directory if the cluster created
        it. Safe to call more than once and from any thread.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            _unstopped.discard(self)
            try:
                self._terminate(list(self.nodes.values()))
            finally:
                for node in self.nodes.values():
                    if node._log_file is not None:
                        node._log_file.close()
                        node._log_file = None
                if self._owns_directory:
                    shutil.rmtree(self.directory, ignore_errors=True)

    def _terminate(self, nodes: list[NodeProcess]) -> None:
        # One at a time, lowest rank first: each node's graceful leave is
        # then acknowledged by a coordinator that is still there (when all
        # leave at once, each waits for its leave to time out). One deadline
        # bounds the whole sequence; whatever is left after it is killed.
        with self._lock:
            deadline = time.monotonic() + self.stop_timeout
            for node in sorted(nodes, key=_stop_order):
                if not node.running:
                    continue
                assert node.process is not None
                node.expected_running = False
                try:
                    if node.paused:
                        node.process.send_signal(signal.SIGCONT)
                        node.paused = False
                    node.process.send_signal(signal.SIGTERM)
                    node.process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except ProcessLookupError:
                    pass
                except subprocess.TimeoutExpired:
                    pass
            for node in nodes:
                if node.process is not None and node.process.poll() is None:
                    node.process.kill()
                    node.process.wait()

    def __enter__(self) -> ProcessCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- observing -----------------------------------------------------------

    def admin_url(self, node_id: str) -> str:
        """
        The base URL of a node's admin API.
        """
        return self._node(node_id).admin_url

    def _get(self, node_id: str, path: str, timeout: float) -> bytes:
        request = urllib.request.Request(
            self._node(node_id).admin_url + path,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read()
            return body

    def cluster_doc(self, node_id: str, timeout: float = 2.0) -> dict[str, Any] | None:
        """
        C{GET /v1/cluster} from a node.

        @param timeout: how long to wait for the answer.
        @return: the decoded document, or None when the node does not answer
            (not running, paused, not listening yet) or answers with an
            error.
        """
        node = self._node(node_id)
        if not node.running or node.paused:
            return None
        try:
            doc = json.loads(self._get(node_id, "/v1/cluster", timeout))
        except (OSError, urllib.error.URLError, ValueError):
            return None
        if not isinstance(doc, dict):
            return None
        if node.ready_at is None:
            node.ready_at = time.monotonic()
        if node.first_incarnation is None and isinstance(doc.get("incarnation"), int):
            node.first_incarnation = doc["incarnation"]
        return doc

    def metrics_text(self, node_id: str, timeout: float = 2.0) -> str:
        """
        C{GET /metrics} from a node (Prometheus text format).

        @raise OSError: when the node does not answer.
        """
        return self._get(node_id, "/metrics", timeout).decode("utf-8")

    def log_text(self, node_id: str) -> str:
        """
        Everything the node's processes wrote so far (all starts).
        """
        with open(self._node(node_id).log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def running_ids(self) -> list[str]:
        """
        The cluster's own nodes whose processes run (paused ones included).
        """
        return [n for n in self.node_ids if self.nodes[n].running]

    def formed(self, node_ids: Iterable[str] | None = None) -> dict[str, Any] | None:
        """
        Whether the given nodes (the running, unpaused own nodes by default)
        form one cluster: each answers, is joined, and reports the same view
        id, whose alive members are exactly these nodes and whose coordinator
        is one of them.

        @return: that view (as served), or None.
        """
        chosen = (
            list(node_ids)
            if node_ids is not None
            else [n for n in self.running_ids() if not self.nodes[n].paused]
        )
        if not chosen:
            return None
        view: dict[str, Any] | None = None
        for node_id in chosen:
            doc = self.cluster_doc(node_id)
            mine = doc.get("view") if doc else None
            if not mine:
                return None
            if view is None:
                view = mine
            elif (mine["epoch"], mine["seq"]) != (view["epoch"], view["seq"]):
                return None
        assert view is not None
        alive = {m["node_id"] for m in view["members"] if m["state"] == "alive"}
        if alive != set(chosen) or view["coordinator"] not in alive:
            return None
        return view

    def coordinators(self, node_ids: Iterable[str]) -> dict[str, str | None]:
        """
        The coordinator each node's view names (None when the node does not
        answer or is not joined).
        """
        seen: dict[str, str | None] = {}
        for node_id in node_ids:
            doc = self.cluster_doc(node_id)
            view = doc.get("view") if doc else None
            seen[node_id] = view["coordinator"] if view else None
        return seen

    def connected_peers(self, node_id: str) -> set[str] | None:
        """
        The peers a node reports as connected, or None when it does not
        answer.
        """
        doc = self.cluster_doc(node_id)
        if doc is None:
            return None
        return {p["node_id"] for p in doc.get("peers", []) if p.get("connected")}

    # -- waiting -------------------------------------------------------------

    def wait_for(
        self,
        predicate: Callable[[], T | None],
        timeout: float,
        what: str,
        interval: float = 0.02,
    ) -> tuple[T, float]:
        """
        Poll C{predicate()} until it returns something other than None or
        False.

        @param what: a description of the awaited condition, for the error.
        @return: C{(result, elapsed seconds)}.
        @raise TimeoutError: naming C{what}, when C{timeout} seconds pass.
        @raise RuntimeError: at once, with the end of its log, when a node
            that should be running exits.
        """
        started = time.monotonic()
        deadline = started + timeout
        while True:
            result = predicate()
            if result is not None and result is not False:
                return result, time.monotonic() - started
            self._check_alive()
            if time.monotonic() >= deadline:
                raise TimeoutError(f"not within {timeout} s: {what}")
            time.sleep(interval)

    def _check_alive(self) -> None:
        for node in self.nodes.values():
            if node.expected_running and node.process is not None:
                code = node.process.poll()
                if code is not None:
                    node.expected_running = False
                    tail = self.log_text(node.node_id)[-3000:]
                    raise RuntimeError(
                        f"node {node.node_id} exited with status {code}; end of its log:\n{tail}"
                    )

    def wait_ready(self, node_ids: Iterable[str] | None = None, timeout: float = 30.0) -> float:
        """
        Wait until the nodes' admin APIs answer (the own nodes by default).

        @return: the seconds waited.
        """
        chosen = list(node_ids) if node_ids is not None else list(self.node_ids)

        def ready() -> bool:
            return all(self.cluster_doc(n) is not None for n in chosen)

        _, elapsed = self.wait_for(ready, timeout, f"admin APIs of {', '.join(chosen)} answer")
        return elapsed

    def wait_formed(
        self, node_ids: Iterable[str] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        """
        Wait until L{formed} holds for the nodes (the own nodes by default).

        @return: the agreed view.
        """
        chosen = list(node_ids) if node_ids is not None else list(self.node_ids)
        view, _ = self.wait_for(
            lambda: self.formed(chosen), timeout, f"{', '.join(chosen)} form one view"
        )
        return view

    def wait_coordinator(
        self,
        node_ids: Iterable[str],
        timeout: float,
        exclude: Iterable[str] = (),
        interval: float = 0.01,
    ) -> tuple[str, float]:
        """
        Wait until every given node names the same coordinator, which is
        not in C{exclude} (for example the node just killed).

        @return: C{(coordinator, elapsed seconds)}.
        """
        chosen = list(node_ids)
        excluded = set(exclude)

        def agreed() -> str | None:
            seen = set(self.coordinators(chosen).values())
            if len(seen) != 1:
                return None
            (coordinator,) = seen
            if coordinator is None or coordinator in excluded:
                return None
            return coordinator

        return self.wait_for(
            agreed,
            timeout,
            f"{', '.join(chosen)} agree on a coordinator outside {sorted(excluded)}",
            interval,
        )


def _stop_order(node: NodeProcess) -> tuple[int, str]:
    priority = node.config.get("priority", 0)
    return (priority if isinstance(priority, int) else 0, node.node_id)
