"""
The Twisted protocol of one peer connection.

This is the only place above the transport plugins that touches a Twisted
transport. A L{PeerProtocol} sends its HELLO as soon as it is connected,
accepts nothing but HELLO or REJECT until the handshake completes (within
C{handshake_timeout}), and afterwards hands every decoded frame to its
L{PeerProtocolOwner}. Garbage, oversized lengths, bad checksums and protocol
violations close the connection, are logged with the reason, and counted.

Writes go through a small bounded queue: the protocol registers itself as a
streaming producer on its transport, and while the transport says its buffer
is full the frames wait here instead of piling up in the transport; when the
queue is full too, L{PeerProtocol.send} raises L{QueueFull}.
"""

from __future__ import annotations

import collections
from typing import Any, cast
from typing import Protocol as TypingProtocol

import attrs
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.tcp import Client as _TCPClient
from twisted.internet.tcp import Server as _TCPServer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from clustron.errors import (
    FrameError,
    ProtocolViolation,
    QueueFull,
    SerializationError,
)
from clustron.interfaces import ISerializer
from clustron.observability.metrics import NodeMetrics
from clustron.wire import framing
from clustron.wire.framing import FRAME_TYPE_NAMES, Frame, FrameDecoder, IIntegrity
from clustron.wire.handshake import Hello, Reject

log = Logger()

_LOST = Failure(ConnectionError("connection lost"))

#: Transports that L{PeerProtocol} writes to directly (see
#: L{PeerProtocol._write_through}): Twisted's TCP connections, exactly
#: (C{twisted.internet.tcp.Server} and C{Client}), not wrapped in TLS.
_WRITE_THROUGH_TYPES = frozenset((_TCPServer, _TCPClient))

#: The private state of those transports that L{PeerProtocol._write_through}
#: reads to know that nothing is buffered; a Twisted without any of it gets
#: plain C{transport.write}.
_WRITE_THROUGH_STATE = (
    "_tempDataLen",
    "offset",
    "dataBuffer",
    "connected",
    "disconnecting",
    "_writeDisconnected",
    "socket",
)

_HANDSHAKE_SERIALIZER_ID = 1  # HELLO and REJECT are always JSON.

#: The BYE reason of a connection closed because the pair keeps another one.
DUPLICATE_CONNECTION = "duplicate connection"


class Encoded:
    """
    A frame body serialized already, which L{PeerProtocol.send} frames as it
    is: a layer that must serialize a body anyway (to learn its size, say)
    hands this over instead of the body, so it is serialized only once.

    @ivar payload: the serialized body.
    @ivar serializer_id: the wire id of the serializer that produced it.
    """

    __slots__ = ("payload", "serializer_id")

    def __init__(self, payload: bytes, serializer_id: int) -> None:
        self.payload = payload
        self.serializer_id = serializer_id

    def __repr__(self) -> str:
        return f"Encoded({len(self.payload)} bytes, serializer {self.serializer_id})"


class _PeerTransport(TypingProtocol):
    """
    What a connected L{PeerProtocol} uses of its transport: an
    C{ITransport} that is also an C{IConsumer} (Twisted annotates
    C{Protocol.transport} as an optional C{ITransport} alone).
    """

    def write(self, data: bytes) -> None:
        """
        Write C{data} to the connection.
        """

    def loseConnection(self) -> None:  # noqa: N802
        """
        Close the connection once the written data is sent.
        """

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:  # noqa: N802
        """
        Register C{producer} to be paused and resumed by the transport.
        """

    def unregisterProducer(self) -> None:  # noqa: N802
        """
        Stop pausing and resuming the registered producer.
        """


class PeerProtocolOwner(TypingProtocol):
    """
    What a L{PeerProtocol} reports to (the L{clustron.wire.mesh.Mesh}).
    """

    local_hello: Hello
    metrics: NodeMetrics
    clock: IReactorTime
    handshake_timeout: float
    max_frame_bytes: int
    queue_frames: int
    queue_bytes: int

    def integrity_for(self, ours: Hello, theirs: Hello | None) -> IIntegrity:
        """
        The frame protection for a connection (before the handshake completes
        C{theirs} is None).
        """

    def serializer_by_id(self, wire_id: int) -> ISerializer | None:
        """
        The installed serializer with this wire id, if any.
        """

    def hello_received(self, protocol: PeerProtocol, hello: Hello) -> tuple[str, str] | None:
        """
        Judge a peer's HELLO: None to accept, or C{(reason, detail)} to refuse.
        """

    def handshake_complete(self, protocol: PeerProtocol) -> bool:
        """
        The handshake succeeded both ways; return False to close this
        connection as a duplicate.
        """

    def frame_received(self, protocol: PeerProtocol, frame_type: int, body: Any) -> None:
        """
        A decoded frame arrived on an established connection (unless the
        owner has a C{frame_handlers} dict, C{{frame_type: handler}}, whose
        handler for the frame's type the connection calls directly, as
        C{handler(peer_node_id, frame_type, body)}, from the handshake on).
        """

    def connection_closed(self, protocol: PeerProtocol, reason: str) -> None:
        """
        The connection is gone (for whatever reason).
        """

    def rejected_by_peer(self, protocol: PeerProtocol, reject: Reject) -> None:
        """
        The peer refused our HELLO.
        """

    def connection_writable(self, protocol: PeerProtocol) -> None:
        """
        The transport stopped pushing back and the queue is empty.
        """


@implementer(IPushProducer)
class PeerProtocol(Protocol):
    """
    One connection to one peer.

    @ivar initiated: whether this side dialled the connection.
    @ivar peer: the peer's L{Hello} once received, else None.
    @ivar established: whether the handshake completed and this connection
        is the one kept for the pair.
    @ivar dial_address: for outgoing connections, the C{(host, port)} dialled.
    @ivar bye_reason: the reason the peer gave in its BYE, if it sent one.
    @ivar rejection: the peer's REJECT, if it refused our HELLO.
    """

    def __init__(
        self,
        owner: PeerProtocolOwner,
        serializer: ISerializer,
        initiated: bool,
        dial_address: tuple[str, int] | None = None,
    ) -> None:
        self.owner = owner
        self.serializer = serializer
        self.initiated = initiated
        self.dial_address = dial_address
        self.peer: Hello | None = None
        self.inbound_host: str | None = None
        self.established = False
        self.closed = False
        self.close_reason = "connection lost"
        self.bye_reason: str | None = None
        self.rejection: Reject | None = None
        self._hello_sent = False
        self.local_hello: Hello = owner.local_hello
        self._handshake_integrity: IIntegrity = owner.integrity_for(owner.local_hello, None)
        self._integrity: IIntegrity = self._handshake_integrity
        self._encode = framing.frame_encoder(self._integrity)
        self._decoder = FrameDecoder(
            owner.max_frame_bytes, self._integrity, handshake_integrity=self._handshake_integrity
        )
        self._awaiting_proof = False
        self._timeout: IDelayedCall | None = None
        self._paused = False
        self._registered = False
        self._wrote_through = False  # see _write_through
        self._queue: collections.deque[bytes] = collections.deque()
        self._priority: collections.deque[bytes] = collections.deque()
        self._queued_bytes = 0
        # Set once established: the owner's handlers by frame type (if it
        # has them) and the peer's node id, to hand frames over directly.
        self._handlers: dict[int, Any] | None = None
        self._peer_id = ""
        # Per-frame counts, kept as plain numbers (see NodeMetrics).
        metrics = owner.metrics
        self._frames_sent = metrics.frames_sent.counts
        self._frames_received = metrics.frames_received.counts
        self._bytes_sent = metrics.bytes_sent
        self._bytes_received = metrics.bytes_received

    # -- Twisted callbacks ---------------------------------------------------

    def connectionMade(self) -> None:
        """
        Register as a producer, send our HELLO and start the handshake timer.
        """
        cast(_PeerTransport, self.transport).registerProducer(self, True)
        self._registered = True
        if (
            type(self.transport) in _WRITE_THROUGH_TYPES
            and not getattr(self.transport, "TLS", False)
            and all(hasattr(self.transport, name) for name in _WRITE_THROUGH_STATE)
        ):
            self._write = self._write_through  # type: ignore[method-assign]
        self._timeout = self.owner.clock.callLater(
            self.owner.handshake_timeout, self._handshake_timed_out
        )
        new_nonce = getattr(self.owner, "new_nonce", None)
        if new_nonce is not None:
            # A fresh nonce per connection binds signatures to it.
            self.local_hello = attrs.evolve(self.owner.local_hello, nonce=new_nonce())
        else:
            self.local_hello = self.owner.local_hello
        self._write_raw(
            framing.encode_frame(
                framing.HELLO,
                _handshake_json(self.local_hello.to_dict()),
                _HANDSHAKE_SERIALIZER_ID,
                self._handshake_integrity,
            ),
            framing.HELLO,
        )
        self._hello_sent = True

    def dataReceived(self, data: bytes) -> None:
        """
        Decode frames and act on each; close the connection on bad input.
        """
        if self.closed:
            return
        self._wrote_through = False
        self._bytes_received.value += len(data)
        try:
            frames = self._decoder.feed(data)
        except FrameError as e:
            self.owner.metrics.frame_errors.labels(e.reason).inc()
            self._drop(f"frame error: {e}", level="warn", reason_code=e.reason)
            return
        for frame in frames:
            if self.closed:
                return
            try:
                self._frame(frame)
            except ProtocolViolation as e:
                self.owner.metrics.protocol_violations.labels(e.reason).inc()
                self._drop(f"protocol violation: {e}", level="warn", reason_code=e.reason)
                return
            except Exception:
                # A bug above the wire must not escape into the reactor (or
                # leave this connection half-handled): log it with its
                # traceback, count it and close the connection.
                log.failure(
                    "error handling a {frame_type} frame from {peer_node}",
                    frame_type=FRAME_TYPE_NAMES.get(frame.frame_type, str(frame.frame_type)),
                    peer_node=self.peer.node_id if self.peer else None,
                )
                self.owner.metrics.protocol_violations.labels("internal_error").inc()
                self._drop("internal error", level="error", reason_code="internal_error")
                return

    def connectionLost(self, reason: Failure = _LOST) -> None:
        """
        Stop timers, forget queued frames and tell the owner.
        """
        was_closed = self.closed
        self.closed = True
        self._cancel_timeout()
        self._discard_queue()
        if not was_closed:
            self.close_reason = reason.getErrorMessage() or "connection lost"
        self.owner.connection_closed(self, self.close_reason)

    # -- IPushProducer -------------------------------------------------------

    def pauseProducing(self) -> None:
        """
        The transport's buffer is full: hold frames in our bounded queue.
        """
        self._paused = True

    def resumeProducing(self) -> None:
        """
        The transport drained: write what waited, then tell the owner the
        connection can take more.
        """
        self._paused = False
        self._flush()
        if self.writable and self.established:
            self.owner.connection_writable(self)

    @property
    def writable(self) -> bool:
        """
        Whether a frame sent now goes straight to the transport.
        """
        return not self.closed and not self._paused and not self._queue and not self._priority

    def stopProducing(self) -> None:
        """
        The transport is going away.
        """
        self._paused = True

    # -- sending -------------------------------------------------------------

    @property
    def queued_frames(self) -> int:
        """
        Frames waiting because the transport pushed back.
        """
        return len(self._queue) + len(self._priority)

    def send(self, frame_type: int, body: Any, priority: bool = False) -> None:
        """
        Serialize and send one frame on an established connection.

        @param body: plain data, or an L{Encoded} body (sent as it is).
        @param priority: control traffic (heartbeats) that overtakes queued
            frames when the transport pushes back.
        @raise QueueFull: when the transport pushes back and the bounded
            queue has no room.
        @raise SerializationError: when the body cannot be encoded.
        """
        if type(body) is Encoded:
            self.send_payload(frame_type, body.payload, body.serializer_id, priority)
        else:
            self.send_payload(
                frame_type, self.serializer.dumps(body), self.serializer.wire_id, priority
            )

    def send_payload(
        self, frame_type: int, payload: bytes, serializer_id: int, priority: bool = False
    ) -> None:
        """
        L{send} a body serialized already by the serializer of wire id
        C{serializer_id} (what an L{Encoded} body carries).

        @raise QueueFull: as L{send}.
        @raise SerializationError: when the frame would be too large.
        """
        if self.closed:
            raise QueueFull("connection is closed")
        data = self._encode(frame_type, payload, serializer_id)
        if len(data) - 4 > self.owner.max_frame_bytes:
            raise SerializationError(
                f"frame of {len(data) - 4} bytes exceeds "
                f"max_frame_bytes={self.owner.max_frame_bytes}"
            )
        if not self._paused and not self._queue and not self._priority:
            # The common case, as in _write_raw.
            counts = self._frames_sent
            counts[frame_type] = counts.get(frame_type, 0) + 1
            self._bytes_sent.value += len(data)
            self._write(data)
            return
        self.send_encoded(frame_type, data, priority)

    def send_encoded(self, frame_type: int, data: bytes, priority: bool = False) -> None:
        """
        Send an already-encoded frame (see L{send}).
        """
        if not self._paused and not self._queue and not self._priority:
            self._write_raw(data, frame_type)
            return
        if (
            self.queued_frames >= self.owner.queue_frames
            or self._queued_bytes + len(data) > self.owner.queue_bytes
        ):
            self.owner.metrics.send_queue_full.inc()
            raise QueueFull(
                f"send queue to {self.peer.node_id if self.peer else 'peer'} is full "
                f"({self.queued_frames} frames, {self._queued_bytes} bytes)"
            )
        (self._priority if priority else self._queue).append(data)
        self._queued_bytes += len(data)
        self.owner.metrics.send_queue_frames.inc()
        counts = self._frames_sent
        counts[frame_type] = counts.get(frame_type, 0) + 1
        if not self._paused:
            self._flush()

    def close(self, reason: str) -> None:
        """
        Say BYE with a reason and close the connection.
        """
        if self.closed:
            return
        if self.peer is not None:
            # Both HELLOs are through: the peer reads ours before this BYE,
            # and may have taken this connection as its own (see
            # DUPLICATE_CONNECTION), so tell it why it closes.
            try:
                self.send(framing.BYE, {"reason": reason})
            except (QueueFull, SerializationError):
                pass
        self.close_reason = reason
        self.closed = True
        self._cancel_timeout()
        self._flush(force=True)
        self._lose_connection()

    # -- internals -----------------------------------------------------------

    def _flush(self, force: bool = False) -> None:
        while (force or not self._paused) and (self._priority or self._queue):
            data = (self._priority or self._queue).popleft()
            self._queued_bytes -= len(data)
            self.owner.metrics.send_queue_frames.dec()
            self._bytes_sent.value += len(data)
            cast(_PeerTransport, self.transport).write(data)

    def _discard_queue(self) -> None:
        self.owner.metrics.send_queue_frames.dec(self.queued_frames)
        self._queue.clear()
        self._priority.clear()
        self._queued_bytes = 0

    def _lose_connection(self) -> None:
        # ITransport.loseConnection waits for a registered producer to be
        # unregistered: without this the connection would never close.
        if self._registered:
            self._registered = False
            cast(_PeerTransport, self.transport).unregisterProducer()
        cast(_PeerTransport, self.transport).loseConnection()

    def _write_raw(self, data: bytes, frame_type: int) -> None:
        counts = self._frames_sent
        counts[frame_type] = counts.get(frame_type, 0) + 1
        self._bytes_sent.value += len(data)
        self._write(data)

    def _write(self, data: bytes) -> None:
        # Replaced by _write_through on a plain TCP connection.
        self.transport.write(data)  # type: ignore[union-attr]

    def _write_through(self, data: bytes) -> None:
        """
        Write C{data} on a plain TCP transport: the first frame written
        after data came in on this connection goes straight to the socket
        when nothing waits in the transport's buffer (a reply, the next
        request: the common case of request/response), instead of waiting
        until the reactor's next turn finds the socket writable. It leaves
        the moment it is sent, not after the rest of the turn, and without
        two epoll registrations and a reactor wake-up. The frames after it
        (until data comes in again), whatever the socket does not take at
        once, and everything while anything is buffered go through the
        transport's own C{write}: a burst of frames is still coalesced into
        few system calls, the order is kept, and a broken connection is
        reported the usual way, from the transport's next C{doWrite}.
        """
        transport = self.transport
        if (
            transport._tempDataLen  # type: ignore[union-attr]
            or transport.offset != len(transport.dataBuffer)  # type: ignore[union-attr]
            or not transport.connected  # type: ignore[union-attr]
            or transport.disconnecting  # type: ignore[union-attr]
            or transport._writeDisconnected  # type: ignore[union-attr]
            or self._wrote_through
        ):
            transport.write(data)  # type: ignore[union-attr]
            return
        try:
            sent = transport.socket.send(data)  # type: ignore[union-attr]
        except OSError:
            # EAGAIN, ENOBUFS, or a broken connection: the transport's
            # write buffers it and its doWrite finds out which.
            sent = 0
        self._wrote_through = True
        if sent < len(data):
            transport.write(data[sent:])  # type: ignore[union-attr]

    def _frame(self, frame: Frame) -> None:
        frame_type = frame.frame_type
        counts = self._frames_received
        counts[frame_type] = counts.get(frame_type, 0) + 1
        if self.established and frame_type >= framing.CONTROL and frame_type != framing.PROOF:
            # The common case (CONTROL, HEARTBEAT, MESSAGE and unknown types
            # on an established connection), as below.
            serializer = self.serializer
            if frame.serializer_id == serializer.wire_id:
                try:
                    body = serializer.loads(frame.payload)
                except SerializationError as e:
                    raise ProtocolViolation("undecodable", str(e)) from None
            else:
                body = self._decode(frame)
            handlers = self._handlers
            if handlers is not None:
                handler = handlers.get(frame_type)
                if handler is not None:
                    handler(self._peer_id, frame_type, body)
                    return
            self.owner.frame_received(self, frame_type, body)
            return
        if frame_type == framing.REJECT:
            reject = Reject.from_dict(_handshake_loads(frame.payload, lenient=True))
            self.rejection = reject
            self.close_reason = f"rejected by peer: {reject.reason}: {reject.detail}"
            self.owner.rejected_by_peer(self, reject)
            self.closed = True
            self._cancel_timeout()
            self._lose_connection()
            return
        if self.peer is None:
            if frame_type != framing.HELLO:
                raise ProtocolViolation(
                    "before_handshake",
                    f"{FRAME_TYPE_NAMES.get(frame_type, frame_type)} frame before HELLO",
                )
            self._hello(Hello.from_dict(_handshake_loads(frame.payload)))
            return
        if frame_type == framing.HELLO:
            raise ProtocolViolation("duplicate_hello", "second HELLO on one connection")
        if frame_type == framing.PROOF:
            self._proof(_handshake_loads(frame.payload))
            return
        if frame_type == framing.BYE:
            body = self._decode(frame)
            reason = body.get("reason") if isinstance(body, dict) else None
            self.bye_reason = reason[:256] if isinstance(reason, str) else "?"
            self.close_reason = f"peer said bye: {self.bye_reason}"
            self.closed = True
            self._lose_connection()
            return
        if not self.established:
            raise ProtocolViolation("before_handshake", "frame before handshake completed")
        self.owner.frame_received(self, frame_type, self._decode(frame))

    def _decode(self, frame: Frame) -> Any:
        serializer = (
            self.serializer
            if frame.serializer_id == self.serializer.wire_id
            else self.owner.serializer_by_id(frame.serializer_id)
        )
        if serializer is None:
            raise ProtocolViolation(
                "unknown_serializer", f"serializer id {frame.serializer_id} is not installed"
            )
        try:
            return serializer.loads(frame.payload)
        except SerializationError as e:
            raise ProtocolViolation("undecodable", str(e)) from None

    def _hello(self, hello: Hello) -> None:
        refusal = self.owner.hello_received(self, hello)
        if refusal is not None:
            reason, detail = refusal
            cast(_PeerTransport, self.transport).write(
                framing.encode_frame(
                    framing.REJECT,
                    _handshake_json(Reject(reason, detail).to_dict()),
                    _HANDSHAKE_SERIALIZER_ID,
                    self._handshake_integrity,
                )
            )
            self.close_reason = f"refused peer: {reason}: {detail}"
            self.closed = True
            self._cancel_timeout()
            self._lose_connection()
            return
        self.peer = hello
        integrity = self.owner.integrity_for(self.local_hello, hello)
        self._integrity = integrity
        self._encode = framing.frame_encoder(integrity)
        self._decoder.set_integrity(integrity)
        if integrity.flag == framing.FLAG_HMAC:
            # Signed clusters: the peer must prove it holds a key before it
            # counts as connected (a replayed HELLO proves nothing).
            self._awaiting_proof = True
            self._write_raw(
                framing.encode_frame(
                    framing.PROOF,
                    _handshake_json({"a": self.local_hello.nonce, "b": hello.nonce}),
                    _HANDSHAKE_SERIALIZER_ID,
                    self._handshake_integrity,
                ),
                framing.PROOF,
            )
            return
        self._complete_handshake()

    def _proof(self, body: Any) -> None:
        if not self._awaiting_proof or self.peer is None:
            raise ProtocolViolation("unexpected_proof", "PROOF frame outside a signed handshake")
        if (
            not isinstance(body, dict)
            or body.get("a") != self.peer.nonce
            or body.get("b") != self.local_hello.nonce
        ):
            raise ProtocolViolation("bad_proof", "PROOF does not name this connection's nonces")
        self._awaiting_proof = False
        self._complete_handshake()

    def _complete_handshake(self) -> None:
        self._cancel_timeout()
        if self.owner.handshake_complete(self):
            self.established = True
            assert self.peer is not None
            self._peer_id = self.peer.node_id
            self._handlers = getattr(self.owner, "frame_handlers", None)
        else:
            self.close(DUPLICATE_CONNECTION)

    def _handshake_timed_out(self) -> None:
        self._timeout = None
        self.owner.metrics.protocol_violations.labels("handshake_timeout").inc()
        self._drop(
            f"no handshake within {self.owner.handshake_timeout} s",
            level="warn",
            reason_code="handshake_timeout",
        )

    def _drop(self, why: str, level: str, reason_code: str) -> None:
        peer = self.transport.getPeer() if self.transport else None
        getattr(log, level)(
            "closing connection from {address}: {why}",
            address=str(peer),
            why=why,
            reason=reason_code,
            peer_node=self.peer.node_id if self.peer else None,
        )
        self.close_reason = why
        self.closed = True
        self._cancel_timeout()
        self._discard_queue()
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self._lose_connection()

    def _cancel_timeout(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None


def _handshake_json(obj: dict[str, Any]) -> bytes:
    from clustron.serializers.json import json_serializer

    return json_serializer.dumps(obj)


def _handshake_loads(payload: bytes, lenient: bool = False) -> Any:
    from clustron.serializers.json import json_serializer

    try:
        return json_serializer.loads(payload)
    except SerializationError as e:
        if lenient:
            return None
        raise ProtocolViolation("malformed_hello", str(e)) from None
