"""
Unique message ids.

A message id is C{(node_id, incarnation, counter)}: the sending node, the
incarnation of that node's process (so a restarted node never reuses an
id), and a counter that the incarnation increases by one per message. Its
string form, used on the wire and in logs, is C{"n1:1732800000:42"}.
"""

from __future__ import annotations

import re

import attrs
from zope.interface import implementer

from clustron.messaging.interfaces import IMessageIdSource

#: The largest incarnation or counter an id may carry (unsigned 64 bits).
MAX_NUMBER = 2**64 - 1

#: The longest node id an id may carry, in characters.
MAX_NODE_ID_LENGTH = 255

_NUMBER = re.compile(r"0|[1-9][0-9]{0,19}")


def _check_node_id(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"message id {attribute.name} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"message id {attribute.name} must not be empty")
    if len(value) > MAX_NODE_ID_LENGTH:
        raise ValueError(
            f"message id {attribute.name} is {len(value)} characters long;"
            f" the limit is {MAX_NODE_ID_LENGTH}"
        )
    if not value.isprintable() or any(ch.isspace() for ch in value):
        raise ValueError(
            f"message id {attribute.name} {value!r} holds whitespace or unprintable characters"
        )


def _check_number(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"message id {attribute.name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= MAX_NUMBER:
        raise ValueError(
            f"message id {attribute.name} must be between 0 and 2**64-1, not {value}"
        )


@attrs.frozen(order=True)
class MessageId:
    """
    The unique id of one message.

    Ids order by node id, then incarnation, then counter.

    @ivar node_id: the sending node.
    @ivar incarnation: the sending node's incarnation.
    @ivar counter: the message's number within that incarnation.
    """

    node_id: str = attrs.field(validator=_check_node_id)
    incarnation: int = attrs.field(validator=_check_number)
    counter: int = attrs.field(validator=_check_number)

    def __str__(self) -> str:
        return f"{self.node_id}:{self.incarnation}:{self.counter}"

    @property
    def stream(self) -> tuple[str, int]:
        """
        @return: C{(node_id, incarnation)}: the sender's incarnation, within
            which counters are unique and increasing.
        """
        return (self.node_id, self.incarnation)

    @classmethod
    def parse(cls, text: object) -> MessageId:
        """
        Parse the string form C{"node:incarnation:counter"}.

        The node id may itself hold colons (the last two fields are the
        numbers). Numbers are plain decimal without sign or leading zeros, so
        every id has exactly one string form.

        @raise ValueError: naming the input and what is wrong with it.
        """
        if type(text) is str and cls is MessageId:
            # The common case first: a well-formed id of a stream (node id
            # and incarnation) seen valid before; what the checks below
            # come to, but for its counter.
            head, _, tail = text.rpartition(":")
            stream = _VALID_STREAMS.get(head)
            if stream is not None and _NUMBER.fullmatch(tail):
                value = int(tail)
                if value <= MAX_NUMBER:
                    # _make(node_id, incarnation, counter), inline.
                    made = object.__new__(MessageId)
                    object.__setattr__(made, "node_id", stream[0])
                    object.__setattr__(made, "incarnation", stream[1])
                    object.__setattr__(made, "counter", value)
                    return made
        if not isinstance(text, str):
            raise ValueError(f"a message id must be a str, not {type(text).__name__}")
        if len(text) > MAX_NODE_ID_LENGTH + 42:
            raise ValueError(f"message id {text[:40]!r}... is too long ({len(text)} characters)")
        parts = text.rsplit(":", 2)
        if len(parts) != 3:
            raise ValueError(f"message id {text!r} is not of the form node:incarnation:counter")
        node_id, incarnation, counter = parts
        for name, number in (("incarnation", incarnation), ("counter", counter)):
            if not _NUMBER.fullmatch(number):
                raise ValueError(
                    f"message id {text!r}: {name} {number!r} is not a decimal number"
                    " without sign or leading zeros"
                )
        try:
            msg_id = cls(node_id, int(incarnation), int(counter))
        except (TypeError, ValueError) as e:
            raise ValueError(f"message id {text!r}: {e}") from None
        if len(_VALID_STREAMS) >= _VALID_STREAMS_KEPT:
            _VALID_STREAMS.clear()
        _VALID_STREAMS[f"{node_id}:{incarnation}"] = (node_id, msg_id.incarnation)
        return msg_id


#: The C{"node:incarnation"} heads of ids that passed validation, with their
#: two values (a bounded memo for L{MessageId.parse}).
_VALID_STREAMS: dict[str, tuple[str, int]] = {}
_VALID_STREAMS_KEPT = 4096


def _make(node_id: str, incarnation: int, counter: int) -> MessageId:
    """
    A L{MessageId} of values known valid, without running the validators.
    """
    msg_id = object.__new__(MessageId)
    object.__setattr__(msg_id, "node_id", node_id)
    object.__setattr__(msg_id, "incarnation", incarnation)
    object.__setattr__(msg_id, "counter", counter)
    return msg_id


@implementer(IMessageIdSource)
class MessageIdSource:
    """
    Hands out the ids of the messages one node incarnation sends, counting
    up from C{start}.

    @ivar node_id: the sending node.
    @ivar incarnation: its incarnation.
    """

    def __init__(self, node_id: str, incarnation: int, start: int = 1) -> None:
        """
        @param start: the first counter handed out.
        @raise ValueError: when the node id, incarnation or start is invalid.
        """
        MessageId(node_id, incarnation, start)  # validates all three
        self.node_id = node_id
        self.incarnation = incarnation
        self._prefix = f"{node_id}:{incarnation}:"
        self._next = start

    def next_id(self) -> MessageId:
        """
        @return: a new id, one above the previous.
        @raise ValueError: when the counter would pass 2**64-1.
        """
        counter = self._next
        if counter > MAX_NUMBER:
            raise ValueError(f"message id counter must be between 0 and 2**64-1, not {counter}")
        # The node id and incarnation were validated once, in __init__, and
        # the counter just now: skip the validators, which cost more than
        # the rest of creating an id (one id per message sent).
        self._next = counter + 1
        return _make(self.node_id, self.incarnation, counter)

    def next_text(self) -> str:
        """
        L{next_id} in string form, without making the L{MessageId}.

        @raise ValueError: when the counter would pass 2**64-1.
        """
        counter = self._next
        if counter > MAX_NUMBER:
            raise ValueError(f"message id counter must be between 0 and 2**64-1, not {counter}")
        self._next = counter + 1
        return f"{self._prefix}{counter}"
