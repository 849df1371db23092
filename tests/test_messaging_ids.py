"""
Tests for L{clustron.messaging.ids}.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from clustron.messaging.ids import MAX_NUMBER, MessageId, MessageIdSource
from clustron.messaging.interfaces import IMessageIdSource

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)

node_ids = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp", "Cf", "Co", "Cn")),
    min_size=1,
    max_size=40,
).filter(lambda text: text.isprintable() and not any(ch.isspace() for ch in text))
numbers = st.integers(min_value=0, max_value=MAX_NUMBER)


class MessageIdTests(SynchronousTestCase):
    """
    L{MessageId} and its string form.
    """

    def test_str(self) -> None:
        """
        The string form is node:incarnation:counter.
        """
        self.assertEqual(str(MessageId("n1", 1732800000, 42)), "n1:1732800000:42")

    def test_parse(self) -> None:
        """
        L{MessageId.parse} reads the string form back.
        """
        self.assertEqual(MessageId.parse("n1:1732800000:42"), MessageId("n1", 1732800000, 42))

    def test_parse_node_with_colons(self) -> None:
        """
        A node id may hold colons: the last two fields are the numbers.
        """
        msg_id = MessageId("10.0.0.1:7101", 3, 0)
        self.assertEqual(str(msg_id), "10.0.0.1:7101:3:0")
        self.assertEqual(MessageId.parse(str(msg_id)), msg_id)

    def test_parse_rejects(self) -> None:
        """
        Malformed strings are refused with a ValueError naming the input.
        """
        for text in [
            "",
            "n1",
            "n1:1",
            ":1:2",
            "n1:-1:2",
            "n1:+1:2",
            "n1:01:2",
            "n1:1:02",
            "n1:1: 2",
            "n1:1:2 ",
            "n 1:1:2",
            "n1:1:x",
            "n1:1:",
            "n1:1:٣",
            f"n1:1:{MAX_NUMBER + 1}",
            "n1:1:" + "9" * 30,
            "x" * 400 + ":1:2",
        ]:
            with self.assertRaises(ValueError, msg=text) as caught:
                MessageId.parse(text)
            self.assertIn("message id", str(caught.exception))

    def test_parse_rejects_after_valid(self) -> None:
        """
        Parsing remembers streams seen valid to go faster, but a malformed
        counter is refused all the same once its stream is known.
        """
        self.assertEqual(MessageId.parse("n9:1:2"), MessageId("n9", 1, 2))
        self.assertEqual(MessageId.parse("n9:1:3"), MessageId("n9", 1, 3))
        for text in ["n9:1:", "n9:1:02", "n9:1:-3", "n9:1: 3", "n9:1:٣", f"n9:1:{MAX_NUMBER + 1}"]:
            with self.assertRaises(ValueError, msg=text):
                MessageId.parse(text)

    def test_parse_non_str(self) -> None:
        """
        Parsing something else than a str is a ValueError too (input from
        peers may be of any type).
        """
        for value in [None, 42, b"n1:1:2", ["n1", 1, 2]]:
            self.assertRaises(ValueError, MessageId.parse, value)

    def test_validation(self) -> None:
        """
        The constructor checks every field.
        """
        self.assertRaises(TypeError, MessageId, 1, 1, 1)
        self.assertRaises(ValueError, MessageId, "", 1, 1)
        self.assertRaises(ValueError, MessageId, "a b", 1, 1)
        self.assertRaises(ValueError, MessageId, "a\n", 1, 1)
        self.assertRaises(ValueError, MessageId, "n" * 256, 1, 1)
        self.assertRaises(TypeError, MessageId, "n1", True, 1)
        self.assertRaises(TypeError, MessageId, "n1", 1, 1.0)
        self.assertRaises(ValueError, MessageId, "n1", -1, 1)
        self.assertRaises(ValueError, MessageId, "n1", 1, MAX_NUMBER + 1)

    def test_order_and_stream(self) -> None:
        """
        Ids order by node, incarnation, counter; C{stream} is the sender
        incarnation.
        """
        self.assertLess(MessageId("a", 2, 9), MessageId("a", 3, 1))
        self.assertLess(MessageId("a", 3, 1), MessageId("a", 3, 2))
        self.assertLess(MessageId("a", 9, 9), MessageId("b", 0, 0))
        self.assertEqual(MessageId("a", 3, 1).stream, ("a", 3))

    def test_hashable(self) -> None:
        """
        Equal ids hash equal, so they work as dict keys.
        """
        self.assertEqual({MessageId("a", 1, 2): 1}[MessageId.parse("a:1:2")], 1)

    @PROPERTY
    @given(node_ids, numbers, numbers)
    def test_roundtrip(self, node_id: str, incarnation: int, counter: int) -> None:
        """
        Every valid id parses back from its string form.
        """
        msg_id = MessageId(node_id, incarnation, counter)
        self.assertEqual(MessageId.parse(str(msg_id)), msg_id)


class MessageIdSourceTests(SynchronousTestCase):
    """
    L{MessageIdSource}.
    """

    def test_interface(self) -> None:
        """
        It provides L{IMessageIdSource}.
        """
        self.assertTrue(verifyObject(IMessageIdSource, MessageIdSource("n1", 5)))

    def test_counts_up(self) -> None:
        """
        Ids count up by one from C{start}, in the source's incarnation.
        """
        source = MessageIdSource("n1", 5, start=10)
        self.assertEqual(
            [source.next_id() for _ in range(3)],
            [MessageId("n1", 5, 10), MessageId("n1", 5, 11), MessageId("n1", 5, 12)],
        )

    def test_starts_at_one(self) -> None:
        """
        By default the first counter is 1.
        """
        self.assertEqual(MessageIdSource("n1", 5).next_id(), MessageId("n1", 5, 1))

    def test_validates(self) -> None:
        """
        A bad node id or incarnation is refused at construction.
        """
        self.assertRaises(ValueError, MessageIdSource, "", 5)
        self.assertRaises(ValueError, MessageIdSource, "n1", -5)

    def test_exhausted(self) -> None:
        """
        Passing 2**64-1 is refused rather than wrapping.
        """
        source = MessageIdSource("n1", 5, start=MAX_NUMBER)
        source.next_id()
        self.assertRaises(ValueError, source.next_id)
        source = MessageIdSource("n1", 5, start=MAX_NUMBER)
        source.next_text()
        self.assertRaises(ValueError, source.next_text)

    def test_next_text(self) -> None:
        """
        L{MessageIdSource.next_text} hands out the next id in string form,
        from the same counter as L{MessageIdSource.next_id}.
        """
        source = MessageIdSource("n1", 5)
        self.assertEqual(source.next_text(), "n1:5:1")
        self.assertEqual(source.next_id(), MessageId("n1", 5, 2))
        self.assertEqual(MessageId.parse(source.next_text()), MessageId("n1", 5, 3))
