"""
L{ClusterNode}: one Clustron node, as a Twisted service.

The node wires the layers together (transport, wire, membership, messaging,
discovery, admin) and is the embedding API. It is the only module below
C{tap.py} that may fall back to the global reactor, and only when none is
given.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.logger import Logger
from zope.interface import implementer

from clustron import plugins
from clustron.admin.api import IAdminTarget
from clustron.config import NodeConfig, diff_for_reload
from clustron.errors import ConfigError, ProtocolViolation
from clustron.membership.group import Membership
from clustron.membership.view import View
from clustron.messaging.channel import Messenger
from clustron.messaging.message import Message
from clustron.observability.metrics import NodeMetrics
from clustron.wire import framing
from clustron.wire.mesh import Mesh, format_address

if TYPE_CHECKING:
    from clustron.admin.auth import TokenLike

log = Logger()


@implementer(IAdminTarget)
class ClusterNode(MultiService):
    """
    A member of a Clustron cluster.

    Create it from a validated L{NodeConfig}, add it to your application (or
    call C{startService()}), and use L{when_joined} to learn when it is part
    of the cluster::

        node = ClusterNode(NodeConfig.from_file("node.yaml"))
        node.setServiceParent(application)

    @ivar config: the node's configuration (replaced on reload).
    @ivar metrics: the node's Prometheus metrics.
    @ivar mesh: the peer connections (L{clustron.wire.mesh.Mesh}).
    @ivar membership: the membership state machine.
    """

    def __init__(self, config: NodeConfig, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.reactor = reactor
        self.config = config
        self.setName(f"clustron-node-{config.node_id}")
        self.metrics = NodeMetrics()
        self.rng = _node_random(reactor, config.node_id)
        self.incarnation = int(reactor.seconds() * 1000)
        self.transport_plugin = plugins.find("transport", config.transport)
        self.serializer = plugins.find("serializer", config.serializer)
        serializers = list(plugins.installed("serializer").values())
        self.strategy = plugins.find("election", config.election.plugin).create(config)
        identity_check = None
        if config.transport == "tls":
            from clustron.security import tls_metrics
            from clustron.security.tls_identity import check_peer_identity

            identity_check = check_peer_identity
            tls_metrics.register(self.metrics.registry)
        self.mesh = Mesh(
            reactor,
            config,
            self.transport_plugin,
            self.serializer,
            serializers,
            self.metrics,
            self.rng,
            self.incarnation,
            identity_check=identity_check,
        )
        self.membership = Membership(
            clock=reactor,
            config=config,
            strategy=self.strategy,
            send=self._send_frame,
            connected=lambda: self.mesh.peers,
            rng=self.rng,
            incarnation=self.incarnation,
            metrics=self.metrics,
            set_view_addresses=lambda addresses: self.mesh.set_addresses("view", addresses),
            set_incarnation=self.mesh.set_incarnation,
        )
        self.mesh.on_peer_up = self.membership.peer_up
        self.mesh.on_peer_down = self.membership.peer_down
        self.mesh.on_unreachable = lambda node_id, address, reason: self.membership.unreachable(
            node_id, reason
        )
        self.mesh.on_frame = self._frame_received
        self.messenger = Messenger(
            node_id=config.node_id,
            incarnation=self.incarnation,
            clock=reactor,
            config=config,
            serializer=self.serializer,
            serializers={s.name: s for s in serializers},
            transmit=self.mesh.send_message,
            transmit_payload=self.mesh.send_payload,
            writable=self.mesh.writable,
            view=lambda: self.membership.view,
            rng=self.rng,
            metrics=self.metrics,
        )
        self.mesh.on_writable = self.messenger.bulk_writable
        self.membership.on_change = self._membership_changed
        self._frame_handlers: dict[int, Callable[[str, int, Any], None]] = {
            framing.HEARTBEAT: self.membership.frame_received,
            framing.CONTROL: self.membership.frame_received,
            framing.MESSAGE: self.messenger.frame_received,
        }
        self.mesh.frame_handlers = self._frame_handlers
        self.discovery: dict[str, Any] = self._make_discovery(config)
        self.authorizer = None
        self.admin = None
        if config.admin.listen:
            from clustron.admin.auth import Authorizer
            from clustron.admin.service import AdminService

            # TokenLike declares plain (settable) attributes; the frozen
            # TokenConfig only reads them, which is all Authorizer does.
            self.authorizer = Authorizer(cast("Iterable[TokenLike]", config.admin.tokens))
            self.admin = AdminService(
                reactor,
                config.admin.listen,
                self,
                self.authorizer,
                config.admin.audit_log,
                config.admin.tls,
            )
            self.admin.setServiceParent(self)

    def _make_discovery(self, config: NodeConfig) -> dict[str, Any]:
        sources = {}
        for name, options in sorted(config.discovery.items()):
            plugin = plugins.find("discovery", name)
            sources[name] = plugin.create(
                self.reactor, config, options, lambda name=name: self._discovered(name)
            )
        return sources

    @property
    def metrics_registry(self) -> Any:
        """
        The node's Prometheus registry (served at C{GET /metrics}).
        """
        return self.metrics.registry

    # -- service -------------------------------------------------------------

    @inlineCallbacks
    def startService(self) -> Any:  # noqa: N802
        """
        Listen, start discovery and membership, then child services (admin).
        """
        log.info(
            "starting node {node_id} of cluster {cluster_id} at {address} "
            "(incarnation {incarnation})",
            node_id=self.config.node_id,
            cluster_id=self.config.cluster_id,
            address=format_address(self.config.advertise_address),
            incarnation=self.incarnation,
        )
        yield self.mesh.start()
        for name, source in sorted(self.discovery.items()):
            try:
                yield maybeDeferred(source.start)
            except Exception:
                log.failure("discovery {name} failed to start; it will retry", name=name)
            self._discovered(name)
        self.membership.start()
        super().startService()

    @inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802
        """
        Leave the cluster gracefully (waiting at most C{dead_after} for the
        coordinator to confirm: the others would notice the departure by
        then anyway), then stop everything.
        """
        if self.membership.joined:
            leaving = self.membership.leave()

            def stop_waiting() -> None:
                if not leaving.called:
                    leaving.callback(None)

            bound = self.reactor.callLater(self.config.failure_detector.dead_after, stop_waiting)
            try:
                yield leaving
            except Exception:
                log.failure("graceful leave failed")
            if bound.active():
                bound.cancel()
        yield super().stopService()
        self.membership.stop()
        self.messenger.stop()
        for name, source in sorted(self.discovery.items()):
            try:
                yield maybeDeferred(source.stop)
            except Exception:
                log.failure("discovery {name} failed to stop", name=name)
        yield self.mesh.stop()

    # -- the embedding API -----------------------------------------------------

    @property
    def node_id(self) -> str:
        """
        This node's id.
        """
        return self.config.node_id

    @property
    def view(self) -> View | None:
        """
        The current view, or None before joining.
        """
        return self.membership.view

    def when_joined(self) -> Deferred[View]:
        """
        @return: a Deferred that fires with the view once this node is a
            member of one.
        """
        return self.membership.when_joined()

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """
        Receive membership events: dicts with C{type} (C{joined},
        C{view_changed}, C{coordinator_changed}, C{member_joined},
        C{member_suspected}, C{member_alive}, C{member_died},
        C{member_left}, C{member_removed}, C{member_draining},
        C{member_reaped}, C{merged}, C{quorum_lost}, C{quorum_regained},
        C{left_cluster}), C{time}, and fields that depend on the type
        (C{node_id}, C{view}, C{reason}, ...).

        @return: a function that unsubscribes.
        """
        return self.membership.subscribe(callback)

    def on_message(self, topic: str, handler: Callable[[Message], Any] | None) -> None:
        """
        Call C{handler(message)} for each message on C{topic}; its return
        value (or Deferred) is the reply to a request. C{message} has
        C{.topic .body .sender .id .correlation_id .order .position}.
        """
        self.messenger.on_message(topic, handler)

    def send(self, to: str, topic: str, body: Any, reliable: bool = True) -> Deferred[None]:
        """
        Fire-and-forget unicast; the Deferred fires once C{to} acknowledged
        it (see L{Messenger.send}).
        """
        return self.messenger.send(to, topic, body, reliable)

    def request(
        self, to: str, topic: str, body: Any, timeout: float | None = None
    ) -> Deferred[Any]:
        """
        Request/response (C{timeout} defaults to C{messaging.request_timeout},
        5 s unless configured): fires with the reply body, or fails with
        L{clustron.errors.RequestTimeout}, L{clustron.errors.RemoteError} or
        L{clustron.errors.UnknownMember}.
        """
        return self.messenger.request(to, topic, body, timeout)

    def broadcast(
        self, topic: str, body: Any, order: str = "fifo", reliable: bool = True
    ) -> Deferred[None]:
        """
        Send to every member of the current view, this node included, in
        C{"fifo"}, C{"causal"} or C{"total"} order (see L{Messenger.broadcast}).
        """
        return self.messenger.broadcast(topic, body, order, reliable)

    def leave(self) -> Deferred[None]:
        """
        Leave the cluster gracefully (the node keeps running, outside it).
        """
        return self.membership.leave()

    def force_election(self, prefer: str | None = None) -> Deferred[dict[str, Any]]:
        """
        Make the coordinator step down so the election runs again,
        optionally toward C{prefer}.
        """
        return self.membership.force_election(prefer)

    def remove_member(self, node_id: str, by: str = "operator") -> Deferred[dict[str, Any]]:
        """
        Remove a member from the cluster (it stays out until restarted).
        """
        return self.membership.remove_member(node_id, by)

    def drain_member(self, node_id: str, by: str = "operator") -> Deferred[dict[str, Any]]:
        """
        Mark a member draining: it stays a member but is never elected.
        """
        return self.membership.drain_member(node_id, by)

    @inlineCallbacks
    def reload_config(self) -> Any:
        """
        Re-read the configuration file and apply what can change at runtime
        (failure-detector timings, log level, admin tokens, discovery);
        changes to other keys are reported and ignored until a restart. An
        invalid file changes nothing.

        @return: a Deferred firing with C{{"applied": [...], "ignored":
            [...], "errors": [...]}}.
        """
        path = self.config.source_path
        if not path:
            return {
                "applied": [],
                "ignored": [],
                "errors": ["this node was not started from a file"],
            }
        try:
            new = NodeConfig.from_file(path)
        except ConfigError as e:
            log.warn("configuration reload refused: {errors}", errors=e.render())
            return {
                "applied": [],
                "ignored": [],
                "errors": [f"{k}: {r}" if k else r for k, r in e.errors],
            }
        plan = diff_for_reload(self.config, new)
        old = self.config
        applied = attrs.evolve(
            old,
            failure_detector=new.failure_detector,
            logging=attrs.evolve(old.logging, level=new.logging.level),
            # The attrs plugin types a converter=tuple field as Iterable[_T_co].
            admin=attrs.evolve(old.admin, tokens=new.admin.tokens),  # type: ignore[arg-type]
            discovery=new.discovery,
        )
        errors: list[str] = []
        if self.authorizer is not None and new.admin.tokens != old.admin.tokens:
            try:
                self.authorizer.replace(cast("Iterable[TokenLike]", new.admin.tokens))
            except ValueError as e:
                errors.append(f"admin.tokens: {e}")
                applied = attrs.evolve(applied, admin=old.admin)
        if new.logging.level != old.logging.level:
            from clustron.observability.logs import set_level

            set_level(new.logging.level)
        if new.failure_detector != old.failure_detector:
            self.membership.reconfigure(applied)
        if new.discovery != old.discovery:
            for name, source in sorted(self.discovery.items()):
                yield maybeDeferred(source.stop)
                self.mesh.set_addresses(f"discovery:{name}", set())
            self.config = applied
            self.discovery = self._make_discovery(applied)
            for name, source in sorted(self.discovery.items()):
                yield maybeDeferred(source.start)
                self._discovered(name)
        self.config = applied
        for key in plan.fixed:
            log.warn(
                "configuration key {key} changed but needs a restart; ignored until then", key=key
            )
        log.info(
            "configuration reloaded: applied {applied}; ignored {ignored}",
            applied=plan.reloadable,
            ignored=plan.fixed,
        )
        return {"applied": plan.reloadable, "ignored": plan.fixed, "errors": errors}

    # -- status ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """
        The document served at C{GET /v1/cluster}.
        """
        view = self.membership.view
        if view is not None and self.membership.joined:
            view_doc: dict[str, Any] | None = view.to_dict()
        else:
            view_doc = None
        peers = []
        for node_id in sorted(set(self.mesh.peers) | set(self.membership.peers)):
            protocol = self.mesh.peers.get(node_id)
            info = self.membership.peers.get(node_id)
            address = (
                protocol.peer.address
                if protocol is not None and protocol.peer is not None
                else (info.address if info else "")
            )
            peers.append(
                {
                    "node_id": node_id,
                    "address": address,
                    "connected": protocol is not None and not protocol.closed,
                    "queued_frames": protocol.queued_frames if protocol is not None else 0,
                }
            )
        return {
            "cluster_id": self.config.cluster_id,
            "node_id": self.config.node_id,
            "incarnation": self.membership.incarnation,
            "state": "alive" if self.membership.joined else "joining",
            "coordinator": cast(View, view).coordinator if view_doc else None,
            "is_coordinator": self.membership.is_coordinator and self.membership.joined,
            "acting": self.membership.acting,
            "view": view_doc,
            "quorum": self.membership.quorum_status(),
            "peers": peers,
            "discovery": sorted(self.discovery),
        }

    def health(self) -> dict[str, Any]:
        """
        The document served at C{GET /v1/health}: C{status} is C{ok} when
        the node is a member of a view with quorum.
        """
        quorum = self.membership.quorum_status()
        joined = self.membership.joined
        return {
            "status": "ok" if joined and quorum["has_quorum"] else "degraded",
            "node_id": self.config.node_id,
            "joined": joined,
            "has_quorum": quorum["has_quorum"] if joined else None,
            "peers_connected": len(self.mesh.peers),
        }

    # -- internals --------------------------------------------------------------

    def _membership_changed(self) -> None:
        """
        The view or this node's quorum changed: tell the messaging layer,
        with the quorum of the view.
        """
        membership = self.membership
        view = membership.view if membership.joined else None
        quorum = (
            membership.quorum.required(len(view.active_members())) if view is not None else None
        )
        lives = (
            {node: membership.life_of(node) for node in view.active_ids()}
            if view is not None
            else None
        )
        self.messenger.view_changed(view, membership.acting, quorum, lives)

    def _send_frame(self, node_id: str, frame_type: int, body: Any, priority: bool) -> bool:
        return self.mesh.try_send(node_id, frame_type, body, priority)

    def _frame_received(self, node_id: str, frame_type: int, body: Any) -> None:
        handler = self._frame_handlers.get(frame_type)
        if handler is None:
            raise ProtocolViolation("unknown_frame_type", f"frame type {frame_type}")
        handler(node_id, frame_type, body)

    def _discovered(self, name: str) -> None:
        source = self.discovery.get(name)
        if source is None:
            return
        self.mesh.set_addresses(f"discovery:{name}", set(source.addresses()))


def _node_random(reactor: Any, node_id: str) -> random.Random:
    seeded = getattr(reactor, "seeded_random", None)
    if callable(seeded):
        rng: random.Random = seeded()
        return rng
    return random.Random()
