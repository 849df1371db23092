"""
The message an application's handlers receive.
"""

from __future__ import annotations

from typing import Any

import attrs

from clustron.messaging.ids import MessageId

#: The delivery orders a message may have come with.
ORDERS = ("unicast", "fifo", "causal", "total")


def _check_text(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"message {attribute.name} must be a non-empty str, not {value!r}")


def _check_non_negative(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"position {attribute.name} must be an int >= 0, not {value!r}")


@attrs.frozen(order=True)
class Position:
    """
    A message's place in the total order: the coordinator's epoch, then the
    sequence number the coordinator assigned within it.
    """

    epoch: int = attrs.field(validator=_check_non_negative)
    seq: int = attrs.field(validator=_check_non_negative)


@attrs.frozen(kw_only=True)
class Message:
    """
    One received message.

    @ivar topic: what handlers subscribe to.
    @ivar body: the decoded body (anything the serializer decodes).
    @ivar sender: the node that sent it.
    @ivar id: its unique id; C{id.node_id} is C{sender}.
    @ivar correlation_id: for a reply, the id (string form) of the request
        it answers; None otherwise.
    @ivar order: how it was delivered: C{"unicast"}, C{"fifo"},
        C{"causal"} or C{"total"}.
    @ivar position: for C{"total"}, its L{Position} in the total order;
        None for the other orders.
    """

    topic: str = attrs.field(validator=_check_text)
    body: Any
    sender: str = attrs.field(validator=_check_text)
    id: MessageId = attrs.field(validator=attrs.validators.instance_of(MessageId))
    correlation_id: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(_check_text)
    )
    order: str = attrs.field(default="unicast", validator=attrs.validators.in_(ORDERS))
    position: Position | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(Position))
    )

    def __attrs_post_init__(self) -> None:
        if self.id.node_id != self.sender:
            raise ValueError(
                f"message id {self.id} was not issued by its sender {self.sender!r}"
            )
        if (self.order == "total") != (self.position is not None):
            raise ValueError(
                "a message has a position exactly when its order is 'total'"
                f" (order {self.order!r}, position {self.position!r})"
            )
