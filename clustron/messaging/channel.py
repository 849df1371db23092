"""
The messaging layer of one node: the API behind C{ClusterNode.send},
C{request}, C{broadcast} and C{on_message}.

Every reliable message travels on a per-destination FIFO stream
(L{clustron.messaging.fifo}) with acknowledgements and retransmission
(L{clustron.messaging.reliability}) and duplicate filtering
(L{clustron.messaging.dedup}); on top of that stream sit causal order
(vector clocks, L{clustron.messaging.causal}) and total order (a sequencer
with a flush, L{clustron.messaging.total}). Envelopes larger than
C{messaging.fragment_bytes} are split into fragments that are paced out as
the connection drains, so heartbeats and small messages never wait behind a
large one.

Envelopes (the body of a MESSAGE frame)::

    {"type": "d", "id": ID, "f": [incarnation, stream, seq, first], "k": KIND, ...}
    {"type": "u", "id": ID, "k": KIND, ...}          unreliable
    {"type": "ack", "ids": [ID, ...]}
    (data envelopes may carry acknowledgements too: "a": [ID, ...])
    {"type": "frag", "id": ..., "index": ..., "count": ..., "total": ...,
     "data": base64, "s": SERIALIZER}

Kinds: C{m} (unicast send or request), C{r} (response), C{b} (FIFO
broadcast), C{c} (causal broadcast), and the total-order kinds of
L{clustron.messaging.total}.
"""

from __future__ import annotations

import base64
import binascii
import collections
import functools
import heapq
import random
from collections.abc import Callable
from functools import partial
from types import CoroutineType
from typing import Any, cast

import attrs
from opentelemetry import trace as otel_trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from clustron.config import NodeConfig
from clustron.errors import (
    ClustronError,
    DeliveryFailed,
    MessageTooLarge,
    NotJoined,
    ProtocolViolation,
    QueueFull,
    RemoteError,
    RequestTimeout,
    SerializationError,
    UnknownMember,
)
from clustron.interfaces import ISerializer
from clustron.membership.view import LEAVING, View
from clustron.messaging import total
from clustron.messaging.causal import CausalBroadcaster, CausalReceiver, VectorClock
from clustron.messaging.dedup import DedupWindow
from clustron.messaging.fifo import FifoReceiver, FifoSender, FifoStamp
from clustron.messaging.fragments import Fragment, Fragmenter, Reassembler
from clustron.messaging.ids import MessageId, MessageIdSource
from clustron.messaging.message import Message, Position
from clustron.messaging.reliability import (
    ACK_TYPE,
    ReliableReceiver,
    ReliableSender,
    ack_envelope,
)
from clustron.observability import tracing
from clustron.observability.logs import NodeLogger
from clustron.observability.metrics import NodeMetrics, sample
from clustron.wire.protocol import Encoded

ORDERS = ("fifo", "causal", "total")
#: The most causal envelopes held for a view newer than this node's.
_MAX_CAUSAL_HELD = 1024
_MAX_REQUESTS = 65536
_MAX_TOPIC = 256
_MAX_BULK_FRAMES_PER_PEER = 4096
_MAX_ACK_BATCH = 256

#: The key of a data envelope that carries acknowledgements (piggybacked).
ACKS_KEY = "a"

Handler = Callable[[Message], Any]


class Messenger:
    """
    Sends and receives application messages for one node.

    @param transmit: C{transmit(node_id, envelope)} writes one MESSAGE frame
        to a connected peer, raising L{UnknownMember} or L{QueueFull} when it
        cannot.
    @param transmit_payload: C{transmit_payload(node_id, payload,
        serializer_id)} writes one MESSAGE frame of an envelope serialized
        already; by default C{transmit} with an L{Encoded} body.
    @param writable: C{writable(node_id)} says whether the connection to a
        peer can take more bulk data now.
    @param view: returns the current view (None before joining).
    """

    def __init__(
        self,
        *,
        node_id: str,
        incarnation: int,
        clock: IReactorTime,
        config: NodeConfig,
        serializer: ISerializer,
        serializers: dict[str, ISerializer],
        transmit: Callable[[str, Any], None],
        writable: Callable[[str], bool],
        view: Callable[[], View | None],
        rng: random.Random,
        metrics: NodeMetrics,
        transmit_payload: Callable[[str, bytes, int], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.log = NodeLogger(node_id, namespace=__name__)
        self.incarnation = incarnation
        self.clock = clock
        self.config = config
        self._serializer = serializer
        self._serializers = serializers
        self._transmit_frame = transmit
        self._transmit_payload = (
            transmit_payload
            if transmit_payload is not None
            else lambda to, payload, serializer_id: transmit(to, Encoded(payload, serializer_id))
        )
        self._writable = writable
        self._view = view
        self.metrics = metrics
        messaging = config.messaging
        self._ids = MessageIdSource(node_id, incarnation)
        self._sender = ReliableSender(
            clock,
            self._transmit,
            messaging.retry_initial,
            messaging.retry_max,
            rng,
            messaging.max_in_flight,
            messaging.max_in_flight,
        )
        # Acknowledgements of one reactor turn go out together, in one frame
        # per peer, right after it.
        self._dedup = DedupWindow(messaging.dedup_window)
        self._receiver = ReliableReceiver(
            clock,
            self._transmit,
            self._dedup,
            max_ack_batch=_MAX_ACK_BATCH,
            coalesce=True,
        )
        # Messages counted by envelope kind, labelled when scraped.
        metrics.message_labels = _labels
        self._sent_counts = metrics.messages_sent.counts
        self._received_counts = metrics.messages_received.counts
        self._unreliable_window = DedupWindow(messaging.dedup_window)
        self._fifo_out = FifoSender(incarnation)
        self._fifo_in = FifoReceiver()
        # Causal order: one key per process ("node_id:incarnation") in the
        # vector clocks. Every causal envelope carries the id of the view its
        # sender was in, and is judged against a view of this node's at least
        # as new (it is held until then): a member missing from that view
        # left, so its key is forgotten; one that is back is resumed and
        # asked for its baseline (see view_changed).
        self._causal_key = f"{node_id}:{incarnation}"
        self._causal_in = CausalReceiver()
        self._causal_out = CausalBroadcaster(self._causal_key, self._causal_in)
        self._causal_view: tuple[int, int] | None = None
        self._causal_members: frozenset[str] = frozenset()
        # The newest process incarnation seen in a key of each node (this
        # node's own is this process's: any other key of it is dead).
        self._causal_lives: dict[str, int] = {node_id: incarnation}
        # Nodes seen leaving of their own accord, with the (membership)
        # incarnation they left with: their processes up to it never come
        # back, so their keys are retired (left out of every clock).
        self._causal_departed: dict[str, int] = {}
        self._causal_held: collections.deque[_HeldCausal] = collections.deque()
        self._causal_held_from: collections.Counter[str] = collections.Counter()
        self._member_lives: dict[str, int] = {}
        self._peer_lives: dict[str, int] = {}
        self.total = total.TotalOrder(
            node_id,
            clock,
            self._send_control,
            self._deliver_total,
            flush_timeout=config.membership.join_timeout,
        )
        self._fragmenter = Fragmenter(messaging.fragment_bytes, messaging.max_message_bytes)
        self._reassembler = Reassembler(clock, max_message_bytes=messaging.max_message_bytes)
        self._bulk: dict[str, collections.deque[dict[str, Any]]] = {}
        self._handlers: dict[str, Handler] = {}
        # Requests waiting for replies: correlation -> (Deferred, deadline,
        # peer, sent at, topic, timeout). Their deadlines wait in a heap
        # watched by one timer (an entry whose request was answered is
        # dropped when it comes up, or when stale entries pile up).
        self._requests: dict[str, tuple[Deferred[Any], float, str, float, str, float]] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._deadline_timer: IDelayedCall | None = None
        self._deadline_at = 0.0
        # The active members of the last view checked (see _check_member).
        self._checked_view: View | None = None
        self._checked_active: frozenset[str] = frozenset()
        # Bound once: every message in flight holds one of these, and a
        # bound method made per message would be one more object for the
        # garbage collector to track while it is in flight.
        self._request_done = self._request_done  # type: ignore[method-assign]
        self._reply_done = self._reply_done  # type: ignore[method-assign]
        self._control_done = self._control_done  # type: ignore[method-assign]
        self._cancel_sent = self._cancel_sent  # type: ignore[method-assign]
        self._sent_done = self._sent_done  # type: ignore[method-assign]
        self._forget_request = self._forget_request  # type: ignore[method-assign]
        self._fragment_bytes = messaging.fragment_bytes
        self._max_message_bytes = messaging.max_message_bytes
        # An envelope up to this size travels as it is, in one frame.
        self._one_frame_bytes = min(messaging.fragment_bytes, messaging.max_message_bytes)
        self._wire_id = serializer.wire_id
        self._request_latency = metrics.request_latency
        self._members: frozenset[str] = frozenset()
        self._running = True
        #: Observers of sends and deliveries (the testkit's checkers):
        #: callables taking (kind, fields).
        self.observers: list[Callable[[str, dict[str, Any]], None]] = []
        self.total.observers.append(self._observe_total)
        sample(
            metrics,
            "counter",
            "clustron_retransmissions",
            "Reliable messages sent again because no acknowledgement came in time.",
            lambda: self._sender.retransmissions,
        )
        sample(
            metrics,
            "counter",
            "clustron_duplicates_dropped",
            "Messages received again and dropped by the duplicate filter.",
            lambda: self._receiver.duplicates,
        )
        sample(
            metrics,
            "gauge",
            "clustron_messages_in_flight",
            "Reliable messages sent and not yet acknowledged, all peers.",
            lambda: sum(self._sender.in_flight(m) + self._sender.pending(m) for m in self._members),
        )
        sample(
            metrics,
            "gauge",
            "clustron_total_order_pending",
            "Total-order broadcasts of this node not yet delivered.",
            lambda: self.total.pending,
        )

    # -- the application API ---------------------------------------------------

    def on_message(self, topic: str, handler: Handler | None) -> None:
        """
        Call C{handler(message)} for every message on C{topic} (None removes
        the handler). For a request, the handler's return value (or the
        result of the Deferred it returns) is the reply; an exception is
        sent back as a L{RemoteError}.
        """
        if handler is None:
            self._handlers.pop(topic, None)
        else:
            self._handlers[topic] = handler

    def send(self, to: str, topic: str, body: Any, reliable: bool = True) -> Deferred[None]:
        """
        Fire-and-forget unicast.

        @return: a Deferred that fires once C{to} acknowledged the message
            (at once when unreliable); it fails with L{UnknownMember} when
            C{to} is not a member, L{DeliveryFailed} when C{to} dies or
            leaves first, L{MessageTooLarge} or L{QueueFull}.
        """
        if self._view() is not self._checked_view or to not in self._checked_active:
            try:
                self._check_member(to)
            except ClustronError as e:
                return fail(e)
        if type(topic) is not str or not topic or len(topic) > _MAX_TOPIC:
            self._check_topic(topic)
        if to == self.node_id:
            self._later(self._dispatch_local, "m", self._ids.next_id(), topic, body, None)
            return succeed(None)
        envelope = {"k": "m", "t": topic, "b": body}
        return self._send_keyed(to, self._ids.next_text(), envelope, reliable)

    def request(
        self, to: str, topic: str, body: Any, timeout: float | None = None
    ) -> Deferred[Any]:
        """
        Send a request and wait for the reply.

        @return: a Deferred firing with the reply body; it fails with
            L{RequestTimeout} after C{timeout} seconds
            (C{messaging.request_timeout} by default), L{RemoteError} when
            the handler raised, or L{UnknownMember}.
        """
        if self._view() is not self._checked_view or to not in self._checked_active:
            try:
                self._check_member(to)
            except ClustronError as e:
                return fail(e)
        if type(topic) is not str or not topic or len(topic) > _MAX_TOPIC:
            self._check_topic(topic)
        if len(self._requests) >= _MAX_REQUESTS:
            return fail(QueueFull(f"{len(self._requests)} requests are waiting for replies"))
        if timeout is None:
            timeout = self.config.messaging.request_timeout
        if to == self.node_id:
            msg_id = self._ids.next_id()
            correlation = str(msg_id)
        else:
            correlation = self._ids.next_text()
        d: Deferred[Any] = Deferred(partial(self._forget_request, correlation))
        carrier: dict[str, str] = {}
        if tracing.active():
            span = tracing.tracer.start_span(
                "clustron.request",
                kind=SpanKind.CLIENT,
                attributes={
                    "clustron.topic": topic,
                    "clustron.peer": to,
                    "clustron.message_id": correlation,
                },
            )
            tracing.inject(carrier, otel_trace.set_span_in_context(span))
            d.addBoth(_end_span, span)
        now = self.clock.seconds()
        deadline = now + timeout
        self._requests[correlation] = (d, deadline, to, now, topic, timeout)
        deadlines = self._deadlines
        heapq.heappush(deadlines, (deadline, correlation))
        if (
            self._deadline_timer is None
            or deadline < self._deadline_at
            or len(deadlines) > 2 * len(self._requests) + 64
        ):
            self._track_deadline(deadline)
        if to == self.node_id:
            self._later(self._dispatch_local, "m", msg_id, topic, body, correlation)
            return d
        envelope = {"k": "m", "t": topic, "b": body, "rq": True}
        if carrier:
            envelope["tc"] = carrier
        try:
            self._send_reliable(to, correlation, envelope, self._request_done, correlation)
        except ClustronError as e:
            self._request_failed(correlation, e)
        return d

    def broadcast(
        self, topic: str, body: Any, order: str = "fifo", reliable: bool = True
    ) -> Deferred[None]:
        """
        Send to every member of the current view, this node included.

        @param order: C{"fifo"} (per sender, in send order), C{"causal"}
            (after everything it causally depends on) or C{"total"} (one
            order for all members).
        @param reliable: when False, each member gets one try (FIFO only).
        @return: a Deferred that fires once every member that stayed in the
            view acknowledged it (C{fifo}, C{causal}) or once this node
            delivered it in the total order (C{total}).
        """
        if order not in ORDERS:
            return fail(ValueError(f"order must be one of {', '.join(ORDERS)}, not {order!r}"))
        if order != "fifo" and not reliable:
            return fail(ValueError(f"{order} order needs reliable delivery"))
        try:
            self._check_topic(topic)
            view = self._joined_view()
        except ClustronError as e:
            return fail(e)
        msg_id = self._ids.next_id()
        self._notify("broadcast", id=str(msg_id), order=order, topic=topic)
        carrier: dict[str, str] = {}
        if tracing.active():
            with tracing.span(
                "clustron.broadcast",
                kind=SpanKind.PRODUCER,
                topic=topic,
                order=order,
                message_id=str(msg_id),
            ):
                tracing.inject(carrier)
        if order == "total":
            try:
                self._check_size({"k": "tf", "t": topic, "b": body})
            except ClustronError as e:
                return fail(e)
            return self.total.broadcast(str(msg_id), topic, body, carrier or None)
        envelope: dict[str, Any] = {"k": "b" if order == "fifo" else "c", "t": topic, "b": body}
        if carrier:
            envelope["tc"] = carrier
        if order == "causal":
            stamp = self._causal_out.stamp()
            envelope["vc"] = stamp.to_wire()
            envelope["ck"] = self._causal_key
            envelope["vw"] = list(view.id)
            self._later(
                self._deliver_causal, self._causal_key, stamp, (self.node_id, msg_id, envelope)
            )
        else:
            self._later(self._dispatch_local, "b", msg_id, topic, body, None)
        sends = [
            self._send_envelope(member, msg_id, dict(envelope), reliable)
            for member in view.active_ids()
            if member != self.node_id
        ]
        if not sends:
            return succeed(None)
        from twisted.internet.defer import DeferredList

        def outcome(results: list[tuple[bool, Any]]) -> None:
            for ok, value in results:
                if not ok and not value.check(DeliveryFailed):
                    value.raiseException()

        return DeferredList(sends, consumeErrors=True).addCallback(outcome)

    # -- membership -------------------------------------------------------------------

    def view_changed(
        self,
        view: View | None,
        acting: bool,
        quorum: int | None = None,
        lives: dict[str, int | None] | None = None,
    ) -> None:
        """
        Track the members: fail what is outstanding to those who left and
        forget their streams.

        @param acting: whether this node coordinates the view with quorum.
        @param quorum: how many members (the coordinator included) make a
            quorum of C{view}; total-order positions commit once that many
            hold them (by default a majority of the view's active members).
        @param lives: the incarnation each member's process started with,
            where known: a member whose process restarted while it stayed in
            the view gets new streams (see L{_peer_restarted}).
        """
        members = frozenset(view.active_ids()) if view is not None else frozenset()
        in_view = view is not None and view.is_active_member(self.node_id)
        was_member = self.node_id in self._members
        # The members that (re)appeared: asked for their causal baseline.
        arrived: list[str] = []
        if in_view:
            assert view is not None
            incarnations = {m.node_id: m.incarnation for m in view.active_members()}
            arrived = sorted(
                node
                for node, incarnation in incarnations.items()
                if node != self.node_id
                and (not was_member or self._member_lives.get(node) != incarnation)
            )
            self._member_lives = incarnations
            gone_peers = sorted(self._members - members)
        else:
            # This node is out of the group, not they: keep the streams (what
            # they sent and this node acknowledged must still be delivered)
            # until it is back or they leave a view it is in.
            members = frozenset()
            gone_peers = []
        if lives is not None and in_view:
            known = self._peer_lives
            # A life not known at the moment (a new connection's first
            # heartbeat is still to come) keeps the one known before.
            current = {
                node: life if life is not None else known.get(node) for node, life in lives.items()
            }
            self._peer_lives = {node: life for node, life in current.items() if life is not None}
            for node, life in sorted(self._peer_lives.items()):
                before = known.get(node)
                if before is not None and life > before and node in members:
                    self._peer_restarted(node)
        for gone in gone_peers:
            self._sender.peer_left(gone)
            self._fifo_out.forget(gone)
            self._bulk.pop(gone, None)
            self._reassembler.forget(gone)
            for correlation, entry in list(self._requests.items()):
                if entry[2] == gone and self._requests.get(correlation) is entry:
                    del self._requests[correlation]
                    entry[0].errback(UnknownMember(f"{gone} left the view before replying"))
        self._members = members
        if in_view:
            assert view is not None
            # Streams from those who left are kept, not forgotten: a sender
            # that did not see this node leave carries on with its stream,
            # and what this node took of it must still be delivered.
            self._fifo_in.set_members(members)
            self._causal_view_changed(view)
            # Tell each member that (re)appeared where this node's causal
            # broadcasts to it begin (on the FIFO stream, before any of
            # them), and ask for its own baseline.
            for node in arrived:
                self._send_control(node, self._causal_baseline(request=True))
            self.total.view_changed(
                view.coordinator, view.epoch, members, acting, quorum, renewed=arrived
            )
            if not was_member:
                self.total.joined_view()
        else:
            # Out of the group: causal envelopes are held until it is back.
            self._causal_view = None
            if was_member:
                self.total.left_view()

    def _causal_view_changed(self, view: View) -> None:
        """
        Causal bookkeeping follows the views this node is in. Keys of
        members missing from the view, and earlier lives of members, are
        forgotten (a dependency on them can never be met: stop waiting);
        forgotten keys of members that are back are resumed (their baseline
        was asked for); envelopes held for this view are judged.
        """
        self._causal_view = view.id
        self._causal_members = frozenset(view.active_ids())
        receiver = self._causal_in
        known = receiver.known_keys()
        forgotten = receiver.forgotten_keys()
        lives = {
            node: life for node, life in self._causal_lives.items() if node in self._causal_members
        }
        lives[self.node_id] = self.incarnation
        for key in (*known, *forgotten):
            parsed = _key_life(key)
            if parsed is not None and parsed[1] > lives.get(parsed[0], -1):
                lives[parsed[0]] = parsed[1]
        self._causal_lives = lives
        listed = {m.node_id for m in view.members}
        departed = {
            node: life
            for node, life in self._causal_departed.items()
            if node in lives or node in listed
        }
        for member in view.members:
            if member.state == LEAVING and member.node_id != self.node_id:
                departed[member.node_id] = max(
                    member.incarnation, departed.get(member.node_id, member.incarnation)
                )
        self._causal_departed = departed
        for key in sorted(known):
            if not self._causal_live(key):
                self._forget_causal(key)
        for key in forgotten:
            if self._causal_dead(key):
                if not receiver.is_retired(key):
                    self._forget_causal(key)
            elif self._causal_live(key):
                receiver.resume(key)
        if self._causal_held:
            held, self._causal_held = self._causal_held, collections.deque()
            self._causal_held_from.clear()
            for item in held:
                if self._causal_dead(item.key):
                    continue
                if self._causal_ready(item):
                    self._judge_causal(item)
                else:
                    self._causal_held.append(item)
                    self._causal_held_from[item.key] += 1

    def _peer_restarted(self, node: str) -> None:
        """
        C{node}'s process restarted while it stayed in the view: what is in
        flight to it was for the process that died (it fails with
        L{DeliveryFailed}), and the stream to the new process starts a new
        generation. Carrying the old stream on would make the new process
        wait for good for messages the old one acknowledged out of order.
        """
        self.log.info("{peer} restarted: its streams start again", peer=node)
        self._sender.peer_restarted(node)
        self._fifo_out.forget(node)
        self._bulk.pop(node, None)
        self._reassembler.forget(node)

    def stop(self) -> None:
        """
        Fail everything outstanding; stop timers.
        """
        self._running = False
        self._causal_held.clear()
        self._causal_held_from.clear()
        self._sender.stop()
        self._receiver.stop()
        self._reassembler.stop()
        self.total.fail_pending(ClustronError("node stopped"))
        if self._deadline_timer is not None:
            if self._deadline_timer.active():
                self._deadline_timer.cancel()
            self._deadline_timer = None
        requests = list(self._requests.values())
        self._requests.clear()
        self._deadlines.clear()
        for entry in requests:
            entry[0].errback(ClustronError("node stopped"))

    # -- receiving ------------------------------------------------------------------------

    def frame_received(self, sender: str, frame_type: int, envelope: Any) -> None:
        """
        A MESSAGE frame from an established peer.

        @raise ProtocolViolation: when it is malformed.
        """
        if type(envelope) is not dict and not isinstance(envelope, dict):
            raise ProtocolViolation("malformed_message", "envelope is not a mapping")
        kind = envelope.get("type")
        if kind == "d":
            if ACKS_KEY in envelope:
                self._sender.handle_ack_ids(sender, envelope[ACKS_KEY])
            # A reliable (FIFO) data envelope: filter duplicates, order,
            # record and acknowledge (batched), then hand over what is
            # deliverable. Messages are handed to the application once the
            # envelope is recorded and its acknowledgement batched, so that
            # a reply sent by the handler carries it.
            receiver = self._receiver
            try:
                key: Any = envelope.get("id")
                try:
                    msg_id = MessageId.parse(key)
                except ValueError as e:
                    raise ProtocolViolation("bad_message_id", str(e)) from None
                if self._dedup.contains(msg_id) and receiver.check_duplicate(
                    sender, msg_id, key
                ):
                    return
                stamp = envelope.get("f")
                if type(stamp) is not list or len(stamp) != 4:
                    raise ProtocolViolation("malformed_message", "bad FIFO stamp")
                incarnation, stream, seq, first = stamp
                # The common case first (the next message of the current
                # stream, nothing buffered): delivered at once, without an
                # Arrival.
                if self._fifo_in.take_next(sender, incarnation, seq, stream, first):
                    receiver.record_taken(sender, msg_id, key)
                    self._dispatch(sender, msg_id, envelope)
                    return
                arrival = self._fifo_in.receive(
                    sender, incarnation, seq, (msg_id, envelope), stream, first
                )
                if not arrival.taken:
                    return
                receiver.record_taken(sender, msg_id, key)
                for delivered_id, delivered in arrival.deliver:
                    self._dispatch(sender, delivered_id, delivered)
            finally:
                # Acknowledgements not carried by a reply (piggybacked)
                # go out right after this turn.
                if receiver.batched:
                    receiver.flush_soon()
        elif kind == ACK_TYPE:
            self._sender.handle_ack(sender, envelope)
        elif kind == "u":
            if ACKS_KEY in envelope:
                self._sender.handle_ack_ids(sender, envelope[ACKS_KEY])
            msg_id = self._parse_id(envelope)
            if not self._unreliable_window.seen(msg_id):
                self._dispatch(sender, msg_id, envelope)
        elif kind == "frag":
            self._on_fragment(sender, envelope)
        else:
            raise ProtocolViolation("malformed_message", f"unknown envelope type {kind!r}")

    def bulk_writable(self, node_id: str) -> None:
        """
        The connection to C{node_id} drained: send waiting fragments.
        """
        self._pump(node_id)

    def _dispatch(self, sender: str, msg_id: MessageId, envelope: dict[str, Any]) -> None:
        kind = envelope.get("k")
        if kind == "m":
            # The common case, as below.
            topic = envelope.get("t")
            if type(topic) is not str or len(topic) > _MAX_TOPIC:
                raise ProtocolViolation("malformed_message", "bad topic")
            counts = self._received_counts
            counts["m"] = counts.get("m", 0) + 1
            self._handle(
                sender,
                msg_id,
                "m",
                topic,
                envelope.get("b"),
                envelope["id"] if envelope.get("rq") is True else None,
                None,
                envelope.get("tc"),
            )
            return
        if kind == "r":
            self._on_response(sender, envelope)
            return
        if not isinstance(kind, str):
            raise ProtocolViolation("malformed_message", "envelope kind is not a string")
        if kind in total.KINDS:
            self.total.received(sender, kind, envelope)
            return
        if kind == "cb":
            key, upto = envelope.get("ck"), envelope.get("n")
            if (
                not isinstance(upto, int)
                or isinstance(upto, bool)
                or not 0 <= upto < 2**62
                or not isinstance(key, str)
                or not self._is_causal_key(sender, key)
                or not isinstance(envelope.get("rq", False), bool)
            ):
                raise ProtocolViolation("malformed_message", "bad causal baseline")
            self._causal_received(
                _HeldCausal(sender, key, msg_id, envelope, None, _view_id(envelope))
            )
            return
        topic = envelope.get("t")
        if not isinstance(topic, str) or len(topic) > _MAX_TOPIC:
            raise ProtocolViolation("malformed_message", "bad topic")
        if kind in _KIND_LABELS:  # a peer's unknown kinds must not grow the dict
            counts = self._received_counts
            counts[kind] = counts.get(kind, 0) + 1
        if kind == "c":
            stamp = VectorClock.from_wire(envelope.get("vc"))
            key = envelope.get("ck")
            if not isinstance(key, str) or not self._is_causal_key(sender, key):
                raise ProtocolViolation("malformed_message", "bad causal key")
            if stamp.at(key) < 1:
                raise ProtocolViolation(
                    "bad_causal_stamp", f"the stamp of a broadcast from {key} does not count it"
                )
            self._causal_received(
                _HeldCausal(sender, key, msg_id, envelope, stamp, _view_id(envelope))
            )
            return
        if kind not in ("m", "b"):
            raise ProtocolViolation("malformed_message", f"unknown kind {kind!r}")
        correlation = str(msg_id) if envelope.get("rq") is True else None
        self._handle(
            sender, msg_id, kind, topic, envelope.get("b"), correlation, trace=envelope.get("tc")
        )

    def _dispatch_local(
        self, kind: str, msg_id: MessageId, topic: str, body: Any, correlation: str | None
    ) -> None:
        if correlation is not None:
            # A request to this node itself: answer it directly.
            self._invoke(self.node_id, msg_id, "m", topic, body, correlation).addBoth(
                lambda result: self._resolve(correlation, result)
            )
            return
        self._handle(self.node_id, msg_id, kind, topic, body, None)

    @staticmethod
    def _is_causal_key(sender: str, key: Any) -> bool:
        # A sender speaks only for its own lives.
        if not isinstance(key, str):
            return False
        parsed = _key_life(key)
        return parsed is not None and parsed[0] == sender

    def _causal_live(self, key: str) -> bool:
        """
        @return: whether C{key} is the life of a member of this node's view
            (not an earlier life of one).
        """
        parsed = _key_life(key)
        if parsed is None:
            return False
        node, life = parsed
        if node == self.node_id:
            return key == self._causal_key
        return (
            node in self._causal_members
            and life >= self._causal_lives.get(node, life)
            and life > self._causal_departed.get(node, -1)
        )

    def _causal_dead(self, key: str) -> bool:
        """
        @return: whether C{key} is not a process's key, an earlier life of
            its node (a newer one was seen), or the life of a node that left
            the cluster of its own accord (it never comes back as the same
            process).
        """
        parsed = _key_life(key)
        if parsed is None:
            return True
        node, life = parsed
        if node == self.node_id:
            return key != self._causal_key
        return life < self._causal_lives.get(node, life) or life <= self._causal_departed.get(
            node, -1
        )

    def _forget_causal(self, key: str) -> None:
        """
        Stop waiting for C{key}: it left the view, or (retired for good) it
        is an earlier life of its node.
        """
        if self._causal_dead(key):
            self._release_causal(self._causal_in.retire(key))
        else:
            self._release_causal(self._causal_in.forget(key))

    def _note_causal_life(self, key: str) -> None:
        """
        A key was seen: when it is a newer life of its node, the earlier
        ones will never complete (that process is gone): forget them.
        """
        parsed = _key_life(key)
        if parsed is None:
            return
        node, life = parsed
        newest = self._causal_lives.get(node)
        if node == self.node_id or (newest is not None and life <= newest):
            return
        self._causal_lives[node] = life
        if newest is None:
            return
        receiver = self._causal_in
        for old in sorted({*receiver.known_keys(), *receiver.forgotten_keys()}):
            if old.startswith(node + ":") and self._causal_dead(old):
                if not receiver.is_retired(old):
                    self._forget_causal(old)

    def _causal_baseline(self, request: bool) -> dict[str, Any]:
        """
        @return: this node's causal baseline for a member: its broadcasts up
            to C{n} that the member has not received by now never will. With
            C{rq}, the member answers with its own.
        """
        assert self._causal_view is not None
        return {
            "k": "cb",
            "ck": self._causal_key,
            "n": self._causal_out.sent,
            "vw": list(self._causal_view),
            "rq": request,
        }

    def _causal_received(self, item: _HeldCausal) -> None:
        """
        A causal broadcast or baseline arrived: judge it now if it is ready
        (see L{_causal_ready}), or hold it until it is. What an earlier life
        of a member sent is dropped.
        """
        self._note_causal_life(item.key)
        if self._causal_dead(item.key):
            self.log.debug("causal envelope from {key} dropped: an earlier life", key=item.key)
            return
        if self._causal_ready(item):
            self._judge_causal(item)
            return
        if len(self._causal_held) >= _MAX_CAUSAL_HELD:
            oldest = self._causal_held.popleft()
            self._causal_held_from[oldest.key] -= 1
            self.log.warn(
                "too many causal envelopes held: dropped the oldest, from {key}", key=oldest.key
            )
        self._causal_held.append(item)
        self._causal_held_from[item.key] += 1

    def _causal_ready(self, item: _HeldCausal) -> bool:
        """
        @return: whether a causal envelope can be judged: this node is in a
            view at least as new as the one it was sent in, its sender is a
            member of that view, and nothing its sender sent before is held.
            (One from a member that left is held too: if that member comes
            back, what it sent is delivered then.)
        """
        return (
            self._causal_view is not None
            and item.view_id <= self._causal_view
            and not self._causal_held_from[item.key]
            and self._causal_live(item.key)
        )

    def _judge_causal(self, item: _HeldCausal) -> None:
        """
        Take a causal broadcast or baseline that is ready (see
        L{_causal_ready}). A dependency on a key that is not the life of a
        member of this node's view can never be met (its member left the
        view, or its process is gone): the receiver stops waiting for it.
        """
        sender, envelope, stamp, key = item.sender, item.envelope, item.stamp, item.key
        if stamp is None:
            self._release_causal(self._causal_in.skip(key, envelope["n"]))
            if envelope.get("rq") is True:
                self._send_control(sender, self._causal_baseline(request=False))
            return
        lives, members = self._causal_lives, self._causal_members
        for other in stamp:
            if other == key:
                continue
            parsed = _key_life(other)
            if parsed is not None and parsed[0] in members and lives.get(parsed[0]) == parsed[1]:
                continue  # the life of a member: wait for it if need be
            self._note_causal_life(other)
            if self._causal_live(other):
                continue
            # A dependency on a member that left (or on an earlier life):
            # it can never be met.
            receiver = self._causal_in
            if not receiver.is_forgotten(other) or (
                self._causal_dead(other) and not receiver.is_retired(other)
            ):
                self._forget_causal(other)
        self._deliver_causal(key, stamp, (sender, item.msg_id, envelope))

    def _deliver_causal(
        self, key: str, stamp: VectorClock, payload: tuple[str, MessageId, dict[str, Any]]
    ) -> None:
        arrival = self._causal_in.receive(key, stamp, payload)
        if not arrival.taken:
            self.log.warn("causal buffer full: dropped a broadcast from {key}", key=key)
        self._release_causal(arrival.deliver)

    def _release_causal(self, delivered: Any) -> None:
        for sender, msg_id, envelope in delivered:
            self._handle(
                sender,
                msg_id,
                "c",
                envelope["t"],
                envelope.get("b"),
                None,
                trace=envelope.get("tc"),
            )

    def _deliver_total(self, entry: total.Entry) -> None:
        try:
            msg_id = MessageId.parse(entry.id)
        except ValueError:
            raise ProtocolViolation("malformed_total", "bad message id") from None
        self._handle(
            entry.origin,
            msg_id,
            "t",
            entry.topic,
            entry.body,
            None,
            Position(entry.epoch, entry.seq),
            trace=entry.trace,
        )

    def _handle(
        self,
        sender: str,
        msg_id: MessageId,
        kind: str,
        topic: str,
        body: Any,
        correlation: str | None,
        position: Position | None = None,
        trace: Any = None,
    ) -> None:
        order = _ORDER_NAMES[kind]
        if self.observers:
            self._notify(
                "deliver",
                sender=sender,
                id=str(msg_id),
                order=order,
                topic=topic,
                position=position,
            )
        handler = self._handlers.get(topic)
        if handler is not None and not tracing.active():
            # self._call_handler(...), inline: once per message.
            message = _message(topic, body, sender, msg_id, correlation, order, position)
            try:
                result = handler(message)
            except BaseException:
                result = Failure()
            else:
                if type(result) is CoroutineType:
                    result = Deferred.fromCoroutine(result)
        elif tracing.active():
            with tracing.span(
                "clustron.handle",
                context=tracing.extract(trace) if trace is not None else None,
                kind=SpanKind.SERVER if correlation is not None else SpanKind.CONSUMER,
                topic=topic,
                order=order,
                sender=sender,
                message_id=str(msg_id),
            ):
                result = self._call_handler(
                    sender, msg_id, order, topic, body, correlation, position
                )
        else:
            result = self._call_handler(sender, msg_id, order, topic, body, correlation, position)
        if correlation is not None:
            if type(result) not in _PLAIN_TYPES and isinstance(result, Deferred):
                result.addBoth(self._reply_later, sender, correlation)
            else:
                self._reply(sender, correlation, result)
        elif result is None:
            pass
        elif type(result) is Deferred or isinstance(result, Deferred):
            result.addErrback(self._handler_failed, topic, msg_id)
        elif isinstance(result, Failure):
            self._handler_failed(result, topic, msg_id)

    def _call_handler(
        self,
        sender: str,
        msg_id: MessageId,
        order: str,
        topic: str,
        body: Any,
        correlation: str | None,
        position: Position | None,
    ) -> Any:
        """
        Call the handler of C{topic} with the message.

        @return: what it returned (a Deferred when it returned a coroutine),
            or a L{Failure} when it raised or there is none for a request.
        """
        handler = self._handlers.get(topic)
        if handler is None:
            if correlation is not None:
                return Failure(LookupError(f"no handler for topic {topic!r} on {self.node_id}"))
            self.log.debug(
                "no handler for topic {topic}; message {msg_id} dropped",
                topic=topic,
                msg_id=str(msg_id),
            )
            return None
        message = _message(topic, body, sender, msg_id, correlation, order, position)
        try:
            result = handler(message)
        except BaseException:
            return Failure()
        if type(result) is CoroutineType:
            return Deferred.fromCoroutine(result)
        return result

    def _handler_failed(self, failure: Failure, topic: str, msg_id: MessageId) -> None:
        self.log.failure(
            "handler for {topic} failed on {msg_id}",
            failure,
            topic=topic,
            msg_id=str(msg_id),
        )

    def _invoke(
        self,
        sender: str,
        msg_id: MessageId,
        kind: str,
        topic: str,
        body: Any,
        correlation: str | None,
        position: Position | None = None,
    ) -> Deferred[Any]:
        result = self._call_handler(
            sender, msg_id, _ORDER_NAMES[kind], topic, body, correlation, position
        )
        if isinstance(result, Deferred):
            return result
        if isinstance(result, Failure):
            return fail(result)
        return succeed(result)

    def _reply_later(self, result: Any, to: str, correlation: str) -> None:
        self._reply(to, correlation, result)

    def _reply(self, to: str, correlation: str, result: Any) -> None:
        if isinstance(result, Failure):
            error = result.value
            envelope = {
                "k": "r",
                "c": correlation,
                "ok": False,
                "et": type(error).__name__,
                "em": str(error)[:1000],
            }
        else:
            envelope = {"k": "r", "c": correlation, "ok": True, "b": result}
        if to == self.node_id:
            self._resolve(correlation, result)
            return
        try:
            self._send_reliable(to, self._ids.next_text(), envelope, self._reply_done, correlation)
            return
        except (MessageTooLarge, SerializationError) as e:
            # The reply itself cannot travel: tell the requester why.
            error = {
                "k": "r",
                "c": correlation,
                "ok": False,
                "et": type(e).__name__,
                "em": str(e)[:1000],
            }
        except ClustronError as e:
            self._reply_failed(to, correlation, e)
            return
        try:
            self._send_reliable(to, self._ids.next_text(), error, self._reply_done, correlation)
        except ClustronError as e:
            self._reply_failed(to, correlation, e)

    def _reply_done(self, context: tuple[str, FifoStamp, str], error: BaseException | None) -> None:
        to, stamp, correlation = context
        self._fifo_out.settle(to, stamp)
        if error is not None:
            self._reply_failed(to, correlation, error)

    def _reply_failed(self, to: str, correlation: str, error: BaseException) -> None:
        self.log.info(
            "could not send the reply to {peer} for {correlation}: {why}",
            peer=to,
            correlation=correlation,
            why=str(error),
        )

    def _on_response(self, sender: str, envelope: dict[str, Any]) -> None:
        correlation = envelope.get("c")
        if type(correlation) is not str:
            raise ProtocolViolation("malformed_message", "response without correlation id")
        entry = self._requests.get(correlation)
        if entry is None or entry[2] != sender:
            return
        if envelope.get("ok") is True:
            # self._resolve(correlation, envelope.get("b")), inline.
            del self._requests[correlation]
            self._request_latency.observe(self.clock.seconds() - entry[3])
            entry[0].callback(envelope.get("b"))
        else:
            self._resolve(
                correlation,
                Failure(RemoteError(str(envelope.get("et"))[:200], str(envelope.get("em"))[:1000])),
            )

    def _resolve(self, correlation: str, result: Any) -> None:
        entry = self._requests.pop(correlation, None)
        if entry is None:
            return
        # Its deadline stays in the heap until it comes up (or a compaction).
        self._request_latency.observe(self.clock.seconds() - entry[3])
        if isinstance(result, Failure):
            if not isinstance(result.value, RemoteError):
                result = Failure(RemoteError(type(result.value).__name__, str(result.value)))
            entry[0].errback(result)
        else:
            entry[0].callback(result)

    def _forget_request(self, correlation: str, d: Deferred[Any] | None = None) -> None:
        self._requests.pop(correlation, None)

    def _cancel_sent(self, d: Deferred[Any]) -> None:
        sent = cast(_Sent, d)
        self._sender.cancel(sent.to, sent.key)

    def _request_done(
        self, context: tuple[str, FifoStamp, str], error: BaseException | None
    ) -> None:
        """
        The outcome of a request's reliable send: a failure fails the
        request (success needs nothing: the reply will come, or the
        deadline).
        """
        to, stamp, correlation = context
        self._fifo_out.settle(to, stamp)
        if error is not None:
            self._request_failed(correlation, error)

    def _request_failed(self, correlation: str, error: BaseException) -> None:
        entry = self._requests.pop(correlation, None)
        if entry is not None:
            entry[0].errback(error)

    def _track_deadline(self, deadline: float) -> None:
        """
        Watch the deadline of a request just made (and pushed on the heap):
        one timer for all, set for the earliest.
        """
        deadlines = self._deadlines
        timer = self._deadline_timer
        if timer is None:
            self._deadline_at = deadline
            self._deadline_timer = self.clock.callLater(
                max(0.0, deadline - self.clock.seconds()), self._expire
            )
        elif deadline < self._deadline_at:
            self._deadline_at = deadline
            timer.reset(max(0.0, deadline - self.clock.seconds()))
        if len(deadlines) > 2 * len(self._requests) + 64:
            # Mostly answered requests: keep the heap as small as the live.
            requests = self._requests
            live = [
                item
                for item in deadlines
                if item[1] in requests and requests[item[1]][1] == item[0]
            ]
            heapq.heapify(live)
            self._deadlines = live

    def _expire(self) -> None:
        """
        Fail the requests whose deadline passed with L{RequestTimeout}.
        """
        self._deadline_timer = None
        deadlines = self._deadlines
        requests = self._requests
        cutoff = self.clock.seconds() + 1e-9  # floating point may fire a hair early
        while deadlines and deadlines[0][0] <= cutoff:
            deadline, correlation = heapq.heappop(deadlines)
            entry = requests.get(correlation)
            if entry is not None and entry[1] == deadline:
                del requests[correlation]
                entry[0].errback(
                    RequestTimeout(
                        f"no reply from {entry[2]} to {entry[4]!r} within {entry[5]} s"
                    )
                )
            deadlines = self._deadlines  # a callback may have compacted it
        while deadlines and (
            deadlines[0][1] not in requests or requests[deadlines[0][1]][1] != deadlines[0][0]
        ):
            heapq.heappop(deadlines)
        if deadlines and self._deadline_timer is None:
            self._deadline_at = deadlines[0][0]
            self._deadline_timer = self.clock.callLater(
                max(0.0, deadlines[0][0] - self.clock.seconds()), self._expire
            )

    # -- sending ----------------------------------------------------------------------------

    def _send_envelope(
        self, to: str, msg_id: MessageId, envelope: dict[str, Any], reliable: bool
    ) -> Deferred[None]:
        """
        Send an envelope to one peer (a copy of a broadcast, say).

        @return: a Deferred that fires once acknowledged (at once when
            unreliable), or fails as L{send} describes.
        """
        return self._send_keyed(to, str(msg_id), envelope, reliable)

    def _send_keyed(
        self, to: str, key: str, envelope: dict[str, Any], reliable: bool
    ) -> Deferred[None]:
        """
        L{_send_envelope} with the message id as text already.
        """
        if not reliable:
            return self._send_unreliable(to, key, envelope)
        d = _Sent(self._cancel_sent)
        d.to = to
        d.key = key
        try:
            self._send_reliable(to, key, envelope, self._sent_done, d)
        except ClustronError as e:
            return fail(e)
        return d

    def _send_reliable(
        self,
        to: str,
        key: str,
        envelope: dict[str, Any],
        done: Callable[[Any, BaseException | None], object],
        context: Any,
    ) -> None:
        """
        Stamp C{envelope} on the FIFO stream to C{to}, encode it once and
        hand it to the reliable sender, which reports the outcome by calling
        C{done((to, stamp, context), error)} (see L{ReliableSender.send}),
        or C{done(context, error)} with the stamp in C{context.stamp} when
        C{context} is a L{_Sent}; C{done} must settle the stamp.

        @raise ClustronError: when it cannot be encoded (L{MessageTooLarge},
            L{SerializationError}) or C{to}'s queue is full (L{QueueFull});
            C{done} is then never called.
        """
        envelope["id"] = key
        # Acknowledgements waiting for this peer ride along (piggybacking):
        # a reply acknowledges its request, the next request the reply. Only
        # on a message that leaves now: one waiting for an in-flight slot
        # must not hold acknowledgements back (the peer's window may be
        # waiting for them).
        receiver = self._receiver
        sender = self._sender
        acks = receiver.take(to) if receiver.batched and sender.leaves_now(to) else None
        if acks:
            envelope[ACKS_KEY] = acks
        fifo = self._fifo_out
        stamp = fifo.stamp(to)
        envelope["type"] = "d"
        envelope["f"] = stamp  # a named tuple: its wire form is the list of its numbers
        if type(context) is _Sent:
            context.stamp = stamp  # it holds its own, in one object fewer
        else:
            context = (to, stamp, context)
        try:
            # self._encode(envelope), with its common case inline.
            payload = self._serializer.dumps(envelope)
            if len(payload) > self._one_frame_bytes:
                wire: bytes | _EncodedEnvelope = self._encode(envelope, payload)
            else:
                wire = payload
            sender.send(to, key, wire, done, context)
        except ClustronError:
            fifo.settle(to, stamp)
            self._send_acks(to, acks)
            raise
        counts = self._sent_counts
        kind = envelope["k"]
        counts[kind] = counts.get(kind, 0) + 1

    def _sent_done(self, d: _Sent, error: BaseException | None) -> None:
        self._fifo_out.settle(d.to, d.stamp)
        if error is None:
            d.callback(None)
        else:
            d.errback(error)

    def _control_done(
        self, context: tuple[str, FifoStamp, None], error: BaseException | None
    ) -> None:
        self._fifo_out.settle(context[0], context[1])

    def _send_unreliable(self, to: str, key: str, envelope: dict[str, Any]) -> Deferred[None]:
        envelope["id"] = key
        receiver = self._receiver
        acks = receiver.take(to) if receiver.batched else None
        if acks:
            envelope[ACKS_KEY] = acks
        envelope["type"] = "u"
        try:
            wire = self._encode(envelope)
            counts = self._sent_counts
            kind = envelope["k"]
            counts[kind] = counts.get(kind, 0) + 1
            self._transmit(to, wire)
        except ClustronError as e:
            self._send_acks(to, acks)
            return fail(e)
        return succeed(None)

    def _send_control(self, to: str, envelope: dict[str, Any]) -> None:
        """
        Reliable FIFO send for protocol traffic (total order); failures are
        handled by the protocol itself (flush, re-forward).
        """
        if to == self.node_id:
            return
        try:
            self._send_reliable(to, self._ids.next_text(), dict(envelope), self._control_done, None)
        except ClustronError:
            pass

    def _encode(
        self, envelope: dict[str, Any], payload: bytes | None = None
    ) -> bytes | _EncodedEnvelope:
        """
        Serialize a data envelope once, for all its transmissions.

        @param payload: the envelope serialized already, if it was.
        @return: the serialized envelope, or, for an envelope that
            travels in fragments, the envelope with its serialized form.
        @raise MessageTooLarge: when it exceeds C{messaging.max_message_bytes}.
        @raise SerializationError: when the serializer cannot encode it.
        """
        if payload is None:
            payload = self._serializer.dumps(envelope)
        size = len(payload)
        if size > self._max_message_bytes:
            raise MessageTooLarge(
                f"message of {size} bytes exceeds"
                f" messaging.max_message_bytes={self._max_message_bytes}"
            )
        if size <= self._fragment_bytes:
            # Bytes, not an Encoded: bytes are no work for the garbage
            # collector while the message is in flight (see _transmit).
            return payload
        wire = _EncodedEnvelope(envelope)
        wire.payload = payload
        return wire

    def _transmit(self, to: str, envelope: Any) -> None:
        if type(envelope) is bytes:
            self._transmit_payload(to, envelope, self._wire_id)
            return
        payload = getattr(envelope, "payload", None)
        if payload is None:
            if envelope.get("type") not in ("d", "u"):
                self._transmit_frame(to, envelope)  # an acknowledgement
                return
            payload = self._serializer.dumps(envelope)
        if len(payload) > self._fragment_bytes:
            acks = envelope.get(ACKS_KEY)
            if acks:
                # Fragments take a while: the acknowledgements go ahead.
                self._transmit_frame(to, {"type": ACK_TYPE, "ids": acks})
            self._queue_fragments(to, str(envelope["id"]), payload)
            return
        self._transmit_payload(to, payload, self._wire_id)

    def _send_acks(self, to: str, acks: list[str] | None) -> None:
        """
        Send acknowledgements taken for an envelope that was not sent.
        """
        if not acks:
            return
        try:
            self._transmit_frame(to, ack_envelope(acks))
        except ClustronError as e:
            self.log.debug("acknowledgement to {peer} failed: {reason}", peer=to, reason=str(e))

    def _queue_fragments(self, to: str, msg_id: str, payload: bytes) -> None:
        queue = self._bulk.setdefault(to, collections.deque())
        fragments = self._fragmenter.split(msg_id, payload)
        if len(queue) + len(fragments) > _MAX_BULK_FRAMES_PER_PEER:
            raise QueueFull(f"bulk queue to {to} is full")
        for fragment in fragments:
            wire = fragment.to_wire()
            wire["data"] = base64.b64encode(fragment.data).decode("ascii")
            wire["type"] = "frag"
            wire["s"] = self._serializer.name
            queue.append(wire)
        self._pump(to)

    def _pump(self, to: str) -> None:
        queue = self._bulk.get(to)
        while queue and self._writable(to):
            wire = queue.popleft()
            try:
                self._transmit_frame(to, wire)
            except ClustronError:
                queue.clear()
                break
        if queue is not None and not queue:
            self._bulk.pop(to, None)

    def _on_fragment(self, sender: str, envelope: dict[str, Any]) -> None:
        data = envelope.get("data")
        serializer = self._serializers.get(str(envelope.get("s")))
        if not isinstance(data, str) or serializer is None:
            raise ProtocolViolation("bad_fragment", "bad data or serializer")
        try:
            raw = base64.b64decode(data.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise ProtocolViolation("bad_fragment", "data is not base64") from None
        wire = dict(envelope)
        wire["data"] = raw
        whole = self._reassembler.add(sender, Fragment.from_wire(wire))
        if whole is None:
            return
        try:
            inner = serializer.loads(whole)
        except SerializationError as e:
            raise ProtocolViolation("bad_fragment", str(e)) from None
        self.frame_received(sender, 0, inner)

    # -- checks and helpers -----------------------------------------------------------------

    def _joined_view(self) -> View:
        view = self._view()
        if view is None or not view.is_active_member(self.node_id):
            raise NotJoined(f"{self.node_id} is not a member of a view yet")
        return view

    def _check_member(self, to: str) -> None:
        view = self._view()
        if view is not self._checked_view:
            # Views are immutable: their active members are worked out once
            # (and only while this node is one of them, so that the quick
            # check of send and request, `to in _checked_active`, implies it).
            self._checked_view = view
            self._checked_active = (
                frozenset(view.active_ids())
                if view is not None and view.is_active_member(self.node_id)
                else frozenset()
            )
        active = self._checked_active
        if self.node_id not in active:
            raise NotJoined(f"{self.node_id} is not a member of a view yet")
        if to not in active:
            assert view is not None
            raise UnknownMember(f"{to!r} is not a member of view {view.epoch}.{view.seq}")

    def _check_topic(self, topic: str) -> None:
        if not isinstance(topic, str) or not topic or len(topic) > _MAX_TOPIC:
            raise ValueError(f"topic must be a non-empty string of at most {_MAX_TOPIC} characters")

    def _check_size(self, envelope: dict[str, Any]) -> None:
        size = len(self._serializer.dumps(envelope))
        limit = self.config.messaging.max_message_bytes
        if size > limit:
            raise MessageTooLarge(
                f"message of {size} bytes exceeds messaging.max_message_bytes={limit}"
            )

    def _parse_id(self, envelope: dict[str, Any]) -> MessageId:
        try:
            return MessageId.parse(envelope.get("id"))
        except ValueError as e:
            raise ProtocolViolation("bad_message_id", str(e)) from None

    def _later(self, f: Callable[..., Any], *args: Any) -> None:
        self.clock.callLater(0, f, *args)

    def _observe_total(self, kind: str, fields: dict[str, Any]) -> None:
        entry = fields["entry"]
        self._notify(
            f"total_{kind}",
            sender=entry.origin,
            id=entry.id,
            order="total",
            topic=entry.topic,
            position=Position(entry.epoch, entry.seq),
        )

    def _notify(self, kind: str, **fields: Any) -> None:
        if not self.observers:
            return
        fields["node_id"] = self.node_id
        fields["time"] = self.clock.seconds()
        for observer in self.observers:
            observer(kind, fields)


@attrs.frozen
class _HeldCausal:
    """
    A causal broadcast (with its C{stamp}) or baseline (C{stamp} None) from
    the life C{key} of C{sender}, and the id of the view it was sent in.
    """

    sender: str
    key: str
    msg_id: MessageId
    envelope: dict[str, Any]
    stamp: VectorClock | None
    view_id: tuple[int, int]


def _view_id(envelope: dict[str, Any]) -> tuple[int, int]:
    """
    @return: the view id (C{vw}) a causal envelope carries.
    @raise ProtocolViolation: when it is missing or not two counts.
    """
    value = envelope.get("vw")
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62 for v in value)
    ):
        raise ProtocolViolation("malformed_message", "bad view id in a causal envelope")
    return (value[0], value[1])


@functools.lru_cache(maxsize=4096)
def _key_life(key: str) -> tuple[str, int] | None:
    """
    @return: the node id and process incarnation a causal key
        (C{"node_id:incarnation"}) names, or None when it is not one.
    """
    node, _, life = key.partition(":")
    if not node or len(key) > 160 or not (life.isascii() and life.isdigit()) or len(life) > 20:
        return None
    return (node, int(life))


def _end_span(result: Any, span: Any) -> Any:
    """
    End a request's span with the outcome of its Deferred.
    """
    if isinstance(result, Failure):
        span.record_exception(result.value)
        span.set_status(Status(StatusCode.ERROR, type(result.value).__name__))
    span.end()
    return result


_ORDER_NAMES = {"m": "unicast", "b": "fifo", "c": "causal", "t": "total"}

#: Types a handler's result may have that are certainly not Deferreds
#: (isinstance against Deferred, a generic class, costs an ABC check).
_PLAIN_TYPES = frozenset({type(None), str, bytes, int, float, bool, list, dict, tuple})


def _message(
    topic: str,
    body: Any,
    sender: str,
    msg_id: MessageId,
    correlation: str | None,
    order: str,
    position: Position | None,
) -> Message:
    """
    The L{Message} a handler receives, made without running its attrs
    validators (which cost more than the rest of delivering a message):
    the values were checked on the way here, but for the one rule a peer
    could break, checked here as L{Message} does.

    @raise ValueError: when the id was not issued by C{sender}.
    """
    if msg_id.node_id != sender:
        raise ValueError(f"message id {msg_id} was not issued by its sender {sender!r}")
    if type(topic) is not str or not topic:
        raise ValueError(f"message topic must be a non-empty str, not {topic!r}")
    message = object.__new__(Message)
    setattr_ = object.__setattr__
    setattr_(message, "topic", topic)
    setattr_(message, "body", body)
    setattr_(message, "sender", sender)
    setattr_(message, "id", msg_id)
    setattr_(message, "correlation_id", correlation)
    setattr_(message, "order", order)
    setattr_(message, "position", position)
    return message


_KIND_LABELS = {
    "m": ("message", "unicast"),
    "b": ("message", "fifo"),
    "c": ("message", "causal"),
    "r": ("reply", "unicast"),
    total.FORWARD: ("message", "total"),
}


class _Sent(Deferred):  # type: ignore[type-arg]
    """
    The Deferred of a reliable send, holding what settling the send needs
    (its destination, id and FIFO stamp), so that a message in flight is
    fewer objects for the garbage collector to track.
    """

    __slots__ = ("to", "key", "stamp")

    to: str
    key: str
    stamp: FifoStamp


class _EncodedEnvelope(dict):  # type: ignore[type-arg]
    """
    A data envelope with its serialized form (C{payload}), so that the
    first transmission and every retransmission reuse it.
    """

    __slots__ = ("payload",)

    payload: bytes


def _labels(kind: Any) -> tuple[str, str]:
    """
    The C{kind} and C{order} metric labels of an envelope kind.
    """
    if kind in _KIND_LABELS:
        return _KIND_LABELS[kind]
    if kind == total.SEQUENCED:
        return ("control", "total")
    return ("control", "none")
