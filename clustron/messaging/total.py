"""
Total-order broadcast: a sequencer whose positions commit on a quorum's
acknowledgement, with a flush on coordinator change.

Members forward total-order messages to the acting coordinator, which gives
each one a position C{(epoch, seq)} and sends it to every member. Members
I{accept} positions (they hold them, in order, without delivering) and
acknowledge the highest one they hold; once a quorum of the view (the
coordinator included) holds a position, the coordinator I{commits} it and
tells the members, and only then does anyone deliver it. Every message
between two nodes travels on the reliable FIFO channel, so a member sees
one coordinator's positions in order and without gaps while that
coordinator lives.

When a new coordinator starts an epoch it runs a I{flush} before it
sequences anything: it asks every active member of its view what it holds
(delivered or only accepted) and in which epoch it last accepted an
opening; each member stops accepting positions of older epochs when it
answers. The new coordinator keeps the history of the members that accepted
the latest opening (plus what anyone delivered), sends it to all as the new
epoch's opening, and that opening commits like a position: only once a
quorum accepted it do members deliver what it brings them. Senders keep
every message they forwarded until they deliver it themselves, and forward
what is still undelivered again to each new coordinator; delivery is
deduplicated by message id. This is the scheme of Zab and Viewstamped
Replication, with the view's quorum as the majority.

Promises:
 - No two members deliver different messages at the same position (only the
   coordinator of an epoch assigns positions in it, and a flush keeps every
   position that may have been delivered).
 - No message is delivered at two positions: a coordinator cut off from the
   quorum cannot commit, so it cannot deliver what the majority then orders
   differently. (Before commits, such a coordinator delivered for up to
   C{suspect_after} what the majority re-sequenced.)
 - Members that stay in the view deliver the same sequence; nothing is
   delivered twice at one member.
 - Positions are assigned only while the coordinator has quorum, and
   committed only with a quorum's acknowledgement (C{quorum: none} commits
   at once, and so gives this up along with the rest).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any, TypeGuard

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
ACCEPTED = "ta"
COMMIT = "tc"

#: How many epochs' coordinators a node remembers (to tell who may sequence).
_EPOCHS_REMEMBERED = 16

#: How many total-order messages from a coordinator this node does not know
#: yet (its view has not arrived) are held until it does.
_EARLY_HELD = 1024

KINDS = frozenset({FORWARD, SEQUENCED, FLUSH_REQUEST, FLUSH_REPLY, OPEN, ALREADY, ACCEPTED, COMMIT})


def _is_position_number(value: Any) -> TypeGuard[int]:
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


def _entries(data: Any, what: str) -> list[Entry]:
    """
    Parse a list of entries sent by a peer (all of them, before anything is
    changed: a malformed message changes nothing).
    """
    if not isinstance(data, list):
        raise ProtocolViolation("malformed_total", f"bad {what}")
    return [Entry.from_wire(item) for item in data]


def _number(body: dict[str, Any], key: str, what: str) -> int:
    value = body.get(key)
    if not _is_position_number(value):
        raise ProtocolViolation("malformed_total", f"bad {what}: {key!r} is not a position number")
    return value


@attrs.define
class _Pending:
    id: str
    topic: str
    body: Any
    trace: dict[str, str] | None
    deferred: Deferred[None]


@attrs.define
class _Flush:
    """
    A flush in progress at the coordinator of C{epoch}.
    """

    epoch: int
    waiting: set[str]
    #: Per member that answered (this node included): the epoch whose
    #: opening it accepted last, its delivered position, and what it holds.
    replies: dict[str, tuple[int | None, Position, list[Entry]]]


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
        # Ids known to hold a position already (sequenced here, or seen in a
        # flush), even if this node never delivered them: never sequenced
        # again.
        self._sequenced_ids: OrderedDict[str, None] = OrderedDict()
        self._id_window = log_size * 4
        self._max_pending = max_pending
        self._flush_timeout = flush_timeout
        # Member side.
        #: The last position this node delivered.
        self.last: Position = (0, 0)
        #: The epoch whose opening this node accepted last (None: none since
        #: it joined).
        self._open_epoch: int | None = None
        self._fence = 0
        self._fresh = True
        #: The opening's history, accepted and not delivered yet.
        self._fill: list[Entry] = []
        self._fill_delivered = False
        #: Where a member that joined an open epoch starts delivering.
        self._start: Position | None = None
        #: Accepted positions of the open epoch, by seq, not delivered yet.
        self._accepted: dict[int, Entry] = {}
        #: The highest seq of the open epoch accepted with all before it.
        self._accepted_upto = 0
        #: Positions of the open epoch that arrived ahead of a gap.
        self._buffer: dict[int, Entry] = {}
        #: The highest seq of the open epoch known committed (-1: not even
        #: the opening).
        self._committed = -1
        self._delivered_seq = 0
        self._ack_call: IDelayedCall | None = None
        self._early: deque[tuple[str, str, dict[str, Any]]] = deque()
        self._forwarded: OrderedDict[str, _Pending] = OrderedDict()
        # Sequencer side.
        self.coordinator: str | None = None
        self._coordinators: OrderedDict[int, str] = OrderedDict()
        self._members: tuple[str, ...] = ()
        self._quorum = 1
        self._acting = False
        self._seq_epoch: int | None = None
        self._next_seq = 1
        self._acks: dict[str, int] = {}
        self._commit = -1
        self._commit_sent = -1
        self._commit_call: IDelayedCall | None = None
        self._flushing: _Flush | None = None
        self._flush_timer: IDelayedCall | None = None
        self._queued: OrderedDict[str, dict[str, Any]] = OrderedDict()
        #: Origins that forwarded a message again while it held a position
        #: not committed yet: they are told when it is delivered here.
        self._awaiting: OrderedDict[str, set[str]] = OrderedDict()
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
            (so a quorum holds it at its position, and every member that
            stays in the view delivers it there); fails at once with
            L{QueueFull} when C{max_pending} broadcasts are undelivered.
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
        Fail every undelivered broadcast and stop timers (the node stops).
        """
        for call in (self._ack_call, self._commit_call):
            if call is not None and call.active():
                call.cancel()
        self._ack_call = self._commit_call = None
        self._cancel_flush()
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
        self._reset_member()
        self._fresh = True
        self.coordinator = None
        self._acting = False
        self._cancel_flush()

    def joined_view(self) -> None:
        """
        This node became a member again: forward what is still undelivered.
        """
        self._reforward()

    def view_changed(
        self,
        coordinator: str,
        epoch: int,
        members: Iterable[str],
        acting: bool,
        quorum: int | None = None,
        renewed: Iterable[str] = (),
    ) -> None:
        """
        The view (or this node's quorum) changed.

        @param coordinator: the view's coordinator.
        @param epoch: the view's epoch.
        @param members: the active members.
        @param acting: whether this node coordinates with quorum.
        @param quorum: how many members, the coordinator included, must hold
            a position before it commits (by default a majority of
            C{members}).
        @param renewed: members that are back in a new life (restarted)
            although their id never left the member list.
        """
        previous = self.coordinator
        self.coordinator = coordinator
        self._coordinators[epoch] = coordinator
        while len(self._coordinators) > _EPOCHS_REMEMBERED:
            self._coordinators.popitem(last=False)
        before = set(self._members)
        self._members = tuple(sorted(members))
        self._quorum = quorum if quorum is not None else len(self._members) // 2 + 1
        was_acting = self._acting
        self._acting = acting and coordinator == self.node_id
        if self._early:
            self._replay_early()
        if self._acting and (self._seq_epoch is None or epoch > self._seq_epoch):
            self._start_flush(epoch)
        elif self._seq_epoch == epoch and coordinator == self.node_id and self._flushing is None:
            # New members of an open epoch start with what is not committed
            # yet, so that they can hold (and acknowledge) everything after
            # the commit point.
            arrived = (set(self._members) - before) | (set(renewed) & set(self._members))
            for member in sorted(arrived - {self.node_id}):
                self._send_join_opening(member)
            for gone in before - set(self._members):
                self._acks.pop(gone, None)
            self._update_commit()
            if self._acting and not was_acting:
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
        elif kind == FLUSH_REPLY:
            self._on_flush_reply(sender, body)
        elif kind == ACCEPTED:
            self._on_accepted(sender, body)
        elif kind == ALREADY:
            if sender in self._coordinators.values():
                self._on_already(body)
        elif kind in (SEQUENCED, FLUSH_REQUEST, OPEN, COMMIT):
            epoch = (
                Entry.from_wire(body.get("e")).epoch
                if kind == SEQUENCED
                else _number(body, "epoch", kind)
            )
            if self._from_coordinator(sender, epoch, kind, body):
                if kind == SEQUENCED:
                    self._on_sequenced(Entry.from_wire(body["e"]))
                elif kind == FLUSH_REQUEST:
                    self._on_flush_request(sender, epoch)
                elif kind == OPEN:
                    self._on_open(sender, body)
                else:
                    self._on_commit(epoch, _number(body, "seq", "commit"))
        else:
            raise ProtocolViolation("malformed_total", f"unknown kind {kind!r}")

    def _from_coordinator(self, sender: str, epoch: int, kind: str, body: dict[str, Any]) -> bool:
        """
        Only the coordinator of an epoch sequences, flushes, opens and
        commits it: anything else claiming to is dropped (a confused or
        hostile peer must not inject or stall the total order). A message
        for an epoch newer than any this node knows is held until its view
        arrives (the view and the message race on different paths).
        """
        holder = self._coordinators.get(epoch)
        if holder == sender:
            return True
        if holder is None and epoch > max(self._coordinators, default=0):
            if len(self._early) < _EARLY_HELD:
                self._early.append((sender, kind, body))
                return False
        self.log.info(
            "dropped a total-order {kind} message from {sender} for epoch {epoch}: "
            "not that epoch's coordinator",
            kind=kind,
            sender=sender,
            epoch=epoch,
        )
        return False

    def _replay_early(self) -> None:
        known = max(self._coordinators, default=0)
        early, self._early = self._early, deque()
        for sender, kind, body in early:
            epoch = Entry.from_wire(body["e"]).epoch if kind == SEQUENCED else body["epoch"]
            if epoch <= known:
                self.received(sender, kind, body)
            else:
                self._early.append((sender, kind, body))

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
        if msg_id in self._delivered_ids:
            # Delivered already, maybe while the origin was not a member:
            # tell it, so it stops waiting.
            if sender != self.node_id:
                self._send(sender, {"k": ALREADY, "mid": msg_id})
            return
        if msg_id in self._sequenced_ids or msg_id in self._queued:
            # It holds a position that is not committed yet. The origin
            # delivers it when it is, unless it joined after that position
            # (then it is told).
            if sender != self.node_id and msg_id in self._sequenced_ids:
                if msg_id in self._awaiting or len(self._awaiting) < self._max_pending:
                    self._awaiting.setdefault(msg_id, set()).add(sender)
            return
        forward = {"id": msg_id, "origin": sender, "t": topic, "b": body.get("b"), "tc": trace}
        if self._sequencing() and not self._queued:
            self._sequence(forward)
        elif len(self._queued) < self._max_pending:
            # Not sequencing (no quorum, flushing, not the coordinator yet,
            # or max_pending positions wait for their commit): hold it; the
            # origin forwards again if this node never opens an epoch.
            self._queued[msg_id] = forward

    def _sequencing(self) -> bool:
        """
        Whether this node may give out a position now: it coordinates with
        quorum, its epoch is open, and fewer than C{max_pending} positions
        wait for their commit (which bounds what members hold uncommitted).
        """
        return (
            self._acting
            and self._flushing is None
            and self._seq_epoch is not None
            and self._next_seq - 1 - max(self._commit, 0) < self._max_pending
        )

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
        self._note_sequenced(entry.id)
        self._notify("sequence", entry=entry)
        wire = {"k": SEQUENCED, "e": entry.to_wire()}
        for member in self._members:
            if member != self.node_id:
                self._send(member, wire)
        self._on_sequenced(entry)

    def _note_sequenced(self, msg_id: str) -> None:
        self._sequenced_ids[msg_id] = None
        while len(self._sequenced_ids) > self._id_window:
            self._sequenced_ids.popitem(last=False)

    def _drain_queue(self) -> None:
        while self._queued and self._sequencing():
            msg_id, forward = self._queued.popitem(last=False)
            if msg_id not in self._delivered_ids and msg_id not in self._sequenced_ids:
                self._sequence(forward)

    def _send_join_opening(self, member: str) -> None:
        """
        Open the current epoch for a member that joined it after it opened.
        """
        assert self._seq_epoch is not None
        base = max(self._committed, 0)
        opening = {
            "k": OPEN,
            "epoch": self._seq_epoch,
            "base": base,
            "commit": self._committed,
            "fill": [e.to_wire() for e in self._fill] if self._committed < 0 else [],
            "held": [self._accepted[s].to_wire() for s in sorted(self._accepted) if s > base],
        }
        self._acks[member] = -1
        self._send(member, opening)

    def _on_accepted(self, sender: str, body: dict[str, Any]) -> None:
        epoch = _number(body, "epoch", "acknowledgement")
        seq = _number(body, "seq", "acknowledgement")
        if epoch != self._seq_epoch or sender not in self._members or self._flushing is not None:
            return
        if seq > self._acks.get(sender, -1):
            self._acks[sender] = seq
            self._update_commit()

    def _update_commit(self) -> None:
        """
        Commit the highest position a quorum of the members holds.
        """
        if self._seq_epoch is None or self._open_epoch != self._seq_epoch:
            return
        self._acks[self.node_id] = self._accepted_upto
        held = sorted((self._acks.get(m, -1) for m in self._members), reverse=True)
        if len(held) < self._quorum or self._quorum < 1:
            return
        commit = held[self._quorum - 1]
        if commit <= self._commit:
            return
        self._commit = commit
        self._on_commit(self._seq_epoch, commit)
        if self._queued:
            self._drain_queue()
        if self._commit_call is None:
            self._commit_call = self.clock.callLater(0, self._send_commit)

    def _send_commit(self) -> None:
        self._commit_call = None
        if self._seq_epoch is None or self._commit <= self._commit_sent:
            return
        self._commit_sent = self._commit
        notice = {"k": COMMIT, "epoch": self._seq_epoch, "seq": self._commit}
        for member in self._members:
            if member != self.node_id:
                self._send(member, notice)

    def _start_flush(self, epoch: int) -> None:
        self._cancel_flush()
        self._fence = max(self._fence, epoch)
        waiting = {m for m in self._members if m != self.node_id}
        self._flushing = _Flush(epoch, waiting, {self.node_id: self._holding()})
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

    def _holding(self) -> tuple[int | None, Position, list[Entry]]:
        """
        What this node reports to a flush: the epoch whose opening it
        accepted, its delivered position, and every entry it holds
        (delivered recently, or accepted and not delivered).
        """
        held = list(self._log)
        held.extend(self._fill)
        held.extend(self._accepted[seq] for seq in sorted(self._accepted))
        return (self._open_epoch, self.last, held)

    def _flush_retry(self) -> None:
        self._flush_timer = None
        if self._flushing is None:
            return
        request = {"k": FLUSH_REQUEST, "epoch": self._flushing.epoch}
        for member in sorted(self._flushing.waiting):
            self._send(member, request)
        self._flush_timer = self.clock.callLater(self._flush_timeout, self._flush_retry)

    def _cancel_flush(self) -> None:
        if self._flush_timer is not None and self._flush_timer.active():
            self._flush_timer.cancel()
        self._flush_timer = None
        self._flushing = None

    def _on_flush_request(self, sender: str, epoch: int) -> None:
        # From now on, accept nothing more of older epochs: what this node
        # holds now is what it reports, and the flush keeps everything a
        # quorum may have committed.
        self._fence = max(self._fence, epoch)
        open_epoch, last, held = self._holding()
        self._send(
            sender,
            {
                "k": FLUSH_REPLY,
                "epoch": epoch,
                "open": open_epoch,
                "last": list(last),
                "entries": [entry.to_wire() for entry in held],
            },
        )

    def _on_flush_reply(self, sender: str, body: dict[str, Any]) -> None:
        flushing = self._flushing
        epoch = body.get("epoch")
        if flushing is None or epoch != flushing.epoch or sender not in flushing.waiting:
            return
        last = body.get("last")
        open_epoch = body.get("open")
        if (
            not isinstance(last, list)
            or len(last) != 2
            or not all(_is_position_number(value) for value in last)
            or not (open_epoch is None or _is_position_number(open_epoch))
        ):
            raise ProtocolViolation("malformed_total", "bad flush reply")
        entries = _entries(body.get("entries"), "flush reply")
        flushing.replies[sender] = (open_epoch, (last[0], last[1]), entries)
        flushing.waiting.discard(sender)
        self._check_flush_complete()

    def _check_flush_complete(self) -> None:
        flushing = self._flushing
        if flushing is None:
            return
        flushing.waiting &= set(self._members)
        if flushing.waiting:
            return
        epoch = flushing.epoch
        history = self._history(flushing, epoch)
        # What holds a position now is what the history holds: ids this node
        # sequenced in an earlier epoch that the history dropped were never
        # delivered anywhere, and are sequenced again when forwarded.
        self._sequenced_ids = OrderedDict((entry.id, None) for entry in history)
        self._cancel_flush()
        self._seq_epoch = epoch
        self._next_seq = 1
        self._acks = {}
        self._commit = self._commit_sent = -1
        opening = {"k": OPEN, "epoch": epoch, "fill": [e.to_wire() for e in history]}
        for member in self._members:
            if member != self.node_id:
                self._send(member, opening)
        self.log.info(
            "total order epoch {epoch} opening with {count} entries up to {last}",
            epoch=epoch,
            count=len(history),
            last=list(history[-1].position) if history else None,
        )
        self._accept_opening(epoch, history, base=None, commit=-1, held=[])
        self._drain_queue()
        self._reforward()

    @staticmethod
    def _history(flushing: _Flush, epoch: int) -> list[Entry]:
        """
        The history a new epoch opens with: what the members that accepted
        the latest opening hold (every position a quorum may have committed
        is held by one of them), and what anyone delivered.
        """
        opened = [reply[0] for reply in flushing.replies.values() if reply[0] is not None]
        latest = max(opened, default=None)
        kept: dict[Position, Entry] = {}
        for open_epoch, _, held in flushing.replies.values():
            if open_epoch is not None and open_epoch == latest:
                for entry in held:
                    if entry.epoch < epoch:
                        kept.setdefault(entry.position, entry)
        for _, last, held in flushing.replies.values():
            for entry in held:
                if entry.position <= last and entry.epoch < epoch:
                    kept.setdefault(entry.position, entry)
        return [kept[position] for position in sorted(kept)]

    def _on_already(self, body: dict[str, Any]) -> None:
        msg_id = body.get("mid")
        if not isinstance(msg_id, str):
            raise ProtocolViolation("malformed_total", "bad sequenced notice")
        pending = self._forwarded.pop(msg_id, None)
        if pending is not None:
            pending.deferred.callback(None)

    # -- member --------------------------------------------------------------------------

    def _reset_member(self) -> None:
        self._open_epoch = None
        self._fill = []
        self._fill_delivered = False
        self._start = None
        self._accepted.clear()
        self._accepted_upto = 0
        self._buffer.clear()
        self._committed = -1
        self._delivered_seq = 0

    def _on_open(self, sender: str, body: dict[str, Any]) -> None:
        epoch = _number(body, "epoch", "opening")
        fill = _entries(body.get("fill"), "opening")
        joining = "base" in body
        if joining:
            base = _number(body, "base", "opening")
            commit = body.get("commit")
            if not (isinstance(commit, int) and not isinstance(commit, bool) and commit >= -1):
                raise ProtocolViolation("malformed_total", "bad opening: 'commit'")
            held = _entries(body.get("held"), "opening")
        else:
            base, commit, held = None, -1, []
        if epoch < self._fence or (
            self._open_epoch is not None
            and (epoch < self._open_epoch or (epoch == self._open_epoch and not joining))
        ):
            return
        if epoch == self._open_epoch:
            # Opened for a member that never stopped following the epoch (the
            # coordinator saw its incarnation grow, as a refuted suspicion
            # does): what it brings is nothing new.
            for entry in held:
                self._on_sequenced(entry)
            self._on_commit(epoch, commit)
            return
        self._accept_opening(epoch, fill, base, commit, held)
        if sender == self.coordinator:
            self._reforward()

    def _accept_opening(
        self, epoch: int, fill: list[Entry], base: int | None, commit: int, held: list[Entry]
    ) -> None:
        """
        Hold an epoch's opening: its history (C{fill}) is delivered when the
        opening commits. A member that joins an open epoch (C{base}: the
        commit point it starts after) or joined during the flush delivers
        nothing before where it starts.
        """
        self._reset_member()
        self._open_epoch = epoch
        self._fence = max(self._fence, epoch)
        self._fill = fill
        if base is not None or self._fresh:
            self._start = (epoch, base or 0)
        self._fresh = False
        self._accepted_upto = self._delivered_seq = base or 0
        for entry in held:
            if entry.epoch == epoch and entry.seq > self._accepted_upto:
                self._buffer[entry.seq] = entry
        self._advance()
        self._acknowledge()
        if commit >= 0:
            self._on_commit(epoch, commit)

    def _on_sequenced(self, entry: Entry) -> None:
        if entry.epoch < self._fence or entry.epoch != self._open_epoch:
            return
        if entry.seq <= self._accepted_upto or entry.seq in self._buffer:
            return
        if len(self._buffer) >= self._max_pending * 2:
            self.log.warn(
                "total-order reorder buffer full; dropping {position}",
                position=list(entry.position),
            )
            return
        self._buffer[entry.seq] = entry
        if self._advance():
            self._deliver_committed()
            self._acknowledge()

    def _advance(self) -> bool:
        """
        Accept buffered positions that now follow without a gap.
        """
        moved = False
        while (entry := self._buffer.pop(self._accepted_upto + 1, None)) is not None:
            self._accepted[entry.seq] = entry
            self._accepted_upto = entry.seq
            moved = True
        return moved

    def _acknowledge(self) -> None:
        if self.coordinator == self.node_id and self._seq_epoch == self._open_epoch:
            self._update_commit()
            self._deliver_committed()
        elif self._ack_call is None:
            self._ack_call = self.clock.callLater(0, self._send_ack)

    def _send_ack(self) -> None:
        self._ack_call = None
        epoch = self._open_epoch
        coordinator = self._coordinators.get(epoch) if epoch is not None else None
        if epoch is None or coordinator is None or epoch < self._fence:
            return
        self._send(coordinator, {"k": ACCEPTED, "epoch": epoch, "seq": self._accepted_upto})

    def _on_commit(self, epoch: int, seq: int) -> None:
        if epoch != self._open_epoch or seq <= self._committed:
            return
        self._committed = seq
        self._deliver_committed()

    def _deliver_committed(self) -> None:
        if self._committed < 0:
            return
        if not self._fill_delivered:
            assert self._open_epoch is not None
            self._fill_delivered = True
            start = self._start or (self._open_epoch, 0)
            fill, self._fill = self._fill, []
            for entry in fill:
                if entry.position > self.last and (
                    self._start is None or entry.position > self._start
                ):
                    self._deliver_entry(entry)
            self.last = max(self.last, start)
        upto = min(self._committed, self._accepted_upto)
        while self._delivered_seq < upto:
            self._delivered_seq += 1
            held = self._accepted.pop(self._delivered_seq, None)
            if held is not None and held.position > self.last:
                self._deliver_entry(held)

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
        for origin in sorted(self._awaiting.pop(entry.id, ())):
            self._send(origin, {"k": ALREADY, "mid": entry.id})
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
