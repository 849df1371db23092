"""
Causal ordering with vector clocks.

Each member keeps a vector clock: for every member C{k}, how many of
C{k}'s broadcasts it has delivered. A broadcast from member C{i} is stamped
(by L{CausalBroadcaster}) with the sender's delivered clock whose own entry
is replaced by the broadcast's number, so the stamp C{V} says: this is
C{i}'s C{V[i]}-th broadcast, and it was sent after C{i} delivered C{V[k]}
broadcasts of each C{k}. L{CausalReceiver} delivers it from C{j} only when
C{V[j] == local[j] + 1} and C{V[k] <= local[k]} for every other C{k}, and
buffers it until then (bounded; beyond the bound it is refused, not taken,
and its sender retransmits it). A broadcast is therefore delivered only
after everything it causally depends on. The sender delivers its own
broadcasts through its own receiver, like everyone else's.

Clock keys are member identities; a node uses one key per process
(C{"node_id:incarnation"}), so a restarted node comes back under a new key.

Membership change: L{CausalReceiver.forget} stops waiting for a key whose
member left the view: it drops every buffered broadcast I{from} it (none of
them can be delivered any more: nothing from a removed member is), and from
then on ignores that key's entry in the stamps of other members' broadcasts.
Without this, a broadcast that depends on one of the removed member's
broadcasts this node never received would wait forever, and with it every
later broadcast of the same sender. So causality is kept for everything but
the removed member's broadcasts that this node never delivered: those are
lost (as they would be under virtual synchrony without a flush).

A forgotten key keeps its entry in the clock, as a I{high-water mark}: the
highest count of it that this receiver delivered or ignored in a delivered
stamp. So a stamp always counts every broadcast in its sender's causal past,
including those of members it stopped waiting for. That is what makes
L{CausalReceiver.resume} safe: when the same process comes back into the
view, the key is tracked again from its mark; a broadcast at or below it
may be in the past of something already delivered, so it is never
delivered late (it counts as a duplicate), and the member's baseline
(L{CausalReceiver.skip}) says which of the broadcasts above it will never
come. A key whose process will never broadcast again (a newer incarnation
of its node appeared, or it left the cluster of its own accord) is
L{retired <CausalReceiver.retire>}: forgotten, left out of the clock, never
resumed.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from twisted.logger import Logger

from clustron.errors import ProtocolViolation
from clustron.messaging.arrival import (
    BUFFER_FULL,
    BUFFERED,
    DELIVERED,
    DUPLICATE,
    FORGOTTEN,
    TOO_MANY_STREAMS,
    Arrival,
)

log = Logger()

#: Default bound of a receiver's reorder buffer, in messages.
DEFAULT_MAX_BUFFER = 1024

#: Default bound of the members a receiver tracks (and of a received clock's
#: entries).
DEFAULT_MAX_MEMBERS = 4096

#: Default bound of the forgotten members a receiver remembers.
DEFAULT_MAX_FORGOTTEN = 4096


class Causality(enum.Enum):
    """
    How two vector clocks relate.
    """

    #: Every entry of the first is at most the second's, and they differ.
    BEFORE = "before"
    #: Every entry of the second is at most the first's, and they differ.
    AFTER = "after"
    #: Neither is at most the other.
    CONCURRENT = "concurrent"
    #: They are the same.
    EQUAL = "equal"


def _check_entry(node: object, value: object) -> None:
    if not isinstance(node, str) or not node:
        raise ValueError(f"vector clock key {node!r} is not a non-empty str")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"vector clock entry {node!r} is {value!r}, not an int >= 0")


class VectorClock(Mapping[str, int]):
    """
    An immutable vector clock: member key -> count. Entries that are zero
    are not stored, so two clocks are equal exactly when they agree on every
    member; L{at} reads any member, zero when absent.
    """

    __slots__ = ("_entries", "_hash")

    def __init__(self, entries: Mapping[str, int] | Iterable[tuple[str, int]] = ()) -> None:
        """
        @param entries: a mapping or pairs of member key and count.
        @raise ValueError: when a key is not a non-empty str or a count is
            not an int >= 0.
        """
        pairs = entries.items() if isinstance(entries, Mapping) else entries
        clean: dict[str, int] = {}
        for node, value in pairs:
            _check_entry(node, value)
            if value:
                clean[node] = value
        self._entries = clean
        self._hash: int | None = None

    @classmethod
    def from_wire(cls, obj: object, max_entries: int = DEFAULT_MAX_MEMBERS) -> VectorClock:
        """
        Read a clock received from a peer (a dict of str to int).

        @raise ProtocolViolation: C{"bad_vector_clock"} naming what is wrong.
        """
        if not isinstance(obj, dict):
            raise ProtocolViolation("bad_vector_clock", f"not a dict: {type(obj).__name__}")
        if len(obj) > max_entries:
            raise ProtocolViolation(
                "bad_vector_clock", f"{len(obj)} entries; the limit is {max_entries}"
            )
        try:
            return cls(obj)
        except ValueError as e:
            raise ProtocolViolation("bad_vector_clock", str(e)) from None

    def to_wire(self) -> dict[str, int]:
        """
        @return: a plain dict of the non-zero entries.
        """
        return dict(self._entries)

    def __getitem__(self, node: str) -> int:
        return self._entries[node]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._entries.items()))
        return self._hash

    def __repr__(self) -> str:
        inside = ", ".join(f"{node}={value}" for node, value in sorted(self._entries.items()))
        return f"VectorClock({inside})"

    def at(self, node: str) -> int:
        """
        @return: the count of C{node}, zero when absent.
        """
        return self._entries.get(node, 0)

    def increment(self, node: str) -> VectorClock:
        """
        @return: a copy with C{node}'s count one higher.
        """
        return self.replace(node, self.at(node) + 1)

    def replace(self, node: str, value: int) -> VectorClock:
        """
        @return: a copy with C{node}'s count set to C{value}.
        """
        entries = dict(self._entries)
        entries[node] = value
        return VectorClock(entries)

    def merge(self, other: Mapping[str, int]) -> VectorClock:
        """
        @return: the entry-wise maximum of this clock and C{other}.
        """
        entries = dict(self._entries)
        for node, value in other.items():
            if value > entries.get(node, 0):
                entries[node] = value
        return VectorClock(entries)

    def without(self, node: str) -> VectorClock:
        """
        @return: a copy without C{node}'s entry.
        """
        return VectorClock((k, v) for k, v in self._entries.items() if k != node)

    def compare(self, other: VectorClock) -> Causality:
        """
        @return: how this clock relates to C{other}.
        """
        below = all(value <= other.at(node) for node, value in self._entries.items())
        above = all(value <= self.at(node) for node, value in other.items())
        if below and above:
            return Causality.EQUAL
        if below:
            return Causality.BEFORE
        if above:
            return Causality.AFTER
        return Causality.CONCURRENT

    def happened_before(self, other: VectorClock) -> bool:
        """
        @return: whether this clock is strictly before C{other}.
        """
        return self.compare(other) is Causality.BEFORE


class CausalReceiver:
    """
    Delivers broadcasts in causal order; see the module docstring.
    """

    def __init__(
        self,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        max_members: int = DEFAULT_MAX_MEMBERS,
        max_forgotten: int = DEFAULT_MAX_FORGOTTEN,
    ) -> None:
        """
        @param max_buffer: the most broadcasts waiting for their causal
            past, all senders together.
        @param max_members: the most senders tracked; a broadcast from a new
            sender beyond it is refused until L{forget} makes room.
        @param max_forgotten: the most forgotten members remembered; beyond
            it the oldest is dropped, with its high-water mark (and would be
            tracked afresh if it came back under the same key).
        @raise ValueError: when a bound is out of range.
        """
        if max_buffer < 0:
            raise ValueError(f"max_buffer must not be negative, not {max_buffer}")
        if max_members < 1:
            raise ValueError(f"max_members must be at least 1, not {max_members}")
        if max_forgotten < 1:
            raise ValueError(f"max_forgotten must be at least 1, not {max_forgotten}")
        self._max_buffer = max_buffer
        self._max_members = max_members
        self._max_forgotten = max_forgotten
        self._local: dict[str, int] = {}
        self._buffer: dict[str, dict[int, tuple[VectorClock, Any]]] = {}
        self._buffered = 0
        # Forgotten key -> its high-water mark (see the module docstring).
        self._forgotten: OrderedDict[str, int] = OrderedDict()
        # Forgotten keys left out of the clock for good (see retire()).
        self._retired: set[str] = set()
        self._floors: dict[str, int] = {}
        #: How many buffered broadcasts L{forget} dropped (a metric).
        self.dropped = 0

    @property
    def clock(self) -> VectorClock:
        """
        The causal past of this member: per member key, how many of its
        broadcasts were delivered here, or, for a forgotten key that is not
        retired, its high-water mark (see the module docstring). At most
        C{max_members} entries: beyond that, the marks of the keys
        forgotten longest ago are left out.
        """
        if not self._forgotten:
            return VectorClock(self._local)
        room = self._max_members - len(self._local)
        entries: dict[str, int] = {}
        for node in reversed(self._forgotten):
            if len(entries) >= room:
                break
            mark = self._forgotten[node]
            if mark and node not in self._retired and node not in self._local:
                entries[node] = mark
        entries.update(self._local)
        return VectorClock(entries)

    @property
    def buffered(self) -> int:
        """
        How many broadcasts wait for their causal past.
        """
        return self._buffered

    def is_forgotten(self, node: str) -> bool:
        """
        @return: whether C{node} was forgotten (and is still remembered as
            such).
        """
        return node in self._forgotten

    def forgotten_keys(self) -> tuple[str, ...]:
        """
        @return: the forgotten members still remembered as such, the least
            recently forgotten first.
        """
        return tuple(self._forgotten)

    def known_keys(self) -> set[str]:
        """
        @return: every member this receiver counts or waits for and has not
            forgotten: those with an entry in its clock, a floor (see
            L{skip}) or buffered broadcasts, and those named in the stamp of
            a buffered broadcast.
        """
        keys = set(self._local) | set(self._floors) | set(self._buffer)
        for waiting in self._buffer.values():
            for stamp, _ in waiting.values():
                keys.update(stamp)
        keys.difference_update(self._forgotten)
        return keys

    def receive(self, sender: str, stamp: VectorClock, payload: Any) -> Arrival:
        """
        Offer one broadcast.

        @param sender: the sender's member key.
        @param stamp: the broadcast's vector clock.
        @param payload: anything; handed back in L{Arrival.deliver}.
        @return: what happened; C{deliver} lists the payloads now
            deliverable, in a causal order.
        @raise ProtocolViolation: when the stamp does not count the sender
            (C{stamp.at(sender) < 1}).
        """
        if not isinstance(stamp, VectorClock):
            raise TypeError(f"stamp must be a VectorClock, not {type(stamp).__name__}")
        if sender in self._forgotten:
            return Arrival(True, FORGOTTEN)
        number = stamp.at(sender)
        if number < 1:
            raise ProtocolViolation(
                "bad_causal_stamp", f"the stamp of a broadcast from {sender} does not count it"
            )
        if number <= self._local.get(sender, 0) or number in self._buffer.get(sender, ()):
            return Arrival(True, DUPLICATE)
        if (
            sender not in self._local
            and sender not in self._buffer
            and len(self._local.keys() | self._buffer.keys()) >= self._max_members
        ):
            log.warn(
                "causal receiver refused a broadcast from {sender}: {limit} members tracked",
                sender=sender,
                limit=self._max_members,
            )
            return Arrival(False, TOO_MANY_STREAMS)
        if self._deliverable(sender, stamp):
            self._delivered(sender, number, stamp)
            deliver = [payload]
            self._cascade(deliver)
            return Arrival(True, DELIVERED, tuple(deliver))
        if self._buffered >= self._max_buffer:
            return Arrival(False, BUFFER_FULL)
        self._buffer.setdefault(sender, {})[number] = (stamp, payload)
        self._buffered += 1
        return Arrival(True, BUFFERED)

    def skip(self, node: str, upto: int) -> tuple[Any, ...]:
        """
        C{node}'s broadcasts numbered up to C{upto} that this receiver has
        not received by now will never reach it: they were sent while it was
        not a member. (The sender says so on the FIFO stream it shares with
        this receiver, so everything it did send here came first.) Stop
        waiting for them; broadcasts already buffered are still delivered in
        order.

        @return: the payloads of buffered broadcasts now deliverable, in a
            causal order.
        """
        if node in self._forgotten or upto <= self._local.get(node, 0):
            return ()
        if (
            node not in self._local
            and len(self._local.keys() | self._buffer.keys()) >= self._max_members
        ):
            return ()
        self._floors[node] = max(self._floors.get(node, 0), upto)
        deliver: list[Any] = []
        self._cascade(deliver)
        return tuple(deliver)

    def forget(self, node: str) -> tuple[Any, ...]:
        """
        C{node} was removed from the view: drop its entry (remembering its
        high-water mark for L{resume}) and its buffered broadcasts, and stop
        waiting for its broadcasts (see the module docstring).

        @return: the payloads of buffered broadcasts that only waited for
            C{node} and are now deliverable, in a causal order.
        """
        mark = max(self._local.pop(node, 0), self._forgotten.pop(node, 0))
        self._forgotten[node] = mark
        while len(self._forgotten) > self._max_forgotten:
            oldest, _ = self._forgotten.popitem(last=False)
            self._retired.discard(oldest)
        self._floors.pop(node, None)
        dropped = len(self._buffer.pop(node, {}))
        self._buffered -= dropped
        self.dropped += dropped
        deliver: list[Any] = []
        self._cascade(deliver)
        log.info(
            "causal receiver forgot {node}: dropped {dropped} of its broadcasts, released"
            " {released} that waited for it",
            node=node,
            dropped=dropped,
            released=len(deliver),
        )
        return tuple(deliver)

    def retire(self, node: str) -> tuple[Any, ...]:
        """
        C{node} will never broadcast again (its process is gone): forget it
        (see L{forget}), leave it out of the clock and never resume it.

        @return: as L{forget}.
        """
        released = self.forget(node)
        if node in self._forgotten:
            self._retired.add(node)
        return released

    def is_retired(self, node: str) -> bool:
        """
        @return: whether C{node} was retired (and is still remembered as
            forgotten).
        """
        return node in self._retired

    def resume(self, node: str) -> bool:
        """
        C{node}, forgotten, is back in the view (the same process): track it
        again, counting its broadcasts as delivered up to its high-water
        mark (see the module docstring). Its broadcasts above the mark are
        delivered in order; the gaps its member never sent here are for
        L{skip} to close, and until then broadcasts that depend on them
        wait.

        @return: whether it was resumed: False when it is not forgotten, is
            retired, or when C{max_members} are tracked already (it stays
            forgotten).
        """
        mark = self._forgotten.get(node)
        if mark is None or node in self._retired:
            return False
        if mark and len(self._local.keys() | self._buffer.keys()) >= self._max_members:
            return False
        del self._forgotten[node]
        if mark:
            self._local[node] = mark
        log.info("causal receiver resumed {node} after {mark}", node=node, mark=mark)
        return True

    def _delivered(self, sender: str, number: int, stamp: VectorClock) -> None:
        self._local[sender] = number
        if self._forgotten:
            # Entries ignored in a delivered stamp raise their key's mark.
            for node, value in stamp.items():
                mark = self._forgotten.get(node)
                if mark is not None and value > mark:
                    self._forgotten[node] = value

    def _deliverable(self, sender: str, stamp: VectorClock) -> bool:
        if stamp.at(sender) != self._local.get(sender, 0) + 1:
            return False
        for node, value in stamp.items():
            if node == sender or node in self._forgotten:
                continue
            if value > self._local.get(node, 0):
                return False
        return True

    def _cascade(self, deliver: list[Any]) -> None:
        progress = True
        while progress:
            progress = False
            for node, floor in list(self._floors.items()):
                # Skip numbers that will never come (see skip()); a buffered
                # one below the floor is delivered instead, in its turn.
                local = self._local.get(node, 0)
                while local < floor and local + 1 not in self._buffer.get(node, ()):
                    local += 1
                    progress = True
                self._local[node] = local
                if local >= floor:
                    del self._floors[node]
            for sender in list(self._buffer):
                waiting = self._buffer[sender]
                number = self._local.get(sender, 0) + 1
                item = waiting.get(number)
                if item is None or not self._deliverable(sender, item[0]):
                    continue
                del waiting[number]
                if not waiting:
                    del self._buffer[sender]
                self._buffered -= 1
                self._delivered(sender, number, item[0])
                deliver.append(item[1])
                progress = True


class CausalBroadcaster:
    """
    Stamps this member's outgoing broadcasts, from the clock of this
    member's own L{CausalReceiver}.

    The stamp of the n-th broadcast is the receiver's delivered clock with
    this member's entry set to n. Each broadcast must also be offered to the
    local receiver (it delivers this member's broadcasts in order, like any
    other member's).
    """

    def __init__(self, member: str, receiver: CausalReceiver) -> None:
        """
        @param member: this member's key in the clocks.
        @param receiver: this member's receiver.
        """
        self.member = member
        self._receiver = receiver
        self._sent = receiver.clock.at(member)

    @property
    def sent(self) -> int:
        """
        How many broadcasts were stamped.
        """
        return self._sent

    def stamp(self) -> VectorClock:
        """
        @return: the stamp of the next broadcast.
        """
        self._sent += 1
        return self._receiver.clock.replace(self.member, self._sent)
