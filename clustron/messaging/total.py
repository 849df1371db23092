"""
Total-order broadcast: a sequencer with a flush on coordinator change.

Members forward total-order messages to the acting coordinator, which gives
each one a position C{(epoch, seq)} and sends it to every member; members
deliver in position order. Every message between two nodes travels on the
reliable FIFO channel, so a member sees one coordinator's positions in
order and without gaps, as long as that coordinator lives.

When a new coordinator starts an epoch it runs a I{flush} before it
sequences anything: it asks every active member of its view for the
total-order messages it delivered recently (a bounded log) and where it
stopped, takes the longest prefix any of them holds, sends that prefix to
all (each member delivers what it misses), and only then opens the new
epoch. Senders keep every message they forwarded until they deliver it
themselves, and forward what is still undelivered again to each new
coordinator once its epoch opens; delivery is deduplicated by message id.

Promises: no two members deliver different messages at the same position
(only the one coordinator of an epoch assigns positions in it); members that
stay in the view deliver the same sequence (the flush gives every survivor
the longest prefix); nothing is delivered twice at one member (ids are
deduplicated). Positions are only assigned while the coordinator has
quorum.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from clustron.errors import ProtocolViolation, QueueFull
from clustron.observability.logs import NodeLogger

Position = tuple[int, int]

FORWARD = "tf"
SEQUENCED = "ts"
FLUSH_REQUEST = "tq"
FLUSH_REPLY = "tr"
OPEN = "to"
ALREADY = "tk"

#: How many epochs' coordinators a node remembers (to tell who may sequence).
_EPOCHS_REMEMBERED = 16

KINDS = frozenset({FORWARD, SEQUENCED, FLUSH_REQUEST, FLUSH_REPLY, OPEN, ALREADY})


def _is_position_number(value: Any) -> bool:
    """
    Whether a peer-sent C{value} is an epoch or sequence number.
    """
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62


@attrs.frozen
class Entry:
    """
    One sequenced message.
    """

    epoch: int
    seq: int
    id: str
    origin: str
    topic: str
    body: Any
    trace: dict[str, str] | None = None

    @property
    def position(self) -> Position:
        """
        C{(epoch, seq)}.
        """
        return (self.epoch, self.seq)

    def to_wire(self) -> list[Any]:
        """
        The entry as plain data.
        """
        return [self.epoch, self.seq, self.id, self.origin, self.topic, self.body, self.trace]

    @classmethod
    def from_wire(cls, data: Any) -> Entry:
        """
        Parse an entry received from a peer.

        @raise ProtocolViolation: when it is malformed.
        """
        if not isinstance(data, list) or len(data) != 7:
            raise ProtocolViolation("malformed_total", "bad total-order entry")
        epoch, seq, msg_id, origin, topic, body, trace = data
        if not (_is_position_number(epoch) and _is_position_number(seq)):
            raise ProtocolViolation("malformed_total", "bad position")
        if not all(isinstance(v, str) for v in (msg_id, origin, topic)):
            raise ProtocolViolation("malformed_total", "bad entry fields")
        if trace is not None and not isinstance(trace, dict):
            raise ProtocolViolation("malformed_total", "bad trace context")
        return cls(epoch, seq, msg_id, origin, topic, body, trace)


@attrs.define
class _Pending:
    id: str
    topic: str
    body: Any
    trace: dict[str, str] | None
    deferred: Deferred[None]


class TotalOrder:
    """
    One node's part of total-order broadcast (sender, member and, while it
    coordinates with quorum, sequencer).

    @param send: C{send(node_id, body)} on the reliable FIFO channel.
    @param deliver: C{deliver(entry)} hands a message to the application,
        in position order.
    """

    def __init__(
        self,
        node_id: str,
        clock: IReactorTime,
        send: Callable[[str, dict[str, Any]], None],
        deliver: Callable[[Entry], None],
        log_size: int = 4096,
        max_pending: int = 4096,
        flush_timeout: float = 2.0,
    ) -> None:
        self.node_id = node_id
        self.log = NodeLogger(node_id, namespace=__name__)
        self.clock = clock
        self._send = send
        self._deliver = deliver
        self._log: deque[Entry] = deque(maxlen=log_size)
        self._delivered_ids: OrderedDict[str, None] = OrderedDict()
        # Ids known to hold a position already (seen in a flush), even if
        # this node never delivered them: never sequenced again.
        self._sequenced_ids: OrderedDict[str, None] = OrderedDict()
        self._id_window = log_size * 4
        self._max_pending = max_pending
        self._flush_timeout = flush_timeout
        # Member side.
        self.last: Position = (0, 0)
        self._open_epoch: int | None = None
        self._fence = 0
        self._fresh = True
        self._buffer: dict[Position, Entry] = {}
        self._forwarded: OrderedDict[str, _Pending] = OrderedDict()
        # Sequencer side.
        self.coordinator: str | None = None
        self._coordinators: OrderedDict[int, str] = OrderedDict()
        self._members: tuple[str, ...] = ()
        self._acting = False
        self._seq_epoch: int | None = None
        self._next_seq = 1
        self._flushing: dict[str, Any] | None = None
        self._flush_timer: IDelayedCall | None = None
        self._queued: OrderedDict[str, dict[str, Any]] = OrderedDict()
        #: Observers of deliveries and positions (the testkit's checkers):
        #: callables taking (kind, fields).
        self.observers: list[Callable[[str, dict[str, Any]], None]] = []

    # -- application side --------------------------------------------------------

    @property
    def pending(self) -> int:
        """
        Messages this node broadcast and has not delivered yet.
        """
        return len(self._forwarded)

    def broadcast(
        self, msg_id: str, topic: str, body: Any, trace: dict[str, str] | None = None
    ) -> Deferred[None]:
        """
        Broadcast in total order.

        @return: a Deferred that fires when this node delivers the message
            (so every member that stays in the view delivers it at the same
            position); fails at once with L{QueueFull} when
            C{max_pending} broadcasts are undelivered.
        """
        if len(self._forwarded) >= self._max_pending:
            return fail(
                QueueFull(f"{len(self._forwarded)} total-order broadcasts are not delivered yet")
            )
        d: Deferred[None] = Deferred()
        self._forwarded[msg_id] = _Pending(msg_id, topic, body, trace, d)
        self._forward(self._forwarded[msg_id])
        return d

    def fail_pending(self, error: Exception) -> None:
        """
        Fail every undelivered broadcast (the node stops).
        """
        pending, self._forwarded = self._forwarded, OrderedDict()
        for item in pending.values():
            item.deferred.errback(error)

    # -- membership ----------------------------------------------------------------

    def left_view(self) -> None:
        """
        This node is no longer a member: when it joins again it starts
        delivering wherever the sequence then stands (what was sequenced
        while it was out is not its to deliver).
        """
        self._open_epoch = None
        self._fresh = True
        self._buffer.clear()
        self.coordinator = None
        self._acting = False
        self._cancel_flush()

    def joined_view(self) -> None:
        """
        This node became a member again: forward what is still undelivered.
        """
        self._reforward()

    def view_changed(
        self, coordinator: str, epoch: int, members: Iterable[str], acting: bool
    ) -> None:
        """
        The view (or this node's quorum) changed.

        @param coordinator: the view's coordinator.
        @param epoch: the view's epoch.
        @param members: the active members.
        @param acting: whether this node coordinates with quorum.
        """
        previous = self.coordinator
        self.coordinator = coordinator
        self._coordinators[epoch] = coordinator
        while len(self._coordinators) > _EPOCHS_REMEMBERED:
            self._coordinators.popitem(last=False)
        self._members = tuple(sorted(members))
        was_acting = self._acting
        self._acting = acting and coordinator == self.node_id
        if self._acting and (self._seq_epoch is None or epoch > self._seq_epoch):
            self._start_flush(epoch)
        elif self._acting and not was_acting and self._flushing is None:
            self._drain_queue()
        if not self._acting and self._flushing is not None:
            self._cancel_flush()
        if self._flushing is not None:
            # A member left or died: it will never answer.
            self._check_flush_complete()
        if previous != coordinator and coordinator != self.node_id and self._open_epoch == epoch:
            self._reforward()

    # -- frames ----------------------------------------------------------------------

    def received(self, sender: str, kind: str, body: dict[str, Any]) -> None:
        """
        A total-order message arrived on the reliable FIFO channel.

        @raise ProtocolViolation: when it is malformed.
        """
        if kind == FORWARD:
            self._on_forward(sender, body)
        elif kind == SEQUENCED:
            entry = Entry.from_wire(body.get("e"))
            if self._from_coordinator(sender, entry.epoch, kind):
                self._on_sequenced(sender, entry)
        elif kind == FLUSH_REQUEST:
            if self._from_coordinator(sender, body.get("epoch"), kind):
                self._on_flush_request(sender, body)
        elif kind == FLUSH_REPLY:
            self._on_flush_reply(sender, body)
        elif kind == OPEN:
            if self._from_coordinator(sender, body.get("epoch"), kind):
                self._on_open(sender, body)
        elif kind == ALREADY:
            if sender in self._coordinators.values():
                self._on_already(body)
        else:
            raise ProtocolViolation("malformed_total", f"unknown kind {kind!r}")

    def _from_coordinator(self, sender: str, epoch: Any, kind: str) -> bool:
        """
        Only the coordinator of an epoch sequences, flushes and opens it:
        anything else claiming to is dropped (a confused or hostile peer
        must not inject or stall the total order).
        """
        if isinstance(epoch, int) and self._coordinators.get(epoch) == sender:
            return True
        self.log.info(
            "dropped a total-order {kind} message from {sender} for epoch {epoch}: "
            "not that epoch's coordinator",
            kind=kind,
            sender=sender,
            epoch=epoch if isinstance(epoch, int) else None,
        )
        return False

    # -- sender ------------------------------------------------------------------------

    def _forward(self, item: _Pending) -> None:
        body = {"k": FORWARD, "mid": item.id, "t": item.topic, "b": item.body, "tc": item.trace}
        if self.coordinator == self.node_id:
            self._on_forward(self.node_id, body)
        elif self.coordinator is not None:
            self._send(self.coordinator, body)

    def _reforward(self) -> None:
        for item in list(self._forwarded.values()):
            self._forward(item)

    # -- sequencer ---------------------------------------------------------------------

    def _on_forward(self, sender: str, body: dict[str, Any]) -> None:
        msg_id, topic = body.get("mid"), body.get("t")
        trace = body.get("tc")
        if not isinstance(msg_id, str) or not isinstance(topic, str):
            raise ProtocolViolation("malformed_total", "bad forward")
        if trace is not None and not isinstance(trace, dict):
            raise ProtocolViolation("malformed_total", "bad trace context")
        if msg_id in self._delivered_ids or msg_id in self._sequenced_ids:
            # Sequenced and delivered already, maybe while the origin was
            # not a member: tell it, so it stops waiting.
            if sender != self.node_id:
                self._send(sender, {"k": ALREADY, "mid": msg_id})
            return
        if msg_id in self._queued:
            return
        forward = {"id": msg_id, "origin": sender, "t": topic, "b": body.get("b"), "tc": trace}
        if self._acting and self._flushing is None:
            self._sequence(forward)
        elif len(self._queued) < self._max_pending:
            # Not sequencing (no quorum, flushing, or not the coordinator
            # yet): hold it; the origin forwards again if this node never
            # opens an epoch.
            self._queued[msg_id] = forward

    def _sequence(self, forward: dict[str, Any]) -> None:
        assert self._seq_epoch is not None
        entry = Entry(
            self._seq_epoch,
            self._next_seq,
            forward["id"],
            forward["origin"],
            forward["t"],
            forward["b"],
            forward["tc"],
        )
        self._next_seq += 1
        self._notify("sequence", entry=entry)
        wire = {"k": SEQUENCED, "e": entry.to_wire()}
        for member in self._members:
            if member != self.node_id:
                self._send(member, wire)
        self._on_sequenced(self.node_id, entry)

    def _drain_queue(self) -> None:
        queued, self._queued = self._queued, OrderedDict()
        for forward in queued.values():
            if forward["id"] not in self._delivered_ids:
                self._sequence(forward)

    def _start_flush(self, epoch: int) -> None:
        self._cancel_flush()
        self._fence = max(self._fence, epoch)
        waiting = {m for m in self._members if m != self.node_id}
        self._flushing = {
            "epoch": epoch,
            "waiting": waiting,
            "entries": {entry.position: entry for entry in self._log},
            "last": self.last,
        }
        self.log.info(
            "flushing total order before opening epoch {epoch}: asking {members}",
            epoch=epoch,
            members=sorted(waiting),
        )
        request = {"k": FLUSH_REQUEST, "epoch": epoch}
        for member in sorted(waiting):
            self._send(member, request)
        self._flush_timer = self.clock.callLater(self._flush_timeout, self._flush_retry)
        self._check_flush_complete()

    def _flush_retry(self) -> None:
        self._flush_timer = None
        if self._flushing is None:
            return
        request = {"k": FLUSH_REQUEST, "epoch": self._flushing["epoch"]}
        for member in sorted(self._flushing["waiting"]):
            self._send(member, request)
        self._flush_timer = self.clock.callLater(self._flush_timeout, self._flush_retry)

    def _cancel_flush(self) -> None:
        if self._flush_timer is not None and self._flush_timer.active():
            self._flush_timer.cancel()
        self._flush_timer = None
        self._flushing = None

    def _on_flush_request(self, sender: str, body: dict[str, Any]) -> None:
        epoch = body.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise ProtocolViolation("malformed_total", "bad flush request")
        # From now on, refuse the old epochs' stragglers from the old
        # coordinator: what this node has delivered is what it reports, and
        # the flush gives everyone the longest prefix.
        self._fence = max(self._fence, epoch)
        self._send(
            sender,
            {
                "k": FLUSH_REPLY,
                "epoch": epoch,
                "last": list(self.last),
                "entries": [entry.to_wire() for entry in self._log],
            },
        )

    def _on_flush_reply(self, sender: str, body: dict[str, Any]) -> None:
        flushing = self._flushing
        if (
            flushing is None
            or body.get("epoch") != flushing["epoch"]
            or sender not in flushing["waiting"]
        ):
            return
        entries = body.get("entries")
        last = body.get("last")
        if (
            not isinstance(entries, list)
            or not isinstance(last, list)
            or len(last) != 2
            or not all(_is_position_number(value) for value in last)
        ):
            raise ProtocolViolation("malformed_total", "bad flush reply")
        # Parse them all first: a malformed reply changes nothing.
        for entry in [Entry.from_wire(data) for data in entries]:
            flushing["entries"].setdefault(entry.position, entry)
        if tuple(last) > flushing["last"]:
            flushing["last"] = (last[0], last[1])
        flushing["waiting"].discard(sender)
        self._check_flush_complete()

    def _check_flush_complete(self) -> None:
        flushing = self._flushing
        if flushing is None:
            return
        flushing["waiting"] &= set(self._members)
        if flushing["waiting"]:
            return
        epoch = flushing["epoch"]
        longest = flushing["last"]
        for entry in flushing["entries"].values():
            self._sequenced_ids[entry.id] = None
        while len(self._sequenced_ids) > self._id_window:
            self._sequenced_ids.popitem(last=False)
        fill = sorted(
            (e for e in flushing["entries"].values() if e.position <= longest and e.epoch < epoch),
            key=lambda e: e.position,
        )
        self._cancel_flush()
        opening = {"k": OPEN, "epoch": epoch, "fill": [e.to_wire() for e in fill]}
        for member in self._members:
            if member != self.node_id:
                self._send(member, opening)
        self._seq_epoch = epoch
        self._next_seq = 1
        self.log.info(
            "total order epoch {epoch} open after flushing up to {last}",
            epoch=epoch,
            last=list(longest),
        )
        self._open(epoch, fill)
        self._drain_queue()
        self._reforward()

    def _on_already(self, body: dict[str, Any]) -> None:
        msg_id = body.get("mid")
        if not isinstance(msg_id, str):
            raise ProtocolViolation("malformed_total", "bad sequenced notice")
        pending = self._forwarded.pop(msg_id, None)
        if pending is not None:
            pending.deferred.callback(None)

    # -- member --------------------------------------------------------------------------

    def _on_open(self, sender: str, body: dict[str, Any]) -> None:
        epoch = body.get("epoch")
        fill = body.get("fill")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or not isinstance(fill, list):
            raise ProtocolViolation("malformed_total", "bad open")
        if self._open_epoch is not None and epoch <= self._open_epoch:
            return
        entries = [Entry.from_wire(data) for data in fill]
        if self._fresh:
            # Joined during the flush: the history before it is not ours.
            entries = []
        self._open(epoch, entries)
        if sender == self.coordinator:
            self._reforward()

    def _open(self, epoch: int, fill: list[Entry]) -> None:
        for entry in fill:
            if entry.position > self.last:
                self._deliver_entry(entry)
        self._open_epoch = epoch
        self._fresh = False
        self.last = max(self.last, (epoch, 0))
        for position in sorted(p for p in self._buffer if p[0] < epoch):
            del self._buffer[position]
        self._drain_buffer()

    def _on_sequenced(self, sender: str, entry: Entry) -> None:
        if entry.epoch < self._fence or (
            self._open_epoch is not None and entry.epoch < self._open_epoch
        ):
            return
        if self._fresh and self._open_epoch is None:
            # Joined after the epoch opened: start where the stream is.
            self._open_epoch = entry.epoch
            self.last = (entry.epoch, entry.seq - 1)
            self._fresh = False
        if entry.position <= self.last:
            return
        if len(self._buffer) >= self._max_pending * 2:
            self.log.warn(
                "total-order reorder buffer full; dropping {position}",
                position=list(entry.position),
            )
            return
        self._buffer[entry.position] = entry
        self._drain_buffer()

    def _drain_buffer(self) -> None:
        while self._open_epoch is not None:
            following = (
                self._open_epoch,
                self.last[1] + 1 if self.last[0] == self._open_epoch else 1,
            )
            entry = self._buffer.pop(following, None)
            if entry is None:
                return
            self._deliver_entry(entry)

    def _deliver_entry(self, entry: Entry) -> None:
        self.last = entry.position
        self._log.append(entry)
        if entry.id in self._delivered_ids:
            self._notify("duplicate", entry=entry)
            return
        self._delivered_ids[entry.id] = None
        if len(self._delivered_ids) > self._id_window:
            self._delivered_ids.popitem(last=False)
        self._queued.pop(entry.id, None)
        self._notify("deliver", entry=entry)
        self._deliver(entry)
        pending = self._forwarded.pop(entry.id, None)
        if pending is not None:
            pending.deferred.callback(None)

    def _notify(self, kind: str, **fields: Any) -> None:
        fields["node_id"] = self.node_id
        fields["time"] = self.clock.seconds()
        for observer in self.observers:
            observer(kind, fields)
