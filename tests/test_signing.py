"""
Frame signing with HMAC-SHA256: rotation, tampering, replay, unsigned peers.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from clustron.errors import FrameError
from clustron.testkit.cluster import SimCluster
from clustron.wire import framing
from clustron.wire.framing import FrameDecoder, HmacSha256, encode_frame

K1 = b"a-very-secret-key-of-32-bytes!!!"
K2 = b"another-secret-key-0123456789abc"


def pair(
    keys_a: list[bytes], keys_b: list[bytes], session: bytes = b"s"
) -> tuple[HmacSha256, FrameDecoder]:
    sender = HmacSha256(keys_a, session)
    decoder = FrameDecoder(1 << 20, HmacSha256(keys_b, session))
    return sender, decoder


class HmacFramingTests(SynchronousTestCase):
    """
    The HMAC trailer as a sans-IO unit.
    """

    def test_roundtrip(self) -> None:
        sender, decoder = pair([K1], [K1])
        frames = decoder.feed(encode_frame(framing.MESSAGE, b"payload", 1, sender))
        self.assertEqual([f.payload for f in frames], [b"payload"])

    def test_rotation_secondary_key_verifies(self) -> None:
        """
        A receiver holding the old and the new key accepts frames signed
        with either.
        """
        old_sender, decoder = pair([K1], [K2, K1])
        new_sender = HmacSha256([K2, K1], b"s")
        data = encode_frame(framing.MESSAGE, b"a", 1, old_sender)
        self.assertEqual(len(decoder.feed(data)), 1)
        new_sender._sent = 5  # a later frame of the same direction
        self.assertEqual(len(decoder.feed(encode_frame(framing.MESSAGE, b"b", 1, new_sender))), 1)

    def test_unknown_key_refused(self) -> None:
        sender, decoder = pair([K2], [K1])
        with self.assertRaises(FrameError) as raised:
            decoder.feed(encode_frame(framing.MESSAGE, b"x", 1, sender))
        self.assertEqual(raised.exception.reason, "bad_signature")

    def test_replay_refused(self) -> None:
        sender, decoder = pair([K1], [K1])
        data = encode_frame(framing.MESSAGE, b"x", 1, sender)
        decoder.feed(data)
        with self.assertRaises(FrameError) as raised:
            decoder.feed(data)
        self.assertEqual(raised.exception.reason, "bad_signature")

    def test_other_session_refused(self) -> None:
        """
        A frame captured on one connection is refused on another.
        """
        sender = HmacSha256([K1], b"session-one")
        decoder = FrameDecoder(1 << 20, HmacSha256([K1], b"session-two"))
        with self.assertRaises(FrameError):
            decoder.feed(encode_frame(framing.MESSAGE, b"x", 1, sender))

    def test_unsigned_frame_refused(self) -> None:
        decoder = FrameDecoder(1 << 20, HmacSha256([K1], b"s"))
        with self.assertRaises(FrameError) as raised:
            decoder.feed(encode_frame(framing.MESSAGE, b"x" * 64, 1, framing.Crc32()))
        self.assertIn(raised.exception.reason, ("integrity_mismatch", "undersized"))

    @settings(max_examples=200, deadline=None)
    @given(st.binary(min_size=1, max_size=200), st.integers(min_value=0), st.integers(0, 7))
    def test_any_tampering_refused(self, payload: bytes, position: int, bit: int) -> None:
        sender, decoder = pair([K1], [K1])
        data = bytearray(encode_frame(framing.MESSAGE, payload, 1, sender))
        index = 4 + position % (len(data) - 4)
        data[index] ^= 1 << bit
        with self.assertRaises(FrameError):
            decoder.feed(bytes(data))


class SignedClusterTests(SynchronousTestCase):
    """
    Whole clusters with signing on.
    """

    def setUp(self) -> None:
        os.environ["CLUSTRON_TEST_K1"] = K1.decode()
        os.environ["CLUSTRON_TEST_K2"] = K2.decode()
        self.addCleanup(os.environ.pop, "CLUSTRON_TEST_K1", None)
        self.addCleanup(os.environ.pop, "CLUSTRON_TEST_K2", None)

    def signed(self, keys: list[str]) -> dict[str, Any]:
        return {"security": {"signing": "hmac-sha256", "keys": [{"env": k} for k in keys]}}

    def test_signed_cluster_forms_and_messages(self) -> None:
        cluster = SimCluster(3, seed=2, overrides=self.signed(["CLUSTRON_TEST_K1"]))
        cluster.start()
        self.assertTrue(cluster.run_until(cluster.converged, 3))
        got: list[Any] = []
        cluster.nodes["n2"].on_message("t", lambda m: got.append(m.body))
        cluster.nodes["n1"].send("n2", "t", "hello")
        cluster.run(0.2)
        self.assertEqual(got, ["hello"])

    def test_rolling_key_rotation(self) -> None:
        """
        Mid-rotation, nodes that sign with the new key and nodes that still
        sign with the old one (each accepting both) form one cluster.
        """
        cluster = SimCluster(
            3,
            seed=3,
            overrides=self.signed(["CLUSTRON_TEST_K1", "CLUSTRON_TEST_K2"]),
            per_node={"n3": self.signed(["CLUSTRON_TEST_K2", "CLUSTRON_TEST_K1"])},
        )
        cluster.start()
        self.assertTrue(cluster.run_until(cluster.converged, 3))

    def test_wrong_key_refused_and_counted(self) -> None:
        cluster = SimCluster(
            3,
            seed=3,
            overrides=self.signed(["CLUSTRON_TEST_K1"]),
            per_node={"n3": self.signed(["CLUSTRON_TEST_K2"])},
        )
        cluster.start()
        cluster.run(3)
        self.assertTrue(cluster.converged(["n1", "n2"]))
        self.assertFalse(cluster.nodes["n3"].membership.joined)
        value = cluster.nodes["n1"].metrics.registry.get_sample_value(
            "clustron_frame_errors_total", {"reason": "bad_signature"}
        )
        self.assertGreater(value, 0)

    def test_unsigned_node_refused_at_handshake(self) -> None:
        cluster = SimCluster(
            3,
            seed=3,
            overrides=self.signed(["CLUSTRON_TEST_K1"]),
            per_node={"n3": {"security": {"signing": "crc32", "keys": []}}},
        )
        cluster.start()
        cluster.run(3)
        self.assertTrue(cluster.converged(["n1", "n2"]))
        self.assertFalse(cluster.nodes["n3"].membership.joined)

    def test_keys_never_in_status(self) -> None:
        cluster = SimCluster(3, seed=2, overrides=self.signed(["CLUSTRON_TEST_K1"]))
        cluster.start()
        cluster.run(1)
        import json

        text = json.dumps(cluster.nodes["n1"].status())
        self.assertNotIn(K1.decode(), text)
