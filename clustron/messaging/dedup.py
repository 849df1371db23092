"""
A bounded window of message ids already received.

Per sender incarnation (a I{stream}: C{(node_id, incarnation)}) the window
keeps a low-water mark -- every counter from 1 up to it was seen -- and the
set of counters seen above it (out of order, or skipped because they went to
other receivers). A counter arriving just above the mark raises the mark and
absorbs the counters above it that close the gap, so a sender whose ids all
reach this receiver costs one entry however many it sends. (Counter 0, which
L{clustron.messaging.ids.MessageIdSource} does not hand out unless told to,
is remembered apart, as part of its stream's entry: the mark starts at 0.)

Bound and guarantee
===================

Entries are the streams (their marks) and the out-of-order counters. There
are never more than C{2 * capacity} of them: when there are more, the entry
least recently recorded is evicted -- an out-of-order counter is forgotten,
or a stream (whose out-of-order counters are then all gone already) is
forgotten whole. Recording an id touches at most two entries (its stream and
its counter), and an id's stream entry is refreshed each time a new id of
that stream is recorded, so:

  - L{DedupWindow.seen} never answers C{True} for an id that was not
    recorded before: a new message is never dropped as a duplicate;
  - it answers C{True} for every id that is among the last C{capacity} new
    ids recorded (by any sender): no duplicate delivery within the window;
  - ids older than that may still be remembered (ids absorbed by a mark are
    remembered as long as their stream keeps receiving), but may be
    forgotten and then admitted again.

Answering a duplicate does not refresh anything, so a flood of duplicates
cannot push genuine ids out of the window.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.logger import Logger
from zope.interface import implementer

from clustron.config import MessagingConfig
from clustron.messaging.ids import MessageId
from clustron.messaging.interfaces import IDuplicateFilter

log = Logger()

_DEFAULTS = MessagingConfig()

_StreamKey = tuple[str, int]
_CounterKey = tuple[str, int, int]


class _Stream:
    __slots__ = ("low", "above", "zero")

    def __init__(self) -> None:
        # Counter 0 is tracked on its own (zero), so that the mark can start
        # at 0: ids count from 1 (MessageIdSource), and a mark waiting for a
        # 0 that never comes would make every counter an out-of-order entry.
        self.low = 0
        self.above: set[int] = set()
        self.zero = False


@implementer(IDuplicateFilter)
class DedupWindow:
    """
    Remembers the ids of received messages within a bounded window; see the
    module docstring for the exact guarantee.

    @ivar capacity: how many of the most recently recorded new ids are
        guaranteed to be remembered.
    @ivar evicted: how many entries were evicted so far (a metric).
    """

    def __init__(self, capacity: int = _DEFAULTS.dedup_window) -> None:
        """
        @param capacity: the window size (C{messaging.dedup_window}); memory
            holds at most C{2 * capacity} entries.
        @raise ValueError: when C{capacity} is not a positive int.
        """
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"dedup window capacity must be a positive int, not {capacity!r}")
        self.capacity = capacity
        self.evicted = 0
        self._limit = 2 * capacity
        self._streams: dict[_StreamKey, _Stream] = {}
        # Every entry, least recently recorded first. Invariant: a stream's
        # entry comes after the entries of all its out-of-order counters.
        self._recency: OrderedDict[_StreamKey | _CounterKey, None] = OrderedDict()

    @classmethod
    def from_config(cls, messaging: MessagingConfig) -> DedupWindow:
        """
        @param messaging: the node's C{messaging:} configuration.
        @return: a window of C{messaging.dedup_window} ids.
        """
        return cls(capacity=messaging.dedup_window)

    def __len__(self) -> int:
        """
        @return: how many entries the window holds (at most C{2 * capacity}).
        """
        return len(self._recency)

    def contains(self, msg_id: MessageId) -> bool:
        """
        @return: whether C{msg_id} was recorded (and not evicted); changes
            nothing.
        """
        stream = self._streams.get((msg_id.node_id, msg_id.incarnation))
        if stream is None:
            return False
        counter = msg_id.counter
        if counter <= stream.low:
            return counter != 0 or stream.zero
        return counter in stream.above

    def seen(self, msg_id: MessageId) -> bool:
        """
        Record C{msg_id}.

        @return: C{True} when it was recorded before (a duplicate), C{False}
            when it is new.
        """
        if self.contains(msg_id):
            return True
        self.record(msg_id)
        return False

    def record(self, msg_id: MessageId) -> None:
        """
        Record C{msg_id}, which L{contains} just said is not recorded (the
        second half of L{seen}, for callers that asked already).
        """
        key = (msg_id.node_id, msg_id.incarnation)
        counter = msg_id.counter
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream()
        recency = self._recency
        if counter == 0:
            stream.zero = True
            if key in recency:
                recency.move_to_end(key)
                return
        elif counter == stream.low + 1:
            above = stream.above
            if above:
                while counter + 1 in above:
                    counter += 1
                    above.remove(counter)
                    del recency[(key[0], key[1], counter)]
            stream.low = counter
            if key in recency:
                # After the counter entries, to keep the invariant.
                recency.move_to_end(key)
                return  # nothing was added: nothing to evict
        else:
            stream.above.add(counter)
            recency[(key[0], key[1], counter)] = None
            if key in recency:
                recency.move_to_end(key)
        recency[key] = None
        if len(recency) > self._limit:
            self._evict()

    def forget(self, node_id: str) -> None:
        """
        Drop every stream of C{node_id} (all its incarnations).
        """
        for key in [key for key in self._streams if key[0] == node_id]:
            stream = self._streams.pop(key)
            for counter in stream.above:
                del self._recency[(key[0], key[1], counter)]
            del self._recency[key]

    def _evict(self) -> None:
        while len(self._recency) > self._limit:
            entry, _ = self._recency.popitem(last=False)
            self.evicted += 1
            if len(entry) == 3:
                self._streams[(entry[0], entry[1])].above.discard(entry[2])  # type: ignore[misc]
            else:
                # The invariant means its out-of-order counters went first.
                del self._streams[entry]  # type: ignore[arg-type]
                log.debug(
                    "dedup window forgot stream {node_id}:{incarnation}",
                    node_id=entry[0],
                    incarnation=entry[1],
                )
