"""
Tests for L{clustron.messaging.message}.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from clustron.messaging.ids import MessageId
from clustron.messaging.message import ORDERS, Message, Position


def make(**overrides: Any) -> Message:
    fields: dict[str, Any] = {
        "topic": "orders",
        "body": {"n": 1},
        "sender": "n1",
        "id": MessageId("n1", 7, 3),
    }
    fields.update(overrides)
    return Message(**fields)


class MessageTests(SynchronousTestCase):
    """
    L{Message} and L{Position}.
    """

    def test_defaults(self) -> None:
        """
        A message is unicast with no correlation id and no position unless
        told otherwise.
        """
        message = make()
        self.assertEqual(message.order, "unicast")
        self.assertIsNone(message.correlation_id)
        self.assertIsNone(message.position)
        self.assertEqual(message.body, {"n": 1})

    def test_frozen(self) -> None:
        """
        Messages are immutable.
        """
        message = make()
        with self.assertRaises(attrs.exceptions.FrozenInstanceError):
            message.topic = "other"  # type: ignore[misc]

    def test_keyword_only(self) -> None:
        """
        Fields are given by name.
        """
        self.assertRaises(TypeError, Message, "t", 1, "n1", MessageId("n1", 1, 1))

    def test_total_has_position(self) -> None:
        """
        A total-order message carries its position; others must not.
        """
        message = make(order="total", position=Position(3, 17))
        self.assertEqual(message.position, Position(epoch=3, seq=17))
        self.assertRaises(ValueError, make, order="total")
        self.assertRaises(ValueError, make, order="fifo", position=Position(3, 17))

    def test_orders(self) -> None:
        """
        Every order in L{ORDERS} is accepted, and nothing else.
        """
        for order in ORDERS:
            kwargs: dict[str, Any] = {"order": order}
            if order == "total":
                kwargs["position"] = Position(0, 0)
            self.assertEqual(make(**kwargs).order, order)
        self.assertRaises(ValueError, make, order="lifo")

    def test_validation(self) -> None:
        """
        Topic and sender must be non-empty str, the id a L{MessageId} issued
        by the sender, the correlation id None or a non-empty str.
        """
        self.assertRaises(ValueError, make, topic="")
        self.assertRaises(ValueError, make, sender="")
        self.assertRaises(TypeError, make, id="n1:7:3")
        with self.assertRaises(ValueError) as caught:
            make(sender="n2")
        self.assertIn("n2", str(caught.exception))
        self.assertRaises(ValueError, make, correlation_id="")
        self.assertEqual(make(correlation_id="n2:1:9").correlation_id, "n2:1:9")

    def test_position_order(self) -> None:
        """
        Positions order by epoch, then sequence number, and are validated.
        """
        self.assertLess(Position(1, 99), Position(2, 0))
        self.assertLess(Position(2, 0), Position(2, 1))
        self.assertRaises(ValueError, Position, -1, 0)
        self.assertRaises(ValueError, Position, 0, True)
