"""
The mesh: this node's connections to its peers.

The mesh listens through the transport plugin, keeps dialling every address
it is told about (by discovery and by the view) with capped exponential
backoff and jitter, runs the handshake on every connection, keeps exactly one
connection per pair of nodes, and hands established peers' frames to the
layer above. It knows node ids only from handshakes; it knows nothing of
membership.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable
from typing import Any, cast

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime, ITransport
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from clustron.backoff import Backoff
from clustron.config import NodeConfig
from clustron.errors import QueueFull, SerializationError, UnknownMember
from clustron.interfaces import ISerializer, ITransportPlugin
from clustron.observability.logs import NodeLogger
from clustron.observability.metrics import NodeMetrics
from clustron.wire.framing import (
    FRAME_TYPE_NAMES,
    MESSAGE,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    Crc32,
    HmacSha256,
    IIntegrity,
    NoIntegrity,
)
from clustron.wire.handshake import (
    DUPLICATE_NODE_ID,
    REASONS,
    SELF_CONNECTION,
    TLS_IDENTITY,
    Hello,
    Reject,
    check_hello,
    keep_connection,
)
from clustron.wire.protocol import DUPLICATE_CONNECTION, PeerProtocol

Address = tuple[str, int]


def parse_address(text: str) -> Address:
    """
    Split C{"host:port"} (IPv6 hosts may be bracketed).

    @raise ValueError: when it is not of that form.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()):
        raise ValueError(f"{text!r} is not host:port")
    if not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return host.strip("[]"), int(port)


def format_address(address: Address) -> str:
    """
    The C{"host:port"} form of an address.
    """
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.define
class _Dialer:
    address: Address
    backoff: Backoff
    pending: IDelayedCall | None = None
    connecting: bool = False
    refused_in_a_row: int = 0


class _PeerFactory(Factory):
    noisy = False

    def __init__(self, mesh: Mesh, initiated: bool, address: Address | None = None) -> None:
        self.mesh = mesh
        self.initiated = initiated
        self.address = address

    def buildProtocol(self, addr: Any) -> PeerProtocol | None:  # noqa: N802
        if not self.mesh._running:
            return None
        protocol = PeerProtocol(self.mesh, self.mesh.serializer, self.initiated, self.address)
        if not self.initiated:
            host = getattr(addr, "host", "?")
            if not self.mesh._admit_inbound(host):
                return None
            protocol.inbound_host = host
        self.mesh._protocols[protocol] = None
        return protocol


class Mesh:
    """
    All of one node's peer connections.

    Callbacks, set by the node: C{on_peer_up(hello)}, C{on_peer_down(hello,
    reason)}, C{on_frame(node_id, frame_type, body)}, C{on_unreachable(node_id,
    address, reason)} (a dial to a known peer's address failed). A frame
    type with an entry in C{frame_handlers} goes to that handler (same
    arguments) instead of C{on_frame}.

    @ivar peers: established connections by peer node id.
    """

    def __init__(
        self,
        reactor: Any,
        config: NodeConfig,
        transport: ITransportPlugin,
        serializer: ISerializer,
        serializers: Iterable[ISerializer],
        metrics: NodeMetrics,
        rng: random.Random,
        incarnation: int,
        identity_check: Callable[[Any, str], str | None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.log = NodeLogger(config.node_id, namespace=__name__)
        self.config = config
        self.transport_plugin = transport
        self.serializer = serializer
        self._serializers = {s.wire_id: s for s in serializers}
        self._serializer_names = frozenset(s.name for s in self._serializers.values())
        self.metrics = metrics
        self._rng = rng
        self._identity_check = identity_check
        self.handshake_timeout = config.wire.handshake_timeout
        self.max_frame_bytes = config.wire.max_frame_bytes
        self.queue_frames = config.wire.send_queue_frames
        self.queue_bytes = config.wire.send_queue_bytes
        self.local_hello = self._make_hello(incarnation)
        self.peers: dict[str, PeerProtocol] = {}
        self._sources: dict[str, set[Address]] = {}
        self._dialers: dict[Address, _Dialer] = {}
        self._address_of: dict[str, Address] = {}
        self._self_addresses: set[Address] = {config.advertise_address}
        self._pending_inbound: dict[str, int] = {}
        self._protocols: dict[PeerProtocol, None] = {}  # in connection order
        # Peers whose kept connection the peer closed as a duplicate, while
        # the connection it keeps has not finished its handshake here yet.
        self._awaiting: dict[str, tuple[Hello, str, IDelayedCall]] = {}
        self._port: IListeningPort | None = None
        self._running = False
        self.on_peer_up: Callable[[Hello], None] = lambda hello: None
        self.on_peer_down: Callable[[Hello, str], None] = lambda hello, reason: None
        self.on_frame: Callable[[str, int, Any], None] = lambda node, kind, body: None
        self.frame_handlers: dict[int, Callable[[str, int, Any], None]] = {}
        self.on_unreachable: Callable[[str, Address, str], None] = lambda n, a, r: None
        self.on_writable: Callable[[str], None] = lambda node_id: None

    # -- lifecycle -----------------------------------------------------------

    @inlineCallbacks
    def start(self) -> Any:
        """
        Listen for peers, then start dialling known addresses.

        @return: a Deferred that fires with the listening port.
        """
        self._running = True
        self._port = yield self.transport_plugin.listen(
            self.reactor, self.config, _PeerFactory(self, initiated=False)
        )
        self._sync_dialers()
        return self._port

    @property
    def listening_port(self) -> IListeningPort | None:
        """
        The listening port, once started.
        """
        return self._port

    def stop(self) -> Deferred[None] | None:
        """
        Stop dialling, close every connection and stop listening.
        """
        self._running = False
        for dialer in self._dialers.values():
            if dialer.pending is not None and dialer.pending.active():
                dialer.pending.cancel()
        self._dialers.clear()
        # Every connection, handshaking ones included: none may complete a
        # handshake with a stopped mesh.
        for protocol in list(self._protocols):
            protocol.close("node stopping")
        for node_id in list(self._awaiting):
            hello, reason, call = self._awaiting.pop(node_id)
            call.cancel()
            self.on_peer_down(hello, reason)
        port, self._port = self._port, None
        if port is not None:
            return port.stopListening()  # type: ignore[no-any-return]
        return None

    def set_incarnation(self, incarnation: int) -> None:
        """
        Announce a new incarnation in the HELLOs of future connections.
        """
        self.local_hello = attrs.evolve(self.local_hello, incarnation=incarnation)

    # -- addresses -----------------------------------------------------------

    def set_addresses(self, source: str, addresses: Iterable[Address]) -> None:
        """
        Replace the addresses that one source (a discovery plugin, the view)
        wants this node to stay connected to.
        """
        self._sources[source] = set(addresses)
        if self._running:
            self._sync_dialers()

    def wanted_addresses(self) -> set[Address]:
        """
        Every address some source wants dialled, minus this node's own.
        """
        wanted: set[Address] = set()
        for addresses in self._sources.values():
            wanted |= addresses
        return wanted - self._self_addresses

    def address_of(self, node_id: str) -> Address | None:
        """
        The advertised address of a peer seen in a handshake.
        """
        return self._address_of.get(node_id)

    def _covered(self, address: Address) -> bool:
        for node_id, protocol in self.peers.items():
            if self._address_of.get(node_id) == address or protocol.dial_address == address:
                return True
        return any(self._address_of.get(node_id) == address for node_id in self._awaiting)

    def _sync_dialers(self) -> None:
        wanted = self.wanted_addresses()
        for address in sorted(set(self._dialers) - wanted):
            dialer = self._dialers.pop(address)
            if dialer.pending is not None and dialer.pending.active():
                dialer.pending.cancel()
        for address in sorted(wanted - set(self._dialers)):
            dialer = _Dialer(
                address,
                Backoff(
                    self.config.wire.reconnect_initial, self.config.wire.reconnect_max, self._rng
                ),
            )
            self._dialers[address] = dialer
            self._dial_soon(dialer, 0.0)

    def _dial_soon(self, dialer: _Dialer, delay: float) -> None:
        if dialer.pending is not None and dialer.pending.active():
            return
        dialer.pending = self.clock.callLater(delay, self._dial, dialer)

    def _dial(self, dialer: _Dialer) -> None:
        dialer.pending = None
        if not self._running or self._dialers.get(dialer.address) is not dialer:
            return
        if dialer.connecting or self._covered(dialer.address):
            return
        dialer.connecting = True
        host, port = dialer.address
        d = self.transport_plugin.connect(
            self.reactor, self.config, host, port, _PeerFactory(self, True, dialer.address)
        )

        def connected(protocol: PeerProtocol) -> None:
            dialer.connecting = False
            dialer.refused_in_a_row = 0
            self.metrics.connection_attempts.labels("connected").inc()

        def failed(failure: Failure) -> None:
            dialer.connecting = False
            self.metrics.connection_attempts.labels("failed").inc()
            dialer.refused_in_a_row += 1
            for node_id, address in self._address_of.items():
                if address == dialer.address and node_id not in self.peers:
                    self.on_unreachable(node_id, address, failure.getErrorMessage())
            self._retry(dialer)

        d.addCallbacks(connected, failed)

    def _retry(self, dialer: _Dialer) -> None:
        if dialer.pending is not None and dialer.pending.active():
            return  # already scheduled: count one failure once
        if self._running and self._dialers.get(dialer.address) is dialer:
            self._dial_soon(dialer, dialer.backoff.next_delay())

    # -- PeerProtocolOwner ---------------------------------------------------

    def integrity_for(self, ours: Hello, theirs: Hello | None) -> IIntegrity:
        """
        The frame protection of a connection: C{security.signing} decides
        (CRC32 by default). With HMAC-SHA256, handshake frames are signed in
        a handshake context and every later frame in a session bound to both
        HELLO nonces of this connection.
        """
        signing = self.config.security.signing
        if signing == "none":
            return NoIntegrity()
        if signing == "hmac-sha256":
            if theirs is None:
                context = b"clustron-hello:" + self.config.cluster_id.encode()
            else:
                low, high = sorted((ours.nonce, theirs.nonce))
                context = hashlib.sha256(
                    b"clustron-session:" + low.encode() + b":" + high.encode()
                ).digest()
            return HmacSha256(self.config.security.keys, context)
        return Crc32()

    def new_nonce(self) -> str:
        """
        A fresh random nonce for one connection's HELLO.
        """
        return f"{self._rng.getrandbits(128):032x}"

    def serializer_by_id(self, wire_id: int) -> ISerializer | None:
        """
        An installed serializer by wire id.
        """
        return self._serializers.get(wire_id)

    def hello_received(self, protocol: PeerProtocol, hello: Hello) -> tuple[str, str] | None:
        """
        Check a peer's HELLO; log and count a refusal.
        """
        own_nonces = {p.local_hello.nonce for p in self._protocols}
        refusal = check_hello(self.local_hello, hello, self._serializer_names, own_nonces)
        if refusal is None and self._identity_check is not None:
            problem = self._identity_check(protocol.transport, hello.node_id)
            if problem is not None:
                refusal = (TLS_IDENTITY, problem)
        if refusal is None:
            existing = self.peers.get(hello.node_id)
            if existing is not None and existing.peer is not None:
                if existing.peer.incarnation > hello.incarnation:
                    refusal = (
                        DUPLICATE_NODE_ID,
                        f"node {hello.node_id!r} incarnation {hello.incarnation} is older "
                        f"than the connected one ({existing.peer.incarnation})",
                    )
        if refusal is not None:
            reason, detail = refusal
            if reason == SELF_CONNECTION:
                if protocol.dial_address is not None:
                    self._self_addresses.add(protocol.dial_address)
                    self._sync_dialers()
                return refusal
            self.metrics.handshake_rejections.labels(reason, "local").inc()
            self.log.warn(
                "refused handshake from {peer_node} at {peer_address}: {reason}: {detail}",
                peer_node=hello.node_id,
                peer_address=hello.address,
                reason=reason,
                detail=detail,
            )
        return refusal

    def rejected_by_peer(self, protocol: PeerProtocol, reject: Reject) -> None:
        """
        The peer refused our HELLO: log and count it.
        """
        if reject.reason == SELF_CONNECTION:
            if protocol.dial_address is not None:
                self._self_addresses.add(protocol.dial_address)
                self._sync_dialers()
            return
        label = reject.reason if reject.reason in REASONS else "other"
        self.metrics.handshake_rejections.labels(label, "peer").inc()
        self.log.warn(
            "peer at {peer_address} refused our handshake: {reason}: {detail}",
            peer_address=str(
                protocol.dial_address or cast(ITransport, protocol.transport).getPeer()
            ),
            reason=reject.reason,
            detail=reject.detail,
        )

    def handshake_complete(self, protocol: PeerProtocol) -> bool:
        """
        Apply the one-connection-per-pair rule and announce a new peer.
        """
        hello = protocol.peer
        assert hello is not None
        self._release_inbound(protocol)
        existing = self.peers.get(hello.node_id)
        try:
            self._address_of[hello.node_id] = parse_address(hello.address)
        except ValueError:
            pass
        awaited = self._awaiting.pop(hello.node_id, None)
        if awaited is not None:
            # The connection the peer kept: take it over silently, unless the
            # peer restarted meanwhile.
            before, _, call = awaited
            call.cancel()
            self.peers[hello.node_id] = protocol
            protocol.established = True
            self.metrics.connections.set(len(self.peers))
            if hello.incarnation != before.incarnation:
                self.on_peer_down(before, "restarted")
                self.on_peer_up(hello)
            return True
        if existing is not None and existing.peer is not None:
            newer = hello.incarnation > existing.peer.incarnation
            if not newer and not keep_connection(
                self.local_hello.node_id, hello.node_id, protocol.initiated
            ):
                return False
            # Swap without announcing the peer down and up again, unless it
            # restarted.
            self.peers[hello.node_id] = protocol
            protocol.established = True
            existing.close("replaced by newer incarnation" if newer else DUPLICATE_CONNECTION)
            if newer:
                self.on_peer_down(existing.peer, "restarted")
                self.on_peer_up(hello)
            return True
        self.peers[hello.node_id] = protocol
        protocol.established = True
        self.metrics.connections.set(len(self.peers))
        self.log.info(
            "connected to {peer_node} at {peer_address} ({direction})",
            peer_node=hello.node_id,
            peer_address=hello.address,
            direction="outgoing" if protocol.initiated else "incoming",
        )
        self.on_peer_up(hello)
        return True

    def connection_writable(self, protocol: PeerProtocol) -> None:
        """
        An established connection drained: tell the layer above.
        """
        if protocol.peer is not None and self.peers.get(protocol.peer.node_id) is protocol:
            self.on_writable(protocol.peer.node_id)

    def writable(self, node_id: str) -> bool:
        """
        Whether the connection to C{node_id} takes frames without queueing.
        """
        protocol = self.peers.get(node_id)
        return protocol is not None and protocol.writable

    def frame_received(self, protocol: PeerProtocol, frame_type: int, body: Any) -> None:
        """
        Pass an established peer's frame up.
        """
        assert protocol.peer is not None
        handler = self.frame_handlers.get(frame_type)
        if handler is not None:
            handler(protocol.peer.node_id, frame_type, body)
        else:
            self.on_frame(protocol.peer.node_id, frame_type, body)

    def connection_closed(self, protocol: PeerProtocol, reason: str) -> None:
        """
        Forget a closed connection; redial its address if still wanted.
        """
        self._protocols.pop(protocol, None)
        self._release_inbound(protocol)
        hello = protocol.peer
        if hello is not None and self.peers.get(hello.node_id) is protocol:
            del self.peers[hello.node_id]
            self.metrics.connections.set(len(self.peers))
            if protocol.bye_reason == DUPLICATE_CONNECTION and self._running:
                # Both nodes dialled; the peer keeps the other connection,
                # whose handshake is still on its way here (connections do
                # not keep order between them). Wait for it rather than
                # announcing the peer down and up again.
                call = self.clock.callLater(
                    self.handshake_timeout, self._replacement_missed, hello.node_id
                )
                self._awaiting[hello.node_id] = (hello, reason, call)
            else:
                # A peer that refused us after we took its HELLO is retried
                # with backoff, not at once: it will most likely refuse again.
                self._peer_lost(hello, reason, reconnect_now=protocol.rejection is None)
        if protocol.dial_address is not None and protocol.dial_address in self._dialers:
            dialer = self._dialers[protocol.dial_address]
            if not self._covered(dialer.address):
                self._retry(dialer)

    def _replacement_missed(self, node_id: str) -> None:
        hello, reason, _ = self._awaiting.pop(node_id)
        self._peer_lost(hello, reason)

    def _peer_lost(self, hello: Hello, reason: str, reconnect_now: bool = True) -> None:
        self.log.info(
            "lost connection to {peer_node}: {reason}", peer_node=hello.node_id, reason=reason
        )
        self.on_peer_down(hello, reason)
        address = self._address_of.get(hello.node_id)
        if address is not None and address in self._dialers and self._running:
            dialer = self._dialers[address]
            if reconnect_now:
                dialer.backoff.reset()
                self._dial_soon(dialer, 0.0)
            else:
                self._retry(dialer)
        elif address is not None and hello.node_id not in self.peers:
            # Not an address this node wants to stay connected to: forget
            # it, or peers that come and go under ever new ids pile up.
            del self._address_of[hello.node_id]

    def _admit_inbound(self, host: str) -> bool:
        pending = self._pending_inbound.get(host, 0)
        if pending >= self.config.wire.max_connections_per_address:
            self.metrics.protocol_violations.labels("too_many_connections").inc()
            self.log.warn("refusing connection from {host}: too many pending handshakes", host=host)
            return False
        self._pending_inbound[host] = pending + 1
        return True

    def _release_inbound(self, protocol: PeerProtocol) -> None:
        host, protocol.inbound_host = protocol.inbound_host, None
        if host is None:
            return
        count = self._pending_inbound.get(host, 0) - 1
        if count <= 0:
            self._pending_inbound.pop(host, None)
        else:
            self._pending_inbound[host] = count

    # -- sending -------------------------------------------------------------

    def send(self, node_id: str, frame_type: int, body: Any, priority: bool = False) -> None:
        """
        Send one frame to a connected peer.

        @raise UnknownMember: when no connection to C{node_id} is established.
        @raise QueueFull: when its bounded send queue is full.
        """
        protocol = self.peers.get(node_id)
        if protocol is None or protocol.closed:
            raise UnknownMember(f"not connected to {node_id!r}")
        protocol.send(frame_type, body, priority)

    def send_message(self, node_id: str, body: Any) -> None:
        """
        L{send} a MESSAGE frame (the messaging layer's one kind of frame).

        @raise UnknownMember: when no connection to C{node_id} is established.
        @raise QueueFull: when its bounded send queue is full.
        """
        protocol = self.peers.get(node_id)
        if protocol is None or protocol.closed:
            raise UnknownMember(f"not connected to {node_id!r}")
        protocol.send(MESSAGE, body)

    def send_payload(self, node_id: str, payload: bytes, serializer_id: int) -> None:
        """
        L{send_message} of a body serialized already (by the serializer of
        wire id C{serializer_id}).

        @raise UnknownMember: when no connection to C{node_id} is established.
        @raise QueueFull: when its bounded send queue is full.
        """
        protocol = self.peers.get(node_id)
        if protocol is None or protocol.closed:
            raise UnknownMember(f"not connected to {node_id!r}")
        protocol.send_payload(MESSAGE, payload, serializer_id)

    def try_send(self, node_id: str, frame_type: int, body: Any, priority: bool = False) -> bool:
        """
        Like L{send}, but report failure by returning False (a body that
        cannot be encoded is logged: the caller, often a timer, carries on).
        """
        try:
            self.send(node_id, frame_type, body, priority)
        except (UnknownMember, QueueFull):
            return False
        except SerializationError as e:
            self.log.error(
                "could not encode a {frame_type} frame to {peer_node}: {error}",
                frame_type=FRAME_TYPE_NAMES.get(frame_type, str(frame_type)),
                peer_node=node_id,
                error=str(e),
            )
            return False
        return True

    def _make_hello(self, incarnation: int) -> Hello:
        return Hello(
            cluster_id=self.config.cluster_id,
            node_id=self.config.node_id,
            incarnation=incarnation,
            protocol=(PROTOCOL_MAJOR, PROTOCOL_MINOR),
            app_version=self.config.app_version,
            address=format_address(self.config.advertise_address),
            serializer=self.serializer.name,
            priority=self.config.priority,
            signing=self.config.security.signing,
            nonce=f"{self._rng.getrandbits(64):016x}",
        )
