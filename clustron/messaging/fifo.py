"""
FIFO ordering: per sender, per stream, delivery in send order without gaps.

A sender numbers the messages of each stream with L{FifoSender}: every
message carries a L{FifoStamp} of C{(incarnation, stream_id, seq, first)}.
C{seq} counts from 1 within the stream. C{stream_id} names one life of the
stream, so that a stream the sender forgot (its destination left) and later
starts again begins a new generation instead of reusing numbers;
C{incarnation} does the same across restarts of the sending process.
C{first} is the lowest C{seq} of the stream that is not yet settled
(acknowledged, or given up as undeliverable): the sender will never
transmit anything below it again.

L{FifoReceiver} keeps, per sender, the generation it follows, the next
C{seq} it expects and a reorder buffer:

  - a message of a newer generation (higher C{(incarnation, stream_id)})
    resets the sender's stream, dropping what was buffered of the old one;
    a message of an older generation is stale and dropped;
  - C{first} above the expected C{seq} means the sender gave up on what lies
    between (the reliable send failed, or this receiver forgot the sender
    and must pick the stream up where it stands): buffered messages below
    C{first} are delivered in order and the stream continues at C{first};
  - out-of-order messages are buffered, at most C{max_buffer} across all
    senders; when the buffer is full an out-of-order message is refused (not
    taken: the reliability layer does not acknowledge it and the sender
    retransmits). The message a stream expects next is never refused, so
    every stream always makes progress.

A sender that leaves this node's view is not forgotten: its stream, what
was buffered of it included, is kept until the sender resumes it or starts
a newer generation, or until the room is needed for a new sender
(L{FifoReceiver.set_members}). Whatever this receiver took was
acknowledged, and the sender never transmits an acknowledged message
again; a sender that did not remove this node from its own view (it was
cut off, or itself dropped from the group) carries on with the same
stream, and the C{first} of its next messages may still lie below messages
this receiver took before, out of order or even delivered. Had it dropped
them, the stream would wait for good for a message that never comes again.

The promise: a receiver delivers each stream's messages in C{seq} order,
each at most once, and skips a C{seq} only when its sender settled it
without this receiver taking it (a failed reliable send, which the sender
reports to its application).

Streams should be per destination, for unicasts and broadcasts alike (a
broadcast is one copy per member, each stamped on the stream to that
member): C{first} is tracked per stream, so a stream shared by several
destinations would make a member that joined later wait for messages that
were never sent to it. Use one L{FifoReceiver} per kind of stream.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, NamedTuple

from twisted.logger import Logger

from clustron.errors import ProtocolViolation
from clustron.messaging.arrival import (
    BUFFER_FULL,
    BUFFERED,
    DELIVERED,
    DUPLICATE,
    STALE,
    TOO_MANY_STREAMS,
    Arrival,
)

log = Logger()

#: Default bound of the number of streams a sender or receiver tracks.
DEFAULT_MAX_STREAMS = 4096

#: Default bound of a receiver's reorder buffer, in messages.
DEFAULT_MAX_BUFFER = 1024

#: Default bound of the messages of one stream a sender tracks as unsettled:
#: C{messaging.max_in_flight} in flight plus as many waiting.
DEFAULT_MAX_UNSETTLED = 2048


class FifoStamp(NamedTuple):
    """
    The position of one message in its sender's stream: a named tuple, so
    that it is also the stamp's wire form (a list of its four numbers).

    @ivar incarnation: the sending process's incarnation.
    @ivar stream_id: the generation of the stream within that incarnation.
    @ivar seq: the message's number in the stream, from 1.
    @ivar first: the lowest unsettled C{seq} of the stream when this message
        was stamped (at most C{seq}).
    """

    incarnation: int
    stream_id: int
    seq: int
    first: int = 1


_new_stamp = tuple.__new__


class _Outgoing:
    __slots__ = ("stream_id", "last", "low", "settled")

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.last = 0
        self.low = 0  # every seq <= low is settled
        self.settled: set[int] = set()  # settled seqs above low


class FifoSender:
    """
    Numbers the messages of each outgoing stream and tracks which of them
    are settled.

    The node calls L{settle} when the reliable send of a stamped message
    ends, whether it was acknowledged, failed or cancelled; that is what
    lets receivers skip messages that will never come.

    At most C{max_streams} streams are tracked; beyond that the least
    recently used one is forgotten (as by L{forget}). A forgotten stream
    that is used again starts a new generation, which makes receivers drop
    whatever of the old generation they had not delivered yet, so
    C{max_streams} should exceed the number of live destinations and the
    node should call L{forget} for a destination only once it left and its
    reliable sends were failed.
    """

    def __init__(
        self,
        incarnation: int,
        max_streams: int = DEFAULT_MAX_STREAMS,
        max_unsettled: int = DEFAULT_MAX_UNSETTLED,
    ) -> None:
        """
        @param incarnation: this process's incarnation.
        @param max_streams: the most streams tracked at once.
        @param max_unsettled: the most settled messages tracked above the
            oldest unsettled one, per stream; beyond it the oldest unsettled
            message is treated as settled (the reliable sender's own bounds
            keep this from happening when every send is settled).
        @raise ValueError: when a bound is below 1.
        """
        if max_streams < 1:
            raise ValueError(f"max_streams must be at least 1, not {max_streams}")
        if max_unsettled < 1:
            raise ValueError(f"max_unsettled must be at least 1, not {max_unsettled}")
        self.incarnation = incarnation
        self._max_streams = max_streams
        self._max_unsettled = max_unsettled
        self._next_stream_id = 1
        # Least recently used first.
        self._streams: OrderedDict[str, _Outgoing] = OrderedDict()

    def __len__(self) -> int:
        """
        @return: how many streams are tracked.
        """
        return len(self._streams)

    def stamp(self, stream: str) -> FifoStamp:
        """
        @param stream: the destination node id.
        @return: the stamp of the next message of C{stream}.
        """
        state = self._streams.get(stream)
        if state is None:
            if len(self._streams) >= self._max_streams:
                evicted, _ = self._streams.popitem(last=False)
                log.warn(
                    "FIFO sender forgot stream {stream}: more than {limit} streams",
                    stream=evicted,
                    limit=self._max_streams,
                )
            state = self._streams[stream] = _Outgoing(self._next_stream_id)
            self._next_stream_id += 1
        else:
            self._streams.move_to_end(stream)
        state.last += 1
        # FifoStamp(...), without its Python-level __new__.
        return _new_stamp(
            FifoStamp, (self.incarnation, state.stream_id, state.last, state.low + 1)
        )

    def settle(self, stream: str, stamp: FifoStamp) -> None:
        """
        The reliable send of the message stamped C{stamp} on C{stream}
        ended (acknowledged, failed or cancelled). Stamps of another
        generation or incarnation are ignored.
        """
        state = self._streams.get(stream)
        if (
            state is not None
            and not state.settled
            and stamp.seq == state.low + 1
            and stamp.seq <= state.last
            and stamp.stream_id == state.stream_id
            and stamp.incarnation == self.incarnation
        ):
            # The common case (the oldest unsettled message, nothing settled
            # above it): what the general case below comes to.
            state.low = stamp.seq
            return
        if (
            state is None
            or stamp.incarnation != self.incarnation
            or stamp.stream_id != state.stream_id
            or not state.low < stamp.seq <= state.last
        ):
            return
        state.settled.add(stamp.seq)
        if len(state.settled) > self._max_unsettled:
            log.warn(
                "FIFO stream {stream}: message {seq} was never settled; treating it as settled",
                stream=stream,
                seq=state.low + 1,
            )
            state.low += 1
            state.settled.discard(state.low)
        while state.low + 1 in state.settled:
            state.low += 1
            state.settled.remove(state.low)

    def first(self, stream: str) -> int:
        """
        @return: the lowest unsettled C{seq} of C{stream} (the next one to
            be stamped when all are settled); 1 for an unknown stream.
        """
        state = self._streams.get(stream)
        return state.low + 1 if state is not None else 1

    def forget(self, stream: str) -> None:
        """
        Stop tracking C{stream}; if it is used again it starts a new
        generation.
        """
        self._streams.pop(stream, None)


class _Incoming:
    __slots__ = ("generation", "next", "buffer")

    def __init__(self, generation: tuple[int, int], first: int) -> None:
        self.generation = generation
        self.next = first
        self.buffer: dict[int, Any] = {}


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ProtocolViolation("bad_fifo_stamp", f"{name} must be an int >= {minimum}: {value!r}")


class FifoReceiver:
    """
    Delivers each sender's stream in order, without duplicates and without
    gaps but those its sender gave up on; see the module docstring.
    """

    def __init__(
        self, max_buffer: int = DEFAULT_MAX_BUFFER, max_streams: int = DEFAULT_MAX_STREAMS
    ) -> None:
        """
        @param max_buffer: the most out-of-order messages buffered, all
            senders together.
        @param max_streams: the most senders tracked; a message from a new
            sender beyond it makes room by forgetting a sender that is not a
            member (see L{set_members}), and is refused when every tracked
            sender is one.
        @raise ValueError: when a bound is out of range.
        """
        if max_buffer < 0:
            raise ValueError(f"max_buffer must not be negative, not {max_buffer}")
        if max_streams < 1:
            raise ValueError(f"max_streams must be at least 1, not {max_streams}")
        self._max_buffer = max_buffer
        self._max_streams = max_streams
        self._streams: dict[str, _Incoming] = {}
        self._members: frozenset[str] = frozenset()
        # Tracked senders that are not members, in the order they became so.
        self._evictable: OrderedDict[str, None] = OrderedDict()
        self._buffered = 0
        #: How many sequence numbers were skipped because their sender gave
        #: them up (a metric).
        self.skipped = 0

    @property
    def buffered(self) -> int:
        """
        How many out-of-order messages wait, all senders together.
        """
        return self._buffered

    def expected(self, sender: str) -> int | None:
        """
        @return: the C{seq} expected next from C{sender}, or None when it is
            not tracked.
        """
        state = self._streams.get(sender)
        return state.next if state is not None else None

    def take_next(
        self, sender: str, incarnation: Any, seq: Any, stream_id: Any, first: Any
    ) -> bool:
        """
        The common case of L{receive}, without its L{Arrival}: when the
        message is the next one of C{sender}'s current stream and nothing is
        buffered, take it (the caller delivers it at once) and return True;
        otherwise change nothing and return False (call L{receive}).
        """
        state = self._streams.get(sender)
        if (
            state is not None
            and seq == state.next
            and not state.buffer
            and type(seq) is int
            and type(first) is int
            and 1 <= first <= seq
            and type(incarnation) is int
            and type(stream_id) is int
            and (incarnation, stream_id) == state.generation
        ):
            state.next = seq + 1
            return True
        return False

    def receive(
        self,
        sender: str,
        incarnation: int,
        seq: int,
        payload: Any,
        stream_id: int = 0,
        first: int = 1,
    ) -> Arrival:
        """
        Offer one message.

        @param sender: the sending node.
        @param incarnation: its incarnation (from the L{FifoStamp}).
        @param seq: the message's number (from the L{FifoStamp}).
        @param payload: anything; handed back in L{Arrival.deliver}.
        @param stream_id: the stream generation (from the L{FifoStamp}).
        @param first: the lowest unsettled number (from the L{FifoStamp}).
        @return: what happened; C{deliver} lists the payloads now
            deliverable, in order (it may be non-empty whatever the reason,
            since C{first} can release buffered messages).
        @raise ProtocolViolation: when a number is not a valid int, or
            C{first} is above C{seq}.
        """
        if self.take_next(sender, incarnation, seq, stream_id, first):
            return Arrival(True, DELIVERED, (payload,))
        _check_count("incarnation", incarnation, 0)
        _check_count("stream_id", stream_id, 0)
        _check_count("seq", seq, 1)
        _check_count("first", first, 1)
        if first > seq:
            raise ProtocolViolation("bad_fifo_stamp", f"first ({first}) is above seq ({seq})")
        generation = (incarnation, stream_id)
        state = self._streams.get(sender)
        if state is None:
            if len(self._streams) >= self._max_streams and not self._evict():
                log.warn(
                    "FIFO receiver refused a message from {sender}: {limit} senders tracked",
                    sender=sender,
                    limit=self._max_streams,
                )
                return Arrival(False, TOO_MANY_STREAMS)
            state = self._streams[sender] = _Incoming(generation, first)
            if sender not in self._members:
                self._evictable[sender] = None
        elif generation < state.generation:
            return Arrival(True, STALE)
        elif generation > state.generation:
            log.info(
                "FIFO stream from {sender} restarted ({old} -> {new}); {dropped} buffered"
                " messages of the old stream dropped",
                sender=sender,
                old=state.generation,
                new=generation,
                dropped=len(state.buffer),
            )
            self._buffered -= len(state.buffer)
            state = self._streams[sender] = _Incoming(generation, first)
        deliver: list[Any] = []
        if first > state.next:
            self._skip_to(sender, state, first, deliver)
        if seq < state.next or seq in state.buffer:
            return Arrival(True, DUPLICATE, tuple(deliver))
        if seq > state.next:
            if self._buffered >= self._max_buffer:
                return Arrival(False, BUFFER_FULL, tuple(deliver))
            state.buffer[seq] = payload
            self._buffered += 1
            return Arrival(True, BUFFERED, tuple(deliver))
        deliver.append(payload)
        state.next += 1
        self._drain(state, deliver)
        return Arrival(True, DELIVERED, tuple(deliver))

    def set_members(self, members: Iterable[str]) -> None:
        """
        Tell which senders are members of this node's view. Their streams
        are never forgotten to make room. The stream of any other sender
        (one that left the view, or never was in it) is kept too, what is
        buffered of it included (see the module docstring), but it may be
        forgotten when room is needed for a new sender: those that left
        longest ago first.
        """
        members = frozenset(members)
        for sender in sorted(self._members - members):
            if sender in self._streams:
                self._evictable[sender] = None
        for sender in members:
            self._evictable.pop(sender, None)
        self._members = members

    def forget(self, sender: str) -> int:
        """
        Stop tracking C{sender} and drop what it had buffered. Should it
        send again, its stream is picked up at the C{first} of its next
        message, which may wait for messages this receiver took before and
        dropped here: use it only for a sender that will never resume its
        stream (one that left the view may: see L{set_members}).

        @return: how many buffered messages were dropped.
        """
        self._evictable.pop(sender, None)
        state = self._streams.pop(sender, None)
        if state is None:
            return 0
        self._buffered -= len(state.buffer)
        return len(state.buffer)

    def _evict(self) -> bool:
        """
        Forget the sender that has not been a member for the longest time,
        to make room.

        @return: whether there was one.
        """
        if not self._evictable:
            return False
        sender = next(iter(self._evictable))
        dropped = self.forget(sender)
        log.warn(
            "FIFO receiver forgot {sender}, not a member, to make room ({limit} senders"
            " tracked); {dropped} buffered messages dropped",
            sender=sender,
            limit=self._max_streams,
            dropped=dropped,
        )
        return True

    def _skip_to(self, sender: str, state: _Incoming, first: int, deliver: list[Any]) -> None:
        below = sorted(seq for seq in state.buffer if seq < first)
        skipped = first - state.next - len(below)
        for seq in below:
            deliver.append(state.buffer.pop(seq))
        self._buffered -= len(below)
        self.skipped += skipped
        log.info(
            "FIFO stream from {sender}: skipping {skipped} messages its sender gave up on"
            " ({start}..{end})",
            sender=sender,
            skipped=skipped,
            start=state.next,
            end=first - 1,
        )
        state.next = first
        self._drain(state, deliver)

    def _drain(self, state: _Incoming, deliver: list[Any]) -> None:
        while state.next in state.buffer:
            deliver.append(state.buffer.pop(state.next))
            self._buffered -= 1
            state.next += 1
