"""
Fragmentation, reassembly and the interleaving of frames on a connection.

A message whose encoded body is larger than C{fragment_bytes} is cut by
L{Fragmenter} into L{Fragment}s that each carry the message id, their index,
the fragment count and the body's total size; L{Reassembler} puts them back
together whatever order they arrive in. A body over C{max_message_bytes} is
refused with L{clustron.errors.MessageTooLarge}.

L{Reassembler} is bounded in bytes and in messages. Space is reserved for a
message's whole body when its first fragment arrives, so messages admitted
always have room to complete; a message that does not fit is dropped (its
fragments are ignored until room frees up; the reliability layer
retransmits the whole message). An incomplete message is dropped when no
fragment of it arrived for C{timeout} seconds.

L{FairQueue} is the send-side scheduler: control frames (heartbeats,
acknowledgements) go in a priority lane that is always served first, and
other frames are served round-robin, one frame per stream per turn, so the
fragments of a large message interleave with other traffic instead of
holding it up.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from clustron.config import MessagingConfig, WireConfig
from clustron.errors import MessageTooLarge, ProtocolViolation, QueueFull
from clustron.messaging.interfaces import IFrameScheduler

log = Logger()

_DEFAULTS = MessagingConfig()
_WIRE_DEFAULTS = WireConfig()

#: Default bound of the bytes a L{Reassembler} reserves: two messages of the
#: largest size.
DEFAULT_MAX_PENDING_BYTES = 2 * _DEFAULTS.max_message_bytes

#: Default bound of the incomplete messages a L{Reassembler} holds.
DEFAULT_MAX_PENDING_MESSAGES = 1024

#: Default time, in seconds, an incomplete message may go without progress.
DEFAULT_REASSEMBLY_TIMEOUT = 30.0


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"fragment {name} must be an int >= {minimum}, not {value!r}")


@attrs.frozen
class Fragment:
    """
    One piece of a message's encoded body.

    @ivar msg_id: the message's id (string form).
    @ivar index: this piece's place, from 0.
    @ivar count: how many pieces the message has.
    @ivar total: the whole body's size in bytes.
    @ivar data: this piece's bytes.
    """

    msg_id: str
    index: int
    count: int
    total: int
    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.msg_id, str) or not self.msg_id:
            raise ValueError(f"fragment msg_id must be a non-empty str, not {self.msg_id!r}")
        _check_int("count", self.count, 1)
        _check_int("index", self.index, 0)
        _check_int("total", self.total, 0)
        if self.index >= self.count:
            raise ValueError(f"fragment index {self.index} is not below its count {self.count}")
        if not isinstance(self.data, bytes):
            raise ValueError(f"fragment data must be bytes, not {type(self.data).__name__}")
        if len(self.data) > self.total:
            raise ValueError(
                f"fragment holds {len(self.data)} bytes, more than the total {self.total}"
            )
        if self.count > 1 and not self.data:
            raise ValueError("a fragment of a message in several pieces must not be empty")

    @classmethod
    def from_wire(cls, obj: object) -> Fragment:
        """
        Read a fragment received from a peer: a dict with keys C{id},
        C{index}, C{count}, C{total} and C{data}.

        @raise ProtocolViolation: C{"bad_fragment"} naming what is wrong.
        """
        if not isinstance(obj, dict):
            raise ProtocolViolation("bad_fragment", f"not a dict: {type(obj).__name__}")
        try:
            return cls(obj["id"], obj["index"], obj["count"], obj["total"], obj["data"])
        except KeyError as e:
            raise ProtocolViolation("bad_fragment", f"missing key {e.args[0]!r}") from None
        except ValueError as e:
            raise ProtocolViolation("bad_fragment", str(e)) from None

    def to_wire(self) -> dict[str, object]:
        """
        @return: the dict L{from_wire} reads.
        """
        return {
            "id": self.msg_id,
            "index": self.index,
            "count": self.count,
            "total": self.total,
            "data": self.data,
        }


class Fragmenter:
    """
    Cuts encoded bodies into fragments of at most C{fragment_bytes}.
    """

    def __init__(
        self,
        fragment_bytes: int = _DEFAULTS.fragment_bytes,
        max_message_bytes: int = _DEFAULTS.max_message_bytes,
    ) -> None:
        """
        @param fragment_bytes: the largest fragment (C{messaging.fragment_bytes}).
        @param max_message_bytes: the largest body
            (C{messaging.max_message_bytes}).
        @raise ValueError: when a size is below 1.
        """
        if fragment_bytes < 1 or max_message_bytes < 1:
            raise ValueError(
                f"fragment_bytes ({fragment_bytes}) and max_message_bytes"
                f" ({max_message_bytes}) must be at least 1"
            )
        self.fragment_bytes = fragment_bytes
        self.max_message_bytes = max_message_bytes

    @classmethod
    def from_config(cls, messaging: MessagingConfig) -> Fragmenter:
        """
        @return: a fragmenter with the sizes of C{messaging}.
        """
        return cls(messaging.fragment_bytes, messaging.max_message_bytes)

    def check(self, msg_id: str, size: int) -> None:
        """
        Check a body's size before going to the trouble of sending it.

        @raise MessageTooLarge: when C{size} exceeds C{max_message_bytes}.
        """
        if size > self.max_message_bytes:
            raise MessageTooLarge(
                f"message {msg_id} is {size} bytes; the limit"
                f" (messaging.max_message_bytes) is {self.max_message_bytes} bytes"
            )

    def split(self, msg_id: str, body: bytes) -> list[Fragment]:
        """
        @return: the fragments of C{body}, in index order; one fragment when
            it fits in C{fragment_bytes} (an empty body gives one empty
            fragment).
        @raise MessageTooLarge: when C{body} exceeds C{max_message_bytes}.
        """
        self.check(msg_id, len(body))
        total = len(body)
        size = self.fragment_bytes
        count = max(1, -(-total // size))
        view = memoryview(body)
        return [
            Fragment(msg_id, index, count, total, bytes(view[index * size : (index + 1) * size]))
            for index in range(count)
        ]


class _Partial:
    __slots__ = ("count", "total", "pieces", "received", "timer")

    def __init__(self, count: int, total: int) -> None:
        self.count = count
        self.total = total
        self.pieces: dict[int, bytes] = {}
        self.received = 0
        self.timer: IDelayedCall | None = None


class Reassembler:
    """
    Reassembles fragmented bodies; see the module docstring.

    @ivar reserved: the bytes reserved by incomplete messages.
    @ivar dropped: messages dropped for lack of room (a metric).
    @ivar timed_out: incomplete messages dropped by the timeout (a metric).
    """

    def __init__(
        self,
        clock: IReactorTime,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        timeout: float = DEFAULT_REASSEMBLY_TIMEOUT,
        max_message_bytes: int = _DEFAULTS.max_message_bytes,
        max_pending_messages: int = DEFAULT_MAX_PENDING_MESSAGES,
    ) -> None:
        """
        @param clock: times out incomplete messages.
        @param max_pending_bytes: the most bytes incomplete messages reserve.
        @param timeout: seconds an incomplete message may go without a new
            fragment.
        @param max_message_bytes: the largest body accepted from a peer.
        @param max_pending_messages: the most incomplete messages held.
        @raise ValueError: when a bound is out of range, or
            C{max_pending_bytes} is below C{max_message_bytes} (the largest
            message could never be reassembled).
        """
        if timeout <= 0:
            raise ValueError(f"reassembly timeout must be positive, not {timeout}")
        if max_pending_messages < 1:
            raise ValueError(f"max_pending_messages must be at least 1, not {max_pending_messages}")
        if max_pending_bytes < max_message_bytes:
            raise ValueError(
                f"max_pending_bytes ({max_pending_bytes}) must be at least max_message_bytes"
                f" ({max_message_bytes})"
            )
        self._clock = clock
        self._max_pending_bytes = max_pending_bytes
        self._timeout = timeout
        self._max_message_bytes = max_message_bytes
        self._max_pending_messages = max_pending_messages
        self._partials: dict[tuple[str, str], _Partial] = {}
        self.reserved = 0
        self.dropped = 0
        self.timed_out = 0

    def __len__(self) -> int:
        """
        @return: how many incomplete messages are held.
        """
        return len(self._partials)

    def add(self, source: str, fragment: Fragment) -> bytes | None:
        """
        Take one fragment that node C{source} sent.

        @return: the whole body when this fragment completes it, else None
            (also when the fragment is a duplicate, or its message was
            dropped for lack of room).
        @raise ProtocolViolation: when the fragment announces a body over
            C{max_message_bytes}, or contradicts earlier fragments of its
            message; the message is dropped.
        """
        key = (source, fragment.msg_id)
        if fragment.total > self._max_message_bytes:
            raise ProtocolViolation(
                "message_too_large",
                f"message {fragment.msg_id} from {source} is {fragment.total} bytes;"
                f" the limit (messaging.max_message_bytes) is {self._max_message_bytes}",
            )
        if fragment.count == 1:
            if len(fragment.data) != fragment.total:
                raise ProtocolViolation(
                    "bad_fragment",
                    f"message {fragment.msg_id} from {source}: a single fragment of"
                    f" {len(fragment.data)} bytes announces {fragment.total}",
                )
            return fragment.data
        if fragment.count > fragment.total:
            raise ProtocolViolation(
                "bad_fragment",
                f"message {fragment.msg_id} from {source}: {fragment.count} non-empty fragments"
                f" cannot make {fragment.total} bytes",
            )
        partial = self._partials.get(key)
        if partial is None:
            partial = self._admit(source, fragment)
            if partial is None:
                return None
        elif partial.count != fragment.count or partial.total != fragment.total:
            self._discard(key)
            raise ProtocolViolation(
                "bad_fragment",
                f"message {fragment.msg_id} from {source}: fragment {fragment.index} says"
                f" {fragment.count} fragments of {fragment.total} bytes, earlier ones said"
                f" {partial.count} of {partial.total}",
            )
        if fragment.index in partial.pieces:
            return None
        if partial.received + len(fragment.data) > partial.total:
            self._discard(key)
            raise ProtocolViolation(
                "bad_fragment",
                f"message {fragment.msg_id} from {source}: fragments exceed the announced"
                f" {partial.total} bytes",
            )
        partial.pieces[fragment.index] = fragment.data
        partial.received += len(fragment.data)
        if len(partial.pieces) < partial.count:
            assert partial.timer is not None
            partial.timer.reset(self._timeout)
            return None
        self._discard(key)
        if partial.received != partial.total:
            raise ProtocolViolation(
                "bad_fragment",
                f"message {fragment.msg_id} from {source}: fragments hold {partial.received}"
                f" bytes, the announced total is {partial.total}",
            )
        return b"".join(partial.pieces[index] for index in range(partial.count))

    def forget(self, source: str) -> int:
        """
        Drop every incomplete message from C{source} (it left).

        @return: how many were dropped.
        """
        keys = [key for key in self._partials if key[0] == source]
        for key in keys:
            self._discard(key)
        return len(keys)

    def stop(self) -> None:
        """
        Drop every incomplete message and cancel every timer.
        """
        for key in list(self._partials):
            self._discard(key)

    def _admit(self, source: str, fragment: Fragment) -> _Partial | None:
        if (
            len(self._partials) >= self._max_pending_messages
            or self.reserved + fragment.total > self._max_pending_bytes
        ):
            self.dropped += 1
            log.warn(
                "dropped message {msg_id} from {source} ({total} bytes): reassembly is full"
                " ({messages} messages, {reserved} bytes reserved)",
                msg_id=fragment.msg_id,
                source=source,
                total=fragment.total,
                messages=len(self._partials),
                reserved=self.reserved,
            )
            return None
        key = (source, fragment.msg_id)
        partial = self._partials[key] = _Partial(fragment.count, fragment.total)
        self.reserved += fragment.total
        partial.timer = self._clock.callLater(self._timeout, self._expire, key)
        return partial

    def _expire(self, key: tuple[str, str]) -> None:
        partial = self._partials.get(key)
        if partial is None:
            return
        partial.timer = None
        self._discard(key)
        self.timed_out += 1
        log.info(
            "incomplete message {msg_id} from {source} timed out with {received} of"
            " {count} fragments",
            msg_id=key[1],
            source=key[0],
            received=len(partial.pieces),
            count=partial.count,
        )

    def _discard(self, key: tuple[str, str]) -> None:
        partial = self._partials.pop(key, None)
        if partial is None:
            return
        self.reserved -= partial.total
        if partial.timer is not None and partial.timer.active():
            partial.timer.cancel()
        partial.timer = None


@implementer(IFrameScheduler)
class FairQueue:
    """
    The outgoing frames of one connection; see the module docstring.

    The data lane holds at most C{max_frames} frames and C{max_bytes} bytes;
    the control lane has its own bounds, so a full data lane never keeps a
    heartbeat out.

    @ivar queued_frames: frames queued, both lanes.
    @ivar queued_bytes: bytes queued, both lanes.
    """

    def __init__(
        self,
        max_frames: int = _WIRE_DEFAULTS.send_queue_frames,
        max_bytes: int = _WIRE_DEFAULTS.send_queue_bytes,
        max_control_frames: int = 1024,
        max_control_bytes: int = 1048576,
    ) -> None:
        """
        @param max_frames: data lane frames (C{wire.send_queue_frames}).
        @param max_bytes: data lane bytes (C{wire.send_queue_bytes}).
        @param max_control_frames: control lane frames.
        @param max_control_bytes: control lane bytes.
        @raise ValueError: when a bound is below 1.
        """
        for name, value in (
            ("max_frames", max_frames),
            ("max_bytes", max_bytes),
            ("max_control_frames", max_control_frames),
            ("max_control_bytes", max_control_bytes),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._max_control_frames = max_control_frames
        self._max_control_bytes = max_control_bytes
        self._control: deque[bytes] = deque()
        self._control_bytes = 0
        self._streams: OrderedDict[Hashable, deque[bytes]] = OrderedDict()
        self._data_frames = 0
        self._data_bytes = 0

    @property
    def queued_frames(self) -> int:
        """
        Frames queued, both lanes.
        """
        return len(self._control) + self._data_frames

    @property
    def queued_bytes(self) -> int:
        """
        Bytes queued, both lanes.
        """
        return self._control_bytes + self._data_bytes

    def __len__(self) -> int:
        """
        @return: frames queued, both lanes.
        """
        return self.queued_frames

    def push(self, stream: Hashable, frame: bytes, control: bool = False) -> None:
        """
        Queue one frame on C{stream}, or on the control lane.

        @raise QueueFull: when it does not fit; nothing is queued.
        """
        if control:
            if (
                len(self._control) >= self._max_control_frames
                or self._control_bytes + len(frame) > self._max_control_bytes
            ):
                raise QueueFull(
                    f"control lane full: {len(self._control)} frames, {self._control_bytes}"
                    f" bytes queued; a frame of {len(frame)} bytes does not fit (limits"
                    f" {self._max_control_frames} frames, {self._max_control_bytes} bytes)"
                )
            self._control.append(frame)
            self._control_bytes += len(frame)
            return
        self.push_all(stream, [frame])

    def push_all(self, stream: Hashable, frames: Sequence[bytes]) -> None:
        """
        Queue C{frames} on C{stream}'s data lane, all or nothing.

        @raise QueueFull: when they do not all fit; nothing is queued.
        """
        size = sum(len(frame) for frame in frames)
        if (
            self._data_frames + len(frames) > self._max_frames
            or self._data_bytes + size > self._max_bytes
        ):
            raise QueueFull(
                f"send queue full: {self._data_frames} frames, {self._data_bytes} bytes queued;"
                f" {len(frames)} frames of {size} bytes do not fit (limits {self._max_frames}"
                f" frames, {self._max_bytes} bytes)"
            )
        if not frames:
            return
        queue = self._streams.get(stream)
        if queue is None:
            queue = self._streams[stream] = deque()
        queue.extend(frames)
        self._data_frames += len(frames)
        self._data_bytes += size

    def pop(self) -> bytes | None:
        """
        @return: the next frame: the oldest control frame if any, else the
            next frame of the next stream in turn; None when empty.
        """
        if self._control:
            frame = self._control.popleft()
            self._control_bytes -= len(frame)
            return frame
        if not self._streams:
            return None
        stream, queue = next(iter(self._streams.items()))
        frame = queue.popleft()
        if queue:
            self._streams.move_to_end(stream)
        else:
            del self._streams[stream]
        self._data_frames -= 1
        self._data_bytes -= len(frame)
        return frame

    def discard(self, stream: Hashable) -> int:
        """
        Drop every queued data frame of C{stream}.

        @return: how many were dropped.
        """
        queue = self._streams.pop(stream, None)
        if queue is None:
            return 0
        self._data_frames -= len(queue)
        self._data_bytes -= sum(len(frame) for frame in queue)
        return len(queue)
