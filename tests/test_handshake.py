"""
Tests for L{clustron.wire.handshake}: HELLO parsing, the acceptance rules and
the one-connection-per-pair rule.
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from clustron.errors import ProtocolViolation
from clustron.wire.framing import PROTOCOL_MAJOR, PROTOCOL_MINOR
from clustron.wire.handshake import (
    CLUSTER_ID_MISMATCH,
    DUPLICATE_NODE_ID,
    MALFORMED_HELLO,
    PROTOCOL_VERSION,
    SELF_CONNECTION,
    SIGNING_MISMATCH,
    UNKNOWN_SERIALIZER,
    Hello,
    Reject,
    check_hello,
    keep_connection,
)

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)

KNOWN = frozenset({"json", "msgpack"})


def hello(**changes: Any) -> Hello:
    """
    A valid HELLO, with some fields changed.
    """
    base = Hello(
        cluster_id="prod",
        node_id="node-1",
        incarnation=1700000000000,
        protocol=(PROTOCOL_MAJOR, PROTOCOL_MINOR),
        app_version="2.3.4",
        address="10.1.2.3:7101",
        serializer="json",
        priority=5,
        signing="crc32",
        nonce="0123456789abcdef",
    )
    return attrs.evolve(base, **changes)


def payload(**changes: Any) -> dict[str, Any]:
    """
    A valid HELLO payload, with some keys changed (C{DELETE} removes one).
    """
    data = hello().to_dict()
    for key, value in changes.items():
        if value is DELETE:
            del data[key]
        else:
            data[key] = value
    return data


DELETE = object()


class HelloTests(SynchronousTestCase):
    """
    L{Hello.to_dict} and L{Hello.from_dict}.
    """

    def test_roundtrip(self) -> None:
        """
        A HELLO survives C{to_dict} and C{from_dict}; the protocol version is
        a list on the wire (as JSON has no tuples).
        """
        original = hello()
        data = original.to_dict()
        self.assertEqual(data["protocol"], [PROTOCOL_MAJOR, PROTOCOL_MINOR])
        self.assertEqual(Hello.from_dict(data), original)

    def test_optional_fields(self) -> None:
        """
        C{priority}, C{signing} and C{nonce} may be left out.
        """
        parsed = Hello.from_dict(payload(priority=DELETE, signing=DELETE, nonce=DELETE))
        self.assertEqual((parsed.priority, parsed.signing, parsed.nonce), (0, "crc32", ""))

    def test_extra_fields_ignored(self) -> None:
        """
        Unknown keys (from a newer minor version) are ignored.
        """
        self.assertEqual(Hello.from_dict(payload(future_field={"x": 1})), hello())

    def test_bracketed_ipv6_address(self) -> None:
        """
        An IPv6 address in brackets is accepted.
        """
        self.assertEqual(Hello.from_dict(payload(address="[::1]:7101")).address, "[::1]:7101")

    def assertMalformed(self, data: Any, field: str | None = None) -> None:
        """
        C{from_dict(data)} raises L{ProtocolViolation} with reason
        C{malformed_hello}, naming C{field}.
        """
        with self.assertRaises(ProtocolViolation) as caught:
            Hello.from_dict(data)
        self.assertEqual(caught.exception.reason, MALFORMED_HELLO)
        if field is not None:
            self.assertIn(field, str(caught.exception))

    def test_not_a_mapping(self) -> None:
        """
        A HELLO must be a mapping.
        """
        for data in (None, [], "hello", 1, b"{}"):
            self.assertMalformed(data)

    def test_missing_required_fields(self) -> None:
        """
        Every required field must be present.
        """
        for key in (
            "cluster_id",
            "node_id",
            "incarnation",
            "protocol",
            "app_version",
            "address",
            "serializer",
        ):
            self.assertMalformed(payload(**{key: DELETE}), key)

    def test_wrong_types_for_strings(self) -> None:
        """
        String fields refuse other types, None included.
        """
        for key in (
            "cluster_id",
            "node_id",
            "app_version",
            "address",
            "serializer",
            "signing",
            "nonce",
        ):
            for value in (None, 1, 1.5, True, ["a"], {"a": 1}):
                self.assertMalformed(payload(**{key: value}), key)

    def test_wrong_types_for_integers(self) -> None:
        """
        Integer fields refuse floats, strings, None, and booleans (which are
        ints to Python but not to the protocol).
        """
        for key in ("incarnation", "priority"):
            for value in (None, 1.0, "1", True, False, [1], 2**64):
                self.assertMalformed(payload(**{key: value}), key)

    def test_large_but_valid_integers(self) -> None:
        """
        Signed 64-bit values are accepted.
        """
        parsed = Hello.from_dict(payload(incarnation=2**62, priority=-(2**62)))
        self.assertEqual((parsed.incarnation, parsed.priority), (2**62, -(2**62)))

    def test_bad_protocol(self) -> None:
        """
        The protocol version must be a list of two small non-negative
        integers.
        """
        for value in (
            None,
            "1.0",
            1,
            [1],
            [1, 0, 0],
            (1, 0),
            ["1", 0],
            [1, 0.0],
            [True, 0],
            [1, False],
            [-1, 0],
            [256, 0],
            [1, 256],
        ):
            self.assertMalformed(payload(protocol=value), "protocol")

    def test_long_strings(self) -> None:
        """
        Free-text fields are limited to 256 characters.
        """
        for key in ("app_version", "serializer", "signing", "nonce"):
            Hello.from_dict(payload(**{key: "v" * 256}))
            self.assertMalformed(payload(**{key: "v" * 257}), key)
        self.assertMalformed(payload(address="h" * 300 + ":7101"), "address")

    def test_bad_ids(self) -> None:
        """
        Cluster and node ids must be 1 to 64 letters, digits, C{_}, C{.} or
        C{-}, starting with a letter or digit; a trailing newline is no
        exception.
        """
        for bad in ("", "-lead", ".x", "_x", "a b", "a/b", "a:b", "é", "a" * 65, "abc\n", "\nabc"):
            self.assertMalformed(payload(node_id=bad), "node_id")
            self.assertMalformed(payload(cluster_id=bad), "cluster_id")
        for good in ("a", "A9", "node_1.eu-west", "x" * 64):
            self.assertEqual(Hello.from_dict(payload(node_id=good)).node_id, good)

    def test_bad_address(self) -> None:
        """
        The address must be C{host:port} with a port from 1 to 65535 in ASCII
        digits.
        """
        for bad in (
            "",
            "nohost",
            ":7101",
            "host:",
            "host:0",
            "host:65536",
            "host:-1",
            "host:+80",
            "host:80a",
            "host: 80",
            "host:\u00b2",
            "host:\u0661\u0662",
        ):
            self.assertMalformed(payload(address=bad), "address")
        for good in ("h:1", "h:65535", "node.example:7101"):
            self.assertEqual(Hello.from_dict(payload(address=good)).address, good)


class CheckHelloTests(SynchronousTestCase):
    """
    L{check_hello} decides whether to accept a peer.
    """

    def test_accept(self) -> None:
        """
        A peer of the same cluster, protocol major version and signing, with
        a known serializer and another id, is accepted, whatever its minor
        version and app version.
        """
        theirs = hello(
            node_id="node-2",
            protocol=(PROTOCOL_MAJOR, PROTOCOL_MINOR + 3),
            app_version="9",
            serializer="msgpack",
            nonce="ffff",
        )
        self.assertIsNone(check_hello(hello(), theirs, KNOWN))

    def assertRefused(self, theirs: Hello, reason: str, *words: str) -> None:
        refusal = check_hello(hello(), theirs, KNOWN)
        assert refusal is not None
        self.assertEqual(refusal[0], reason)
        for word in words:
            self.assertIn(word, refusal[1])

    def test_cluster_id_mismatch(self) -> None:
        """
        A peer of another cluster is refused, naming both clusters.
        """
        self.assertRefused(
            hello(node_id="n2", cluster_id="staging"), CLUSTER_ID_MISMATCH, "staging", "prod"
        )

    def test_protocol_major(self) -> None:
        """
        Another major protocol version is refused.
        """
        for major in (PROTOCOL_MAJOR - 1, PROTOCOL_MAJOR + 1):
            self.assertRefused(
                hello(node_id="n2", protocol=(major, 0)), PROTOCOL_VERSION, f"{major}.0"
            )

    def test_signing_mismatch(self) -> None:
        """
        A peer protecting frames differently is refused.
        """
        self.assertRefused(
            hello(node_id="n2", signing="hmac-sha256"), SIGNING_MISMATCH, "hmac-sha256", "crc32"
        )

    def test_unknown_serializer(self) -> None:
        """
        A peer using a serializer not installed here is refused, with the
        list of installed ones.
        """
        self.assertRefused(
            hello(node_id="n2", serializer="protobuf"),
            UNKNOWN_SERIALIZER,
            "protobuf",
            "json, msgpack",
        )

    def test_self_connection(self) -> None:
        """
        A HELLO carrying our own id and nonce is ourselves.
        """
        self.assertEqual(check_hello(hello(), hello(), KNOWN)[0], SELF_CONNECTION)  # type: ignore[index]

    def test_self_connection_by_connection_nonce(self) -> None:
        """
        With a fresh nonce per connection, a HELLO carrying our id and the
        nonce of one of our own connections is ourselves too.
        """
        theirs = hello(nonce="conn-2")
        refusal = check_hello(hello(), theirs, KNOWN, own_nonces={"conn-1", "conn-2"})
        self.assertEqual(refusal[0], SELF_CONNECTION)  # type: ignore[index]
        refusal = check_hello(hello(), theirs, KNOWN, own_nonces={"conn-1"})
        self.assertEqual(refusal[0], DUPLICATE_NODE_ID)  # type: ignore[index]

    def test_own_nonces_only_for_own_id(self) -> None:
        """
        Another node's HELLO is judged on its own, whatever its nonce.
        """
        theirs = hello(node_id="node-2", nonce="conn-1")
        self.assertIsNone(check_hello(hello(), theirs, KNOWN, own_nonces={"conn-1"}))

    def test_duplicate_node_id(self) -> None:
        """
        Another node (another nonce) with our id is refused as a duplicate,
        even when it started at the same moment (same incarnation).
        """
        self.assertRefused(hello(nonce="other"), DUPLICATE_NODE_ID, "node-1", "10.1.2.3:7101")
        self.assertRefused(
            hello(nonce="other", incarnation=hello().incarnation + 1), DUPLICATE_NODE_ID
        )

    def test_cluster_checked_first(self) -> None:
        """
        When several things are wrong, the cluster id is reported: it is the
        most useful explanation.
        """
        theirs = hello(cluster_id="other", protocol=(PROTOCOL_MAJOR + 1, 0), serializer="x")
        self.assertEqual(check_hello(hello(), theirs, KNOWN)[0], CLUSTER_ID_MISMATCH)  # type: ignore[index]


class RejectTests(SynchronousTestCase):
    """
    L{Reject} payloads.
    """

    def test_roundtrip(self) -> None:
        """
        A REJECT survives C{to_dict} and C{from_dict}.
        """
        reject = Reject(CLUSTER_ID_MISMATCH, "peer is in cluster 'a'")
        self.assertEqual(Reject.from_dict(reject.to_dict()), reject)

    def test_lenient(self) -> None:
        """
        A malformed REJECT still parses (it only feeds a log line); long
        details are cut.
        """
        self.assertEqual(Reject.from_dict(None), Reject("unknown", "malformed reject"))
        self.assertEqual(Reject.from_dict({"reason": 5, "detail": []}), Reject("unknown", ""))
        self.assertEqual(len(Reject.from_dict({"reason": "r", "detail": "d" * 5000}).detail), 256)


ids = st.text(alphabet="abAB09_.-", min_size=1, max_size=6)


class KeepConnectionTests(SynchronousTestCase):
    """
    L{keep_connection}: both nodes keep the same one of two connections.
    """

    def test_smaller_id_dials_the_kept_connection(self) -> None:
        """
        The connection dialled by the node with the smaller id is kept.
        """
        self.assertTrue(keep_connection("a", "b", initiated_locally=True))
        self.assertFalse(keep_connection("a", "b", initiated_locally=False))
        self.assertTrue(keep_connection("b", "a", initiated_locally=False))
        self.assertFalse(keep_connection("b", "a", initiated_locally=True))

    def test_all_pairs(self) -> None:
        """
        For every pair of a set of ids, the two ends agree about each
        connection, and exactly one of the two connections is kept.
        """
        names = ["a", "b", "B", "node-1", "node-10", "node-2", "z", "0", "9.9"]
        for x in names:
            for y in names:
                if x == y:
                    continue
                self.assertSymmetric(x, y)

    @PROPERTY
    @given(x=ids, y=ids)
    def test_symmetric_property(self, x: str, y: str) -> None:
        """
        The same holds for arbitrary distinct ids.
        """
        if x != y:
            self.assertSymmetric(x, y)

    def assertSymmetric(self, x: str, y: str) -> None:
        dialled_by_x = keep_connection(x, y, True)
        self.assertEqual(dialled_by_x, keep_connection(y, x, False), (x, y))
        dialled_by_y = keep_connection(y, x, True)
        self.assertEqual(dialled_by_y, keep_connection(x, y, False), (x, y))
        self.assertNotEqual(dialled_by_x, dialled_by_y, (x, y))
