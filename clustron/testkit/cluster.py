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
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Mapping

from twisted.internet.task import Clock

from clustron.config import NodeConfig
from clustron.node import ClusterNode
from clustron.testkit.simnet import SimNetwork

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
    @ivar clock: the one clock every node runs on.
    @ivar nodes: the running nodes by node id (a crashed node stays listed
        until restarted; see L{crashed}).
    @ivar crashed: ids of nodes currently crashed.
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        overrides: Mapping[str, Any] | None = None,
        per_node: Mapping[str, Mapping[str, Any]] | None = None,
        profile: str = "lan",
    ) -> None:
        self.size = size
        self.seed = seed
        self.clock = Clock()
        self.network = SimNetwork(self.clock, seed)
        self._overrides = dict(overrides or {})
        self._per_node = dict(per_node or {})
        self._profile = profile
        self.node_ids = [f"n{i}" for i in range(1, size + 1)]
        self.nodes: dict[str, ClusterNode] = {}
        self.crashed: set[str] = set()
        self._node_hooks: list[Callable[[ClusterNode], None]] = []

    # -- addresses and config ------------------------------------------------

    def host_of(self, node_id: str) -> str:
        """
        The simulated host address of a node (C{n3} -> C{10.0.0.3}).
        """
        index = int(node_id[1:])
        return f"10.0.{index // 250}.{index % 250}"

    def config_dict(self, node_id: str) -> dict[str, Any]:
        """
        The configuration (plain data) a node starts with.
        """
        seeds = [f"{self.host_of(n)}:{PORT}" for n in self.node_ids]
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
        config = NodeConfig.from_dict(self.config_dict(node_id))
        node = ClusterNode(config, reactor=self.network.host(self.host_of(node_id)))
        for hook in self._node_hooks:
            hook(node)
        return node

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

    def restart(self, node_id: str) -> ClusterNode:
        """
        Restart a crashed (or running) node with fresh state and a new
        incarnation.
        """
        host = self.network.host(self.host_of(node_id))
        host.restart()
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

    def partition(self, *groups: Iterable[str]) -> None:
        """
        Cut every link between nodes of different groups (node ids).
        """
        self.network.partition([[self.host_of(n) for n in group] for group in groups])

    def heal(self) -> None:
        """
        Restore every link.
        """
        self.network.heal()

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
        return view.coordinator if view is not None and self.nodes[node_id].membership.joined else None
