"""
Tests for L{clustron.messaging.dedup}.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from clustron.config import MessagingConfig
from clustron.messaging.dedup import DedupWindow
from clustron.messaging.ids import MessageId
from clustron.messaging.interfaces import IDuplicateFilter

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)


def mid(node: str, counter: int, incarnation: int = 1) -> MessageId:
    return MessageId(node, incarnation, counter)


class DedupWindowTests(SynchronousTestCase):
    """
    L{DedupWindow}.
    """

    def test_interface(self) -> None:
        """
        It provides L{IDuplicateFilter}.
        """
        self.assertTrue(verifyObject(IDuplicateFilter, DedupWindow(8)))

    def test_default_capacity(self) -> None:
        """
        The default capacity is C{messaging.dedup_window}'s default, and
        L{DedupWindow.from_config} reads it from a config.
        """
        self.assertEqual(DedupWindow().capacity, MessagingConfig().dedup_window)
        window = DedupWindow.from_config(MessagingConfig(dedup_window=7))
        self.assertEqual(window.capacity, 7)

    def test_capacity_validated(self) -> None:
        """
        The capacity must be a positive int.
        """
        for bad in [0, -1, 1.5, True, "8"]:
            self.assertRaises(ValueError, DedupWindow, bad)

    def test_new_then_seen(self) -> None:
        """
        An id is new once, then seen.
        """
        window = DedupWindow(8)
        self.assertFalse(window.seen(mid("a", 1)))
        self.assertTrue(window.seen(mid("a", 1)))
        self.assertTrue(window.seen(mid("a", 1)))

    def test_record(self) -> None:
        """
        L{DedupWindow.record} is the second half of L{DedupWindow.seen}, for
        an id L{DedupWindow.contains} said is new.
        """
        window = DedupWindow(8)
        for counter in (0, 2, 1, 4):
            self.assertFalse(window.contains(mid("a", counter)))
            window.record(mid("a", counter))
            self.assertTrue(window.contains(mid("a", counter)))
        self.assertFalse(window.contains(mid("a", 3)))
        self.assertEqual(len(window), 2)  # the stream (up to 2) and 4

    def test_counting_from_one_is_compact(self) -> None:
        """
        Ids as a L{MessageIdSource} hands them out (from 1) keep one entry
        per sender however many arrive; a counter 0 is still new until
        recorded.
        """
        window = DedupWindow(8)
        for counter in range(1, 100):
            self.assertFalse(window.seen(mid("a", counter)))
        self.assertEqual(len(window), 1)
        self.assertFalse(window.contains(mid("a", 0)))
        self.assertFalse(window.seen(mid("a", 0)))
        self.assertTrue(window.seen(mid("a", 0)))
        self.assertTrue(window.contains(mid("a", 99)))
        self.assertEqual(len(window), 1)

    def test_contains_does_not_record(self) -> None:
        """
        L{DedupWindow.contains} answers without recording.
        """
        window = DedupWindow(8)
        self.assertFalse(window.contains(mid("a", 1)))
        self.assertFalse(window.seen(mid("a", 1)))
        self.assertTrue(window.contains(mid("a", 1)))

    def test_streams_are_separate(self) -> None:
        """
        The same counter from another node or another incarnation is a
        different id.
        """
        window = DedupWindow(8)
        window.seen(mid("a", 1))
        self.assertFalse(window.seen(mid("b", 1)))
        self.assertFalse(window.seen(mid("a", 1, incarnation=2)))

    def test_in_order_is_compact(self) -> None:
        """
        Ids received in counter order cost one entry per stream, however
        many: they are all remembered by the low-water mark.
        """
        window = DedupWindow(4)
        for counter in range(1000):
            self.assertFalse(window.seen(mid("a", counter)))
        self.assertEqual(len(window), 1)
        self.assertTrue(window.seen(mid("a", 0)))
        self.assertTrue(window.seen(mid("a", 999)))
        self.assertFalse(window.seen(mid("a", 1000)))

    def test_gap_closes(self) -> None:
        """
        Out-of-order ids are kept above the mark until the gap closes; then
        they are absorbed.
        """
        window = DedupWindow(8)
        for counter in [0, 2, 3, 5]:
            window.seen(mid("a", counter))
        self.assertEqual(len(window), 4)  # the stream and 2, 3, 5
        window.seen(mid("a", 1))
        self.assertEqual(len(window), 2)  # the stream (mark 3) and 5
        self.assertFalse(window.contains(mid("a", 4)))
        for counter in [0, 1, 2, 3, 5]:
            self.assertTrue(window.contains(mid("a", counter)))

    def test_bounded(self) -> None:
        """
        The window never holds more than C{2 * capacity} entries, and the
        oldest ids are the ones forgotten.
        """
        window = DedupWindow(4)
        for counter in range(0, 200, 2):  # never contiguous
            window.seen(mid("a", counter))
            self.assertLessEqual(len(window), 8)
        self.assertTrue(window.contains(mid("a", 198)))
        self.assertFalse(window.contains(mid("a", 2)))
        self.assertGreater(window.evicted, 0)

    def test_lru_over_senders(self) -> None:
        """
        Streams that were not recorded to for longest are forgotten first.
        """
        window = DedupWindow(2)
        for node in ["a", "b", "c", "d", "e"]:
            window.seen(mid(node, 0))
        self.assertLessEqual(len(window), 4)
        self.assertFalse(window.contains(mid("a", 0)))
        self.assertTrue(window.contains(mid("e", 0)))
        self.assertTrue(window.contains(mid("d", 0)))

    def test_duplicates_do_not_refresh(self) -> None:
        """
        Answering a duplicate changes nothing: a flood of duplicates cannot
        keep an old stream in the window at the expense of new ids.
        """
        window = DedupWindow(1)
        window.seen(mid("a", 0))
        window.seen(mid("b", 0))
        self.assertTrue(window.seen(mid("a", 0)))
        window.seen(mid("c", 0))
        self.assertFalse(window.contains(mid("a", 0)))
        self.assertTrue(window.contains(mid("c", 0)))

    def test_forget(self) -> None:
        """
        L{DedupWindow.forget} drops every incarnation of a node, and only
        that node.
        """
        window = DedupWindow(8)
        window.seen(mid("a", 0))
        window.seen(mid("a", 5))
        window.seen(mid("a", 0, incarnation=2))
        window.seen(mid("b", 0))
        window.forget("a")
        self.assertEqual(len(window), 1)
        self.assertFalse(window.contains(mid("a", 0)))
        self.assertFalse(window.contains(mid("a", 5)))
        self.assertFalse(window.contains(mid("a", 0, incarnation=2)))
        self.assertTrue(window.contains(mid("b", 0)))
        window.forget("nobody")

    @PROPERTY
    @given(
        st.integers(min_value=1, max_value=12),
        st.lists(
            st.tuples(
                st.sampled_from(["a", "b", "c"]),
                st.integers(min_value=1, max_value=2),
                st.integers(min_value=0, max_value=30),
            ),
            max_size=300,
        ),
    )
    def test_window_guarantee(
        self, capacity: int, arrivals: list[tuple[str, int, int]]
    ) -> None:
        """
        Whatever the arrivals: a new id is never reported seen, an id among
        the last C{capacity} new ids is always reported seen, and the window
        stays within C{2 * capacity} entries.
        """
        window = DedupWindow(capacity)
        recorded: list[MessageId] = []
        for node, incarnation, counter in arrivals:
            msg_id = MessageId(node, incarnation, counter)
            before = window.contains(msg_id)
            result = window.seen(msg_id)
            self.assertEqual(before, result)
            if result:
                self.assertIn(msg_id, recorded)
            else:
                self.assertNotIn(msg_id, recorded[-capacity:])
                recorded.append(msg_id)
            self.assertLessEqual(len(window), 2 * capacity)
            for old in recorded[-capacity:]:
                self.assertTrue(window.contains(old))
