"""
L{SimCluster}: N real L{ClusterNode}s on one simulated network and one clock.

    cluster = SimCluster(5, seed=42)
    cluster.start()
    assert cluster.run_until(cluster.converged, timeout=10)
    cluster.crash("n5")
    cluster.run(5)

Node ids are C{n1} .. C{nN}; node C{nK} lives at host C{10.0.0.K} and listens
on port 7000. Every node lists every address as a static seed. Configuration
keys can be overridden for all nodes (C{overrides}) or per node
(C{per_node}).

Restarts: a Clustron node keeps no durable state, so restarting a node
"with its state kept" means the same node id comes back at the same address
with a new incarnation (L{SimCluster.restart}); restarting it "wiped" means
a new identity comes back at the same address, as a re-imaged machine would
(C{restart(node_id, wipe=True)}), and the old id must be declared dead.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from clustron import plugins
from clustron.config import NodeConfig
from clustron.node import ClusterNode
from clustron.testkit.simnet import Delay, SimClock, SimHost, SimNetwork

__all__ = ["PORT", "SimCluster"]

PORT = 7000


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class SimCluster:
    """
    A whole cluster in one process, deterministic from one seed.

    @ivar network: the L{SimNetwork}.
    @ivar clock: the one clock every node runs on (a L{SimClock}).
    @ivar node_ids: every node id ever used, in creation order (ids that a
        wiped restart replaced stay listed; see L{retired}).
    @ivar nodes: the node objects by node id (a crashed node stays listed
        until restarted; see L{crashed}).
    @ivar crashed: ids of nodes currently crashed.
    @ivar retired: ids replaced by a new identity at their address
        (C{restart(node_id, wipe=True)}); they never come back.
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        overrides: Mapping[str, Any] | None = None,
        per_node: Mapping[str, Mapping[str, Any]] | None = None,
        profile: str = "lan",
    ) -> None:
        """
        @param size: the number of nodes (at least 1).
        @param seed: the seed every random choice of the simulation derives
            from.
        @param overrides: configuration keys (nested dicts) for every node.
        @param per_node: configuration keys per node id, applied last.
        @param profile: the timing profile of every node.
        @raise ValueError: when C{size} is below 1.
        """
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"a SimCluster needs at least one node, got size={size!r}")
        self.size = size
        self.seed = seed
        self.clock = SimClock()
        self.network = SimNetwork(self.clock, seed)
        self._overrides = dict(overrides or {})
        self._per_node = dict(per_node or {})
        self._profile = profile
        self.node_ids = [f"n{i}" for i in range(1, size + 1)]
        self._hosts: dict[str, str] = {}
        self.nodes: dict[str, ClusterNode] = {}
        self.crashed: set[str] = set()
        self.retired: set[str] = set()
        self._node_hooks: list[Callable[[ClusterNode], None]] = []
        self._wipes = 0
        self._plugin_cache: dict[str, dict[str, Any]] = {}

    # -- addresses and config ------------------------------------------------

    def host_of(self, node_id: str) -> str:
        """
        The simulated host address of a node (C{n3} -> C{10.0.0.3}).
        """
        known = self._hosts.get(node_id)
        if known is not None:
            return known
        index = int(node_id[1:])
        return f"10.0.{index // 250}.{index % 250}"

    def current(self, node_id: str) -> str:
        """
        The id of the node that lives at C{node_id}'s address now: C{node_id}
        itself, or the identity a wiped restart gave that address last.
        """
        address = self.host_of(node_id)
        newest = node_id
        for candidate in self.node_ids:
            if self.host_of(candidate) == address:
                newest = candidate
        return newest

    def host(self, node_id: str) -> SimHost:
        """
        The L{SimHost} a node runs on.
        """
        return self.network.host(self.host_of(node_id))

    def config_dict(self, node_id: str) -> dict[str, Any]:
        """
        The configuration (plain data) a node starts with.
        """
        addresses = dict.fromkeys(self.host_of(n) for n in self.node_ids)
        seeds = [f"{address}:{PORT}" for address in addresses]
        base: dict[str, Any] = {
            "cluster_id": "sim",
            "node_id": node_id,
            "transport": "sim",
            "listen": f"sim:{PORT}",
            "advertise": f"{self.host_of(node_id)}:{PORT}",
            "profile": self._profile,
            "discovery": {"static": {"seeds": seeds}},
            "membership": {"bootstrap_expect": self.size // 2 + 1},
        }
        base = _merge(base, self._overrides)
        return _merge(base, self._per_node.get(node_id, {}))

    def on_node(self, hook: Callable[[ClusterNode], None]) -> None:
        """
        Call C{hook(node)} for every node created from now on (and at once
        for the nodes that exist): attach observers, handlers, checkers.
        """
        self._node_hooks.append(hook)
        for node in self.nodes.values():
            hook(node)

    def _make(self, node_id: str) -> ClusterNode:
        with self._plugins_cached():
            config = NodeConfig.from_dict(self.config_dict(node_id))
            node = ClusterNode(config, reactor=self.network.host(self.host_of(node_id)))
        for hook in self._node_hooks:
            hook(node)
        return node

    @contextmanager
    def _plugins_cached(self) -> Iterator[None]:
        """
        While nodes are built, answer L{plugins.installed} from this
        cluster's cache: Twisted's plugin scan costs most of a simulated
        node's start-up, and the installed plugins do not change during a
        simulation.
        """
        original = plugins.installed
        cache = self._plugin_cache

        def installed(kind: str) -> dict[str, Any]:
            if kind not in cache:
                cache[kind] = original(kind)
            return dict(cache[kind])

        plugins.installed = installed  # type: ignore[assignment]
        try:
            yield
        finally:
            plugins.installed = original  # type: ignore[assignment]

    # -- lifecycle -----------------------------------------------------------

    def start(self, node_ids: Iterable[str] | None = None) -> None:
        """
        Create and start nodes (all by default).
        """
        for node_id in node_ids if node_ids is not None else self.node_ids:
            node = self._make(node_id)
            self.nodes[node_id] = node
            node.startService()

    def crash(self, node_id: str) -> None:
        """
        Crash a node's process: no goodbye, its peers see the connection drop.
        """
        self.network.host(self.host_of(node_id)).crash()
        self.crashed.add(node_id)

    def restart(self, node_id: str, wipe: bool = False) -> ClusterNode:
        """
        Restart a crashed (or running) node with fresh state and a new
        incarnation.

        @param wipe: come back as a new identity at the same address (the
            node id gets a suffix: C{n3} becomes C{n3w1}); the old id is
            retired and stays crashed.
        @raise ValueError: when the node id is retired.
        @return: the new node.
        """
        if node_id in self.retired:
            raise ValueError(f"{node_id} was replaced by a wiped restart and cannot restart")
        host = self.network.host(self.host_of(node_id))
        host.restart()
        if wipe:
            self._wipes += 1
            new_id = f"{node_id.split('w', 1)[0]}w{self._wipes}"
            self._hosts[new_id] = self.host_of(node_id)
            if node_id in self._per_node:
                self._per_node[new_id] = self._per_node[node_id]
            self.crashed.add(node_id)
            self.retired.add(node_id)
            self.node_ids.append(new_id)
            node_id = new_id
        self.crashed.discard(node_id)
        node = self._make(node_id)
        self.nodes[node_id] = node
        node.startService()
        return node

    def pause(self, node_id: str) -> None:
        """
        Freeze a node like C{SIGSTOP}.
        """
        self.network.host(self.host_of(node_id)).pause()

    def resume(self, node_id: str) -> None:
        """
        Unfreeze a paused node.
        """
        self.network.host(self.host_of(node_id)).resume()

    def paused(self) -> list[str]:
        """
        Ids of live nodes that are paused, in id order.
        """
        return [n.node_id for n in self.live() if self.host(n.node_id).state == "paused"]

    # -- network faults ----------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """
        Cut every link between nodes of different groups (node ids).
        """
        self.network.partition([[self.host_of(n) for n in group] for group in groups])

    def isolate(self, node_id: str) -> None:
        """
        Cut both directions between a node and every other host.
        """
        self.network.isolate(self.host_of(node_id))

    def cut_one_way(self, a: str, b: str) -> None:
        """
        Cut the direction from node C{a} to node C{b} only.
        """
        self.network.cut_one_way(self.host_of(a), self.host_of(b))

    def clog(self, a: str, b: str, seconds: float | None = None, both: bool = True) -> None:
        """
        Clog the link between two nodes (both directions unless C{both} is
        False): what travels on it is held, then delivered when the clog
        ends (see L{SimNetwork.clog}).
        """
        self.network.clog(self.host_of(a), self.host_of(b), seconds)
        if both:
            self.network.clog(self.host_of(b), self.host_of(a), seconds)

    def unclog(self, a: str, b: str, both: bool = True) -> None:
        """
        End the clog of the link between two nodes.
        """
        self.network.unclog(self.host_of(a), self.host_of(b))
        if both:
            self.network.unclog(self.host_of(b), self.host_of(a))

    def set_links(self, node_ids: Iterable[str] | None = None, **params: Any) -> None:
        """
        Set link parameters (L{clustron.testkit.simnet.LinkParams} names) on
        every direction between the given nodes (all by default).
        """
        chosen = list(node_ids) if node_ids is not None else list(self.node_ids)
        for a in chosen:
            for b in chosen:
                if a != b:
                    self.network.set_link(self.host_of(a), self.host_of(b), **params)

    def slow(self, node_id: str, delay: Delay) -> None:
        """
        Make a node slow: everything delivered to it waits C{delay} extra
        seconds (C{0} makes it normal again).
        """
        self.host(node_id).set_processing_delay(delay)

    def skew(self, node_id: str, seconds: float) -> None:
        """
        Offset a node's wall clock by C{seconds}.
        """
        self.host(node_id).set_skew(seconds)

    def heal(self) -> None:
        """
        Restore every link (cuts, clogs and link parameters).
        """
        self.network.heal()

    # -- running -------------------------------------------------------------------

    def run(self, seconds: float) -> None:
        """
        Advance simulated time.
        """
        self.network.run(seconds)

    def run_until(self, predicate: Callable[[], object], timeout: float) -> bool:
        """
        Advance time until C{predicate()} is true or C{timeout} simulated
        seconds pass.

        @return: whether the predicate became true.
        """
        return self.network.run_until(predicate, timeout)

    def trace_hash(self) -> str:
        """
        The network's trace hash so far (same seed and calls, same hash).
        """
        return self.network.trace_hash()

    # -- observations --------------------------------------------------------

    def live(self) -> list[ClusterNode]:
        """
        Running (not crashed) nodes, in id order.
        """
        return [self.nodes[n] for n in self.node_ids if n in self.nodes and n not in self.crashed]

    def acting_coordinators(self) -> list[str]:
        """
        Live nodes that coordinate with quorum right now.
        """
        return [n.node_id for n in self.live() if n.membership.acting]

    def converged(self, nodes: Iterable[str] | None = None) -> bool:
        """
        Whether the given live nodes (all live ones by default) share one
        view, whose active members are exactly them, with an acting
        coordinator among them.
        """
        chosen = [self.nodes[n] for n in nodes] if nodes is not None else self.live()
        if not chosen:
            return False
        views = {n.view.id if n.view and n.membership.joined else None for n in chosen}
        if len(views) != 1 or None in views:
            return False
        view = chosen[0].view
        assert view is not None
        ids = {n.node_id for n in chosen}
        if set(view.active_ids()) != ids or view.coordinator not in ids:
            return False
        return self.nodes[view.coordinator].membership.acting

    def coordinator_seen_by(self, node_id: str) -> str | None:
        """
        The coordinator named by a node's current view.
        """
        view = self.nodes[node_id].view
        return (
            view.coordinator if view is not None and self.nodes[node_id].membership.joined else None
        )
