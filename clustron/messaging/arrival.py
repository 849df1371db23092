"""
What an ordering buffer (FIFO, causal) did with a message offered to it.

The C{taken} flag is what the reliability layer needs: a message that was
not taken must not be recorded as received nor acknowledged, so that its
sender retransmits it. Every other outcome -- delivered, buffered, a
duplicate, or from a stream that can never deliver it again -- needs no
retransmission.
"""

from __future__ import annotations

from typing import Any

import attrs

#: The message was delivered (with whatever it unblocked).
DELIVERED = "delivered"
#: The message waits in the reorder buffer for what precedes it.
BUFFERED = "buffered"
#: The message was delivered or buffered before.
DUPLICATE = "duplicate"
#: The message belongs to a superseded stream (an older incarnation).
STALE = "stale"
#: The message comes from a member this buffer was told to forget.
FORGOTTEN = "forgotten"
#: Not taken: the reorder buffer is full; the sender must retransmit.
BUFFER_FULL = "buffer_full"
#: Not taken: the buffer tracks as many senders as it may.
TOO_MANY_STREAMS = "too_many_streams"

#: Every reason, for metric labels.
REASONS = (DELIVERED, BUFFERED, DUPLICATE, STALE, FORGOTTEN, BUFFER_FULL, TOO_MANY_STREAMS)


@attrs.frozen
class Arrival:
    """
    The outcome of offering one message to an ordering buffer.

    @ivar taken: False only when the message was refused for lack of room
        and must be retransmitted.
    @ivar reason: one of L{REASONS}.
    @ivar deliver: the payloads now deliverable, in delivery order: the
        offered message's and every buffered one it unblocked.
    """

    taken: bool
    reason: str
    deliver: tuple[Any, ...] = ()
