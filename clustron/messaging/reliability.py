"""
Reliable delivery: acknowledgements, retransmission and duplicate filtering.

L{ReliableSender} transmits an envelope at once and retransmits it, after
capped exponential backoff delays with equal jitter (as
L{clustron.backoff.Backoff} with C{jitter="equal"}: each delay is drawn from
the upper half of its ceiling, so the first retransmission never comes
sooner than half of C{retry_initial} and a loaded but healthy link is not
flooded with copies), until the destination acknowledges it, the
destination is declared dead or leaves (the send fails with
L{clustron.errors.DeliveryFailed}), or the caller cancels the send. Each
envelope draws its own delays; one timer per destination carries them all
out (see L{ReliableSender}). L{ReliableSender.submit} reports the outcome
with a Deferred; L{ReliableSender.send}, the messaging layer's fast path,
with a callback.

Flow control, per destination: at most C{max_in_flight} envelopes are
transmitted and unacknowledged at once. Envelopes submitted beyond that wait
in a queue of at most C{max_pending}, in submission order, and are first
transmitted as acknowledgements free slots; a submission beyond that fails
at once with L{clustron.errors.QueueFull}. So memory per destination is
bounded by C{max_in_flight + max_pending} envelopes.

L{ReliableReceiver} filters duplicates through an
L{IDuplicateFilter<clustron.messaging.interfaces.IDuplicateFilter>} and
acknowledges every envelope it took, and every duplicate again (the first
acknowledgement may have been lost). An envelope the layer above could not
take (its reorder buffer was full) is neither recorded nor acknowledged, so
its sender retransmits it later.

Acknowledgements are per message id and may be batched: an ack envelope is
C{{"type": "ack", "ids": ["n1:7:42", ...]}}. Ordered streams do not need
cumulative acks for correctness, and per-id acks stay correct whatever the
arrival order, so that is what this module does. The sender keys what is in
flight by the id's string form, so an acknowledgement is matched without
parsing it. A caller that filters and orders envelopes itself (the
messaging layer) uses L{ReliableReceiver.check_duplicate} and
L{ReliableReceiver.record_taken} around its ordering buffer, batches the
acknowledgements without a timer, and calls L{ReliableReceiver.flush_soon}
once done with a batch of input, unless a message of its own going back
took them along (L{ReliableReceiver.take}).
"""

from __future__ import annotations

import functools
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from clustron.config import MessagingConfig
from clustron.errors import ClustronError, DeliveryFailed, ProtocolViolation, QueueFull
from clustron.messaging.dedup import DedupWindow
from clustron.messaging.ids import MessageId
from clustron.messaging.interfaces import IDuplicateFilter, IReliableReceiver, IReliableSender

log = Logger()

_DEFAULTS = MessagingConfig()

#: The key of an envelope that holds its message id (string form).
ID_KEY = "id"

#: The C{"type"} of acknowledgement envelopes.
ACK_TYPE = "ack"

#: The most ids an acknowledgement envelope may carry.
MAX_ACK_IDS = 4096

Envelope = dict[str, Any]

#: How many recently parsed id strings L{parse_id} remembers.
PARSED_IDS_CACHED = 8192


@functools.lru_cache(maxsize=PARSED_IDS_CACHED)
def _parse_str(text: str) -> MessageId:
    return MessageId.parse(text)


def parse_id(text: object) -> MessageId:
    """
    Parse the string form of a message id, like L{MessageId.parse}, but
    remember the last L{PARSED_IDS_CACHED} ids parsed: every message id is
    read more than once on its way (when it is submitted and when it is
    acknowledged; when it is received and when it is ordered), and ids are
    immutable. Memory stays bounded; invalid ids are never remembered.

    @raise ValueError: as L{MessageId.parse}.
    """
    if type(text) is not str:
        return MessageId.parse(text)
    return _parse_str(text)


def ack_envelope(ids: Iterable[MessageId | str]) -> Envelope:
    """
    @return: an acknowledgement envelope for C{ids} (L{MessageId}s or
        their string forms).
    """
    return {"type": ACK_TYPE, "ids": [str(msg_id) for msg_id in ids]}


def parse_ack(envelope: object) -> list[MessageId]:
    """
    Read an acknowledgement envelope received from a peer.

    @return: the ids it acknowledges.
    @raise ProtocolViolation: C{"bad_ack"} when it is malformed.
    """
    if not isinstance(envelope, dict) or envelope.get("type") != ACK_TYPE:
        raise ProtocolViolation("bad_ack", "not a dict with type 'ack'")
    ids = envelope.get("ids")
    if not isinstance(ids, list):
        raise ProtocolViolation("bad_ack", "'ids' must be a list")
    if len(ids) > MAX_ACK_IDS:
        raise ProtocolViolation("bad_ack", f"{len(ids)} ids; the limit is {MAX_ACK_IDS}")
    try:
        return [parse_id(text) for text in ids]
    except ValueError as e:
        raise ProtocolViolation("bad_ack", str(e)) from None


def envelope_id(envelope: object) -> MessageId:
    """
    Read the message id of an envelope received from a peer.

    @raise ProtocolViolation: C{"bad_message_id"} when it has none or it is
        malformed.
    """
    if not isinstance(envelope, dict):
        raise ProtocolViolation("bad_message_id", "the envelope is not a dict")
    try:
        return parse_id(envelope.get(ID_KEY))
    except ValueError as e:
        raise ProtocolViolation("bad_message_id", str(e)) from None


class _Outgoing:
    __slots__ = ("to", "key", "envelope", "notify", "context", "due", "attempts", "done")

    def __init__(
        self,
        to: str,
        key: str,
        envelope: Any,
        notify: Callable[[Any, BaseException | None], object],
        context: Any,
    ) -> None:
        self.to = to
        self.key = key
        self.envelope = envelope
        self.notify = notify
        self.context = context
        self.due = 0.0  # when the next retransmission is due (in flight only)
        self.attempts = 0  # transmissions so far
        self.done = False


class _Peer:
    __slots__ = ("in_flight", "pending", "timer", "timer_at")

    def __init__(self) -> None:
        # Both in transmission (submission) order.
        self.in_flight: dict[str, _Outgoing] = {}
        self.pending: OrderedDict[str, _Outgoing] = OrderedDict()
        self.timer: IDelayedCall | None = None
        self.timer_at = 0.0


def fire_deferred(deferred: Deferred[None], error: BaseException | None) -> None:
    """
    Report the outcome of a send (see L{ReliableSender.send}) to a
    Deferred: fire it with None, or fail it with C{error}.
    """
    if error is None:
        deferred.callback(None)
    else:
        deferred.errback(error)


@implementer(IReliableSender)
class ReliableSender:
    """
    Sends envelopes until acknowledged; see the module docstring.

    The envelope is handed to C{send} unchanged on every transmission. If
    C{send} raises (no connection, full wire queue), the transmission counts
    as lost and the retransmissions carry on.

    Each envelope in flight has its own retransmission schedule (capped
    exponential backoff with equal jitter, drawn per envelope), but there
    is one timer per destination, not one per envelope: it fires when the
    earliest retransmission of that destination is due, retransmits every
    envelope then due (oldest first) and is set again for the next one.
    Acknowledgements do not touch it; a timer that finds nothing in flight
    lapses. A new envelope moves the timer earlier only when its first
    retransmission is due more than C{retry_initial / 4} before the timer
    fires, so a retransmission may come up to that much after its drawn
    delay (never before it).

    State is kept per destination only while envelopes to it are
    outstanding (or its timer has not lapsed yet); the node submits only to
    members of its view, which bounds the number of destinations.

    @ivar retransmissions: how many retransmissions were made (a metric).
    """

    def __init__(
        self,
        clock: IReactorTime,
        send: Callable[[str, Any], None],
        retry_initial: float = _DEFAULTS.retry_initial,
        retry_max: float = _DEFAULTS.retry_max,
        rng: random.Random | None = None,
        max_in_flight: int = _DEFAULTS.max_in_flight,
        max_pending: int = _DEFAULTS.max_in_flight,
    ) -> None:
        """
        @param clock: schedules retransmissions.
        @param send: C{send(to, envelope)} transmits once, best effort.
        @param retry_initial: the ceiling of the first retransmission delay
            (C{messaging.retry_initial}); each later ceiling doubles.
        @param retry_max: the largest ceiling (C{messaging.retry_max}).
        @param rng: draws the jitter; a fresh C{random.Random()} if None.
        @param max_in_flight: unacknowledged envelopes per destination
            (C{messaging.max_in_flight}).
        @param max_pending: envelopes per destination waiting for an
            in-flight slot; beyond it L{submit} fails with QueueFull.
        @raise ValueError: when a bound or delay is out of range.
        """
        if not (math.isfinite(retry_initial) and math.isfinite(retry_max)) or not (
            0 < retry_initial <= retry_max
        ):
            raise ValueError(
                f"need finite 0 < retry_initial ({retry_initial}) <= retry_max ({retry_max})"
            )
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        if max_pending < 0:
            raise ValueError(f"max_pending must not be negative, not {max_pending}")
        self._clock = clock
        self._send = send
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._slack = retry_initial / 4
        self._random = (rng if rng is not None else random.Random()).random
        self._max_in_flight = max_in_flight
        self._max_pending = max_pending
        self._peers: dict[str, _Peer] = {}
        self.retransmissions = 0

    @classmethod
    def from_config(
        cls,
        messaging: MessagingConfig,
        clock: IReactorTime,
        send: Callable[[str, Any], None],
        rng: random.Random | None = None,
    ) -> ReliableSender:
        """
        @return: a sender with the retry delays and in-flight bound of
            C{messaging}; the pending queue is as long as the in-flight bound.
        """
        return cls(
            clock,
            send,
            retry_initial=messaging.retry_initial,
            retry_max=messaging.retry_max,
            rng=rng,
            max_in_flight=messaging.max_in_flight,
            max_pending=messaging.max_in_flight,
        )

    def submit(self, to: str, envelope: Envelope) -> Deferred[None]:
        """
        Send C{envelope} to C{to} until acknowledged.

        @return: a Deferred that fires with None once acknowledged, fails
            with DeliveryFailed when C{to} is declared dead or leaves, or at
            once with QueueFull when C{max_in_flight} envelopes to C{to} are
            unacknowledged and C{max_pending} more wait. Cancelling it stops
            the retransmissions.
        @raise TypeError: when the envelope is not a dict.
        @raise ValueError: when the envelope has no valid C{"id"}, or that id
            is already being sent to C{to}.
        """
        if not isinstance(envelope, dict):
            raise TypeError(f"an envelope must be a dict, not {type(envelope).__name__}")
        try:
            key = str(parse_id(envelope.get(ID_KEY)))
        except ValueError as e:
            raise ValueError(f"envelope {ID_KEY!r}: {e}") from None
        def canceller(d: Deferred[None]) -> None:
            self.cancel(to, key)

        deferred: Deferred[None] = Deferred(canceller)
        try:
            self.send(to, key, envelope, fire_deferred, deferred)
        except QueueFull as e:
            return fail(e)
        return deferred

    def send(
        self,
        to: str,
        key: str,
        envelope: Any,
        notify: Callable[[Any, BaseException | None], object],
        context: Any = None,
    ) -> None:
        """
        Send C{envelope} to C{to} until acknowledged, and report the outcome
        by calling C{notify(context, error)} exactly once: C{error} is None
        once acknowledged, a L{DeliveryFailed} when C{to} is declared dead or
        leaves, or a C{CancelledError} after L{cancel}. This is L{submit}
        without a Deferred, for callers that have one of their own or need
        none.

        @param key: the message id (string form), unique among the
            envelopes outstanding to C{to}; acknowledgements name it.
        @raise QueueFull: when C{max_in_flight} envelopes to C{to} are
            unacknowledged and C{max_pending} more wait (C{notify} is then
            never called).
        @raise ValueError: when C{key} is already being sent to C{to}.
        """
        peer = self._peers.get(to)
        if peer is None:
            peer = self._peers[to] = _Peer()
        elif key in peer.in_flight or key in peer.pending:
            raise ValueError(f"message {key} is already being sent to {to}")
        outgoing = _Outgoing(to, key, envelope, notify, context)
        if len(peer.in_flight) < self._max_in_flight:
            peer.in_flight[key] = outgoing
            # self._first_transmission(peer, outgoing), with the common case
            # inline (once per message).
            outgoing.attempts = 1
            try:
                self._send(to, envelope)
            except Exception:
                self._transmit_failed(outgoing)
            timer = peer.timer
            if outgoing.done or timer is None:
                self._after_first(peer, outgoing)
                return
            now = self._clock.seconds()
            half = self._retry_initial / 2
            outgoing.due = due = now + half + self._random() * half
            if due < peer.timer_at - self._slack:
                peer.timer_at = due
                timer.reset(due - now)
        elif len(peer.pending) < self._max_pending:
            peer.pending[key] = outgoing
        else:
            raise QueueFull(
                f"message {key} to {to} refused: {len(peer.in_flight)} messages are"
                f" unacknowledged (max_in_flight) and {len(peer.pending)} more wait"
                " (max_pending)"
            )

    def ack(self, from_node: str, msg_id: MessageId | str) -> bool:
        """
        C{from_node} acknowledged C{msg_id} (a L{MessageId} or its string
        form): report its success.

        @return: whether it acknowledged an envelope in flight.
        """
        peer = self._peers.get(from_node)
        if peer is None:
            return False
        outgoing = peer.in_flight.pop(msg_id if type(msg_id) is str else str(msg_id), None)
        if outgoing is None:
            return False
        outgoing.done = True
        if peer.pending:
            self._promote(from_node, peer)
        outgoing.notify(outgoing.context, None)
        return True

    def handle_ack(self, from_node: str, envelope: object) -> int:
        """
        Apply an acknowledgement envelope (see L{ack_envelope}).

        @return: how many envelopes in flight it acknowledged.
        @raise ProtocolViolation: when it is malformed.
        """
        if not isinstance(envelope, dict) or envelope.get("type") != ACK_TYPE:
            raise ProtocolViolation("bad_ack", "not a dict with type 'ack'")
        return self.handle_ack_ids(from_node, envelope.get("ids"))

    def handle_ack_ids(self, from_node: str, ids: object) -> int:
        """
        Apply the list of acknowledged ids (string forms) of an
        acknowledgement envelope, or of a data envelope that carries
        acknowledgements.

        The ids are checked only for their shape (a list of at most
        L{MAX_ACK_IDS} strings): an id this node never sent acknowledges
        nothing, whatever its text.

        @return: how many envelopes in flight it acknowledged.
        @raise ProtocolViolation: C{"bad_ack"} when it is malformed.
        """
        if type(ids) is not list:
            raise ProtocolViolation("bad_ack", "'ids' must be a list")
        if len(ids) > MAX_ACK_IDS:
            raise ProtocolViolation("bad_ack", f"{len(ids)} ids; the limit is {MAX_ACK_IDS}")
        peer = self._peers.get(from_node)
        in_flight = peer.in_flight if peer is not None else {}
        acked: list[_Outgoing] = []
        for key in ids:
            if type(key) is not str:
                raise ProtocolViolation("bad_ack", f"not a message id: {str(key)[:80]!r}")
            outgoing = in_flight.pop(key, None)
            if outgoing is not None:
                outgoing.done = True
                acked.append(outgoing)
        if not acked:
            return 0
        if peer is not None and peer.pending:
            self._promote(from_node, peer)
        for outgoing in acked:
            outgoing.notify(outgoing.context, None)
        return len(acked)

    def cancel(self, to: str, key: str) -> bool:
        """
        Stop sending C{key} to C{to} (in flight or waiting); its outcome is
        reported as a C{CancelledError}.

        @return: whether it was outstanding.
        """
        peer = self._peers.get(to)
        if peer is None:
            return False
        outgoing = peer.in_flight.pop(key, None) or peer.pending.pop(key, None)
        if outgoing is None:
            return False
        outgoing.done = True
        if peer.pending:
            self._promote(to, peer)
        outgoing.notify(outgoing.context, CancelledError())
        return True

    def peer_dead(self, node_id: str) -> None:
        """
        Fail everything outstanding to C{node_id}: it was declared dead.
        """
        self._fail_peer(node_id, "was declared dead")

    def peer_left(self, node_id: str) -> None:
        """
        Fail everything outstanding to C{node_id}: it left the view.
        """
        self._fail_peer(node_id, "left the view")

    def peer_restarted(self, node_id: str) -> None:
        """
        Fail everything outstanding to C{node_id}: it was for a process of
        that node which has ended.
        """
        self._fail_peer(node_id, "restarted")

    def stop(self) -> None:
        """
        Fail everything outstanding to every peer and cancel all timers.
        """
        for node_id in list(self._peers):
            self._fail_peer(node_id, "was not reached before this node stopped")

    def in_flight(self, to: str) -> int:
        """
        @return: how many envelopes to C{to} wait for an acknowledgement.
        """
        peer = self._peers.get(to)
        return len(peer.in_flight) if peer is not None else 0

    def pending(self, to: str) -> int:
        """
        @return: how many envelopes to C{to} wait for an in-flight slot.
        """
        peer = self._peers.get(to)
        return len(peer.pending) if peer is not None else 0

    def leaves_now(self, to: str) -> bool:
        """
        @return: whether an envelope submitted to C{to} now would be
            transmitted at once (rather than wait for an in-flight slot).
        """
        peer = self._peers.get(to)
        return peer is None or (
            not peer.pending and len(peer.in_flight) < self._max_in_flight
        )

    def _transmit(self, outgoing: _Outgoing) -> None:
        outgoing.attempts += 1
        try:
            self._send(outgoing.to, outgoing.envelope)
        except Exception:
            self._transmit_failed(outgoing)

    def _transmit_failed(self, outgoing: _Outgoing) -> None:
        """
        Log the exception being handled, raised by a transmission of
        C{outgoing} (it counts as lost).
        """
        failure = Failure()
        if failure.check(ClustronError):
            log.debug(
                "transmission of {msg_id} to {peer} failed: {reason}",
                msg_id=outgoing.key,
                peer=outgoing.to,
                reason=failure.getErrorMessage(),
            )
        else:
            log.failure(
                "transmission of {msg_id} to {peer} raised",
                failure,
                msg_id=outgoing.key,
                peer=outgoing.to,
            )

    def _delay(self, attempts: int) -> float:
        """
        The delay after transmission number C{attempts} (from 1): drawn
        from the upper half of C{min(retry_max, retry_initial * 2 ** (attempts - 1))}.
        """
        if attempts > 64:
            ceiling = self._retry_max
        else:
            ceiling = min(self._retry_max, self._retry_initial * 2 ** (attempts - 1))
        return ceiling / 2 + self._random() * ceiling / 2

    def _first_transmission(self, peer: _Peer, outgoing: _Outgoing) -> None:
        self._transmit(outgoing)
        self._after_first(peer, outgoing)

    def _after_first(self, peer: _Peer, outgoing: _Outgoing) -> None:
        """
        Schedule the retransmission of C{outgoing}, just transmitted for
        the first time.
        """
        if outgoing.done:
            # send() led to the acknowledgement already (a loopback).
            if peer.timer is None and not peer.in_flight and not peer.pending:
                if self._peers.get(outgoing.to) is peer:
                    del self._peers[outgoing.to]
            return
        now = self._clock.seconds()
        # The first delay: drawn from the upper half of retry_initial.
        half = self._retry_initial / 2
        outgoing.due = due = now + half + self._random() * half
        timer = peer.timer
        if timer is None:
            if self._peers.get(outgoing.to) is peer:
                peer.timer_at = due
                peer.timer = self._clock.callLater(due - now, self._tick, outgoing.to, peer)
        elif due < peer.timer_at - self._slack:
            peer.timer_at = due
            timer.reset(due - now)

    def _tick(self, to: str, peer: _Peer) -> None:
        peer.timer = None
        if self._peers.get(to) is not peer:
            return
        if not peer.in_flight:
            if not peer.pending:
                del self._peers[to]
            return
        now = self._clock.seconds()
        # A hair of tolerance: the timer fires at the time computed for the
        # earliest due one, which floating point may put a hair before it.
        cutoff = now + 1e-9
        for outgoing in list(peer.in_flight.values()):
            if outgoing.done or outgoing.due > cutoff:
                continue
            self.retransmissions += 1
            log.debug(
                "retransmitting {msg_id} to {peer} (attempt {attempt})",
                msg_id=outgoing.key,
                peer=to,
                attempt=outgoing.attempts + 1,
            )
            self._transmit(outgoing)
            outgoing.due = self._clock.seconds() + self._delay(outgoing.attempts)
            if self._peers.get(to) is not peer:
                return  # the transmission led to the peer failing
        if peer.timer is None and peer.in_flight:
            due = min(outgoing.due for outgoing in peer.in_flight.values())
            now = self._clock.seconds()
            peer.timer_at = due
            peer.timer = self._clock.callLater(max(0.0, due - now), self._tick, to, peer)

    def _promote(self, to: str, peer: _Peer) -> None:
        while peer.pending and len(peer.in_flight) < self._max_in_flight:
            key, outgoing = peer.pending.popitem(last=False)
            peer.in_flight[key] = outgoing
            self._first_transmission(peer, outgoing)
            if self._peers.get(to) is not peer:
                return  # the transmission led to the peer failing

    def _fail_peer(self, node_id: str, why: str) -> None:
        peer = self._peers.pop(node_id, None)
        if peer is None:
            return
        if peer.timer is not None:
            if peer.timer.active():
                peer.timer.cancel()
            peer.timer = None
        failed = list(peer.in_flight.values()) + list(peer.pending.values())
        peer.in_flight.clear()
        peer.pending.clear()
        for outgoing in failed:
            outgoing.done = True
        if failed:
            log.info(
                "{count} messages to {peer} failed: it {why}",
                count=len(failed),
                peer=node_id,
                why=why,
            )
        for outgoing in failed:
            reason = f"message {outgoing.key} to {node_id} was not acknowledged: {node_id} {why}"
            outgoing.notify(outgoing.context, DeliveryFailed(reason))


@implementer(IReliableReceiver)
class ReliableReceiver:
    """
    Filters duplicates and acknowledges; see the module docstring.

    With C{ack_delay} 0 every acknowledgement is sent at once, one id per
    envelope, unless C{coalesce} is set: then the acknowledgements made
    while the reactor handles one batch of input are batched per peer and
    sent as soon as it is done (C{callLater(0)}), which costs no latency and
    saves a frame per message under load. With a positive C{ack_delay}
    acknowledgements are batched per peer and sent C{ack_delay} seconds
    after the first one was batched. In both batched modes a batch goes out
    at once when C{max_ack_batch} ids wait in total.

    @ivar duplicates: how many duplicates were filtered (a metric).
    @ivar batched: how many acknowledgements are batched, all peers
        together (read-only).
    """

    def __init__(
        self,
        clock: IReactorTime,
        send: Callable[[str, Envelope], None],
        window: IDuplicateFilter | None = None,
        ack_delay: float = 0.0,
        max_ack_batch: int = 64,
        coalesce: bool = False,
    ) -> None:
        """
        @param clock: schedules batched acknowledgements.
        @param send: C{send(to, envelope)} transmits an ack envelope once.
        @param window: the duplicate filter; a default L{DedupWindow} if None.
        @param ack_delay: how long an acknowledgement may wait to be batched.
        @param max_ack_batch: the most ids waiting to be acknowledged, all
            peers together (and so the most ids in one ack envelope).
        @param coalesce: with C{ack_delay} 0, batch the acknowledgements of
            one reactor turn instead of sending each at once.
        @raise ValueError: when a bound or delay is out of range.
        """
        if ack_delay < 0:
            raise ValueError(f"ack_delay must not be negative, not {ack_delay}")
        if not 1 <= max_ack_batch <= MAX_ACK_IDS:
            raise ValueError(f"max_ack_batch must be in 1..{MAX_ACK_IDS}, not {max_ack_batch}")
        self._clock = clock
        self._send = send
        self.window: IDuplicateFilter = window if window is not None else DedupWindow()
        # DedupWindow.record skips the lookup seen() repeats.
        self._record: Callable[[MessageId], object] = getattr(
            self.window, "record", self.window.seen
        )
        self._ack_delay = ack_delay
        self._immediate = ack_delay == 0 and not coalesce
        self._max_ack_batch = max_ack_batch
        self._batches: dict[str, list[str]] = {}
        self.batched = 0
        self._timer: IDelayedCall | None = None
        self.duplicates = 0

    def receive(
        self,
        from_node: str,
        envelope: Envelope,
        admit: Callable[[Envelope], bool] | None = None,
        acknowledge: bool = True,
    ) -> bool:
        """
        Handle an envelope C{from_node} transmitted.

        @param admit: hands a new envelope to the layer above; returns
            whether it was taken. When it returns False the envelope is
            neither recorded nor acknowledged.
        @param acknowledge: False for unreliable envelopes.
        @return: True when the envelope was new and taken.
        @raise ProtocolViolation: when the envelope has no valid id.
        """
        msg_id = envelope_id(envelope)
        return self.accept(from_node, msg_id, envelope[ID_KEY], envelope, admit, acknowledge)

    def accept(
        self,
        from_node: str,
        msg_id: MessageId,
        key: str,
        envelope: Any,
        admit: Callable[[Any], bool] | None = None,
        acknowledge: bool = True,
        flush: bool = True,
    ) -> bool:
        """
        L{receive} for an envelope whose id the caller parsed already.

        @param msg_id: the envelope's id.
        @param key: its string form (what the acknowledgement names).
        @param flush: when False (and acknowledgements are coalesced), the
            caller sees to it that L{flush_soon} is called once it is done
            with the batch of input this envelope came in, so that an
            acknowledgement it piggybacks on a message of its own (see
            L{take}) costs no timer at all.
        @return: True when the envelope was new and taken.
        """
        if self.window.contains(msg_id):
            self.duplicates += 1
            log.debug("duplicate {msg_id} from {peer}", msg_id=key, peer=from_node)
            if acknowledge:
                self._acknowledge(from_node, key, flush)
            return False
        if admit is not None and not admit(envelope):
            return False
        self.window.seen(msg_id)
        if acknowledge:
            self._acknowledge(from_node, key, flush)
        return True

    def check_duplicate(self, from_node: str, msg_id: MessageId, key: str) -> bool:
        """
        The first half of L{accept} for a reliable envelope, for callers
        that offer it to the layer above themselves: when C{msg_id} was
        received before, count the duplicate and acknowledge it again
        (batched; see L{flush_soon}).

        @param key: the string form of C{msg_id}.
        @return: whether it is a duplicate (then the caller drops it).
        """
        if not self.window.contains(msg_id):
            return False
        self.duplicates += 1
        log.debug("duplicate {msg_id} from {peer}", msg_id=key, peer=from_node)
        self._acknowledge(from_node, key, False)
        return True

    def record_taken(self, from_node: str, msg_id: MessageId, key: str) -> None:
        """
        The second half: the layer above took the new envelope C{msg_id}
        (after L{check_duplicate} said it is new); record it and batch its
        acknowledgement (see L{flush_soon}).
        """
        self._record(msg_id)
        if self._immediate:
            self._transmit(from_node, [key])
            return
        # _acknowledge(from_node, key, False), inline: once per message.
        batch = self._batches.get(from_node)
        if batch is None:
            self._batches[from_node] = [key]
        else:
            batch.append(key)
        self.batched += 1
        if self.batched >= self._max_ack_batch:
            self.flush()

    def flush(self) -> None:
        """
        Send every batched acknowledgement now.
        """
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        batches, self._batches, self.batched = self._batches, {}, 0
        for to, ids in batches.items():
            self._transmit(to, ids)

    def flush_soon(self) -> None:
        """
        Make sure batched acknowledgements go out: at once when a batch is
        full or batching is off, else when the batching delay passes (for
        coalesced acknowledgements, right after the current reactor turn).
        """
        if self._batches and self._timer is None:
            if self._immediate:
                self.flush()
            else:
                self._timer = self._clock.callLater(self._ack_delay, self._timed_flush)

    def take(self, to: str) -> list[str]:
        """
        Remove the acknowledgements batched for C{to} and return them, for
        the caller to carry in a message it is about to send there
        (piggybacking) instead of in an acknowledgement of their own. The
        caller must then deliver them as dependably as a batch would have
        been.

        @return: the ids (string forms), oldest first (empty when none
            wait).
        """
        ids = self._batches.pop(to, None)
        if not ids:
            return []
        self.batched -= len(ids)
        if not self._batches and self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        return ids

    def stop(self) -> None:
        """
        Cancel the batching timer and drop batched acknowledgements.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._batches.clear()
        self.batched = 0

    def _acknowledge(self, to: str, key: str, flush: bool = True) -> None:
        if self._immediate:
            self._transmit(to, [key])
            return
        batch = self._batches.get(to)
        if batch is None:
            self._batches[to] = [key]
        else:
            batch.append(key)
        self.batched += 1
        if self.batched >= self._max_ack_batch:
            self.flush()
        elif flush and self._timer is None:
            self._timer = self._clock.callLater(self._ack_delay, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush()

    def _transmit(self, to: str, ids: list[str]) -> None:
        try:
            self._send(to, ack_envelope(ids))
        except ClustronError as e:
            log.debug("acknowledgement to {peer} failed: {reason}", peer=to, reason=str(e))
        except Exception:
            log.failure("acknowledgement to {peer} raised", peer=to)
