"""
Hostile input: arbitrary bytes and values at the framer, the handshake and
the envelope decoders never raise anything but the protocol's own errors,
never change membership, and never hold memory without bound; a flood of
garbage or of half-open connections from one host does not disturb a
cluster.

Properties run with Hypothesis (derandomized: the same examples on every
run). The fuzz targets in C{fuzz/} explore the same surfaces for longer;
L{FuzzTargetTests} runs each for a few seconds when atheris is installed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from clustron import plugins
from clustron.config import NodeConfig, SecurityConfig
from clustron.errors import FrameError, ProtocolViolation, SerializationError
from clustron.membership import group as membership_group
from clustron.membership.view import View, is_address
from clustron.messaging.total import TotalOrder
from clustron.node import ClusterNode
from clustron.observability.metrics import NodeMetrics
from clustron.serializers.json import json_serializer
from clustron.testkit.cluster import PORT, SimCluster
from clustron.wire import framing
from clustron.wire.framing import (
    Crc32,
    Frame,
    FrameDecoder,
    HmacSha256,
    NoIntegrity,
    encode_frame,
)
from clustron.wire.handshake import REASONS, Hello, Reject, check_hello
from clustron.wire.mesh import Mesh

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROPERTIES = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CLUSTER_PROPERTIES = settings(PROPERTIES, max_examples=15)

# -- strategies ----------------------------------------------------------------

WORDS = st.sampled_from(
    [
        "",
        "n1",
        "n2",
        "n3",
        "x9",
        "sim",
        "json",
        "crc32",
        "alive",
        "dead",
        "join",
        "view",
        "vote_req",
        "probe",
        "admin",
        "d",
        "u",
        "ack",
        "frag",
        "m",
        "r",
        "b",
        "c",
        "tf",
        "ts",
        "tr",
        "to",
        "10.0.0.1:7000",
        "host:0",
        "n1:1:1",
        "\x00",
        "é",
        "a" * 300,
    ]
)
TEXT = WORDS | st.text(max_size=12)
INTS = st.sampled_from([0, 1, -1, 2**32, 2**53, 2**63, 2**64, 10**30, -(2**63)]) | st.integers(
    -1000, 1000
)
KEYS = st.sampled_from(
    [
        "k",
        "v",
        "c",
        "ca",
        "a",
        "j",
        "i",
        "l",
        "ci",
        "seen",
        "t",
        "e",
        "h",
        "epoch",
        "seq",
        "coordinator",
        "members",
        "node_id",
        "address",
        "incarnation",
        "priority",
        "state",
        "view",
        "granted",
        "target",
        "nonce",
        "origin",
        "id",
        "op",
        "by",
        "ok",
        "type",
        "f",
        "ids",
        "b",
        "vc",
        "mid",
        "last",
        "entries",
        "fill",
        "index",
        "count",
        "total",
        "data",
        "s",
    ]
) | st.text(max_size=6)

#: What JSON decodes to.
JSON_LEAVES = (
    st.none() | st.booleans() | INTS | st.floats(allow_nan=False, allow_infinity=False) | TEXT
)
#: What msgpack decodes to, besides: bytes, NaN and infinities.
EXOTIC_LEAVES = (
    JSON_LEAVES | st.binary(max_size=8) | st.sampled_from([math.nan, math.inf, -math.inf])
)


def nested(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """
    Lists and string-keyed dicts of C{leaves}, a few levels deep.
    """
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5)
        ),
        max_leaves=16,
    )


JSON_VALUES = nested(JSON_LEAVES)
ANY_VALUES = nested(EXOTIC_LEAVES)

CONTROL_KINDS = list(membership_group.CONTROL_KINDS)

#: Values that are no control message at all: not a mapping with a known
#: kind.
GARBAGE = ANY_VALUES.filter(lambda v: not (isinstance(v, dict) and v.get("k") in CONTROL_KINDS))


@st.composite
def members(draw: st.DrawFn) -> Any:
    """
    A view member, mostly well formed.
    """
    return {
        "node_id": draw(st.sampled_from(["n1", "n2", "n3", "x9"]) | TEXT),
        "address": draw(st.sampled_from(["10.0.0.1:7000", "10.0.0.9:7000"]) | TEXT),
        "incarnation": draw(INTS),
        "priority": draw(INTS),
        "state": draw(st.sampled_from(["alive", "suspect", "dead", "leaving", "x"])),
        "draining": draw(st.booleans()),
        "reason": draw(TEXT),
    }


FIELD_VALUES = (
    ANY_VALUES
    | st.fixed_dictionaries(
        {
            "epoch": INTS,
            "seq": INTS,
            "coordinator": TEXT,
            "members": st.lists(members(), max_size=3),
        }
    )
    | st.lists(INTS, min_size=2, max_size=2)
    | st.lists(INTS, min_size=4, max_size=4)
)


@st.composite
def control_bodies(draw: st.DrawFn, kinds: list[str] = CONTROL_KINDS) -> Any:
    """
    A CONTROL body of a known kind with arbitrary fields, or any value.
    """
    if draw(st.integers(0, 5)) == 0:
        return draw(ANY_VALUES)
    body = draw(st.dictionaries(KEYS, FIELD_VALUES, max_size=6))
    body["k"] = draw(st.sampled_from(kinds))
    return body


@st.composite
def envelopes(draw: st.DrawFn) -> Any:
    """
    A MESSAGE body of a known type and kind with arbitrary fields, or any
    value.
    """
    if draw(st.integers(0, 5)) == 0:
        return draw(ANY_VALUES)
    body = draw(st.dictionaries(KEYS, FIELD_VALUES, max_size=6))
    body["type"] = draw(st.sampled_from(["d", "u", "ack", "frag"]))
    body["id"] = draw(st.sampled_from(["n1:1:1", "n2:5:9", "x9:0:1"]) | TEXT)
    body["k"] = draw(st.sampled_from(["m", "r", "b", "c", "tf", "ts", "tq", "tr", "to", "tk"]))
    return body


# -- helpers -------------------------------------------------------------------------


@contextmanager
def logged_errors() -> Iterator[list[str]]:
    """
    Collect the errors logged meanwhile (with a traceback, or at level
    error): the wire and the simulated hosts log and swallow exceptions, so
    this is where a crash shows.
    """
    errors: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event or event.get("log_level") in (LogLevel.error, LogLevel.critical):
            errors.append(formatEvent(event) or repr(event.get("log_failure")))

    globalLogPublisher.addObserver(observe)
    try:
        yield errors
    finally:
        globalLogPublisher.removeObserver(observe)


def fingerprint(node: ClusterNode) -> tuple[Any, ...]:
    """
    The parts of a node's membership state that input may change.
    """
    m = node.membership
    return (
        m.view,
        m.max_epoch,
        m.incarnation,
        m.acting,
        dict(m._votes),
        m._abdication,
        m._removed_by_operator,
        m._candidacy is not None,
    )


def converged_cluster(serializer: str = "json") -> SimCluster:
    """
    A started, converged 3-node simulated cluster.
    """
    cluster = SimCluster(3, overrides={"serializer": serializer})
    cluster.start()
    assert cluster.run_until(cluster.converged, timeout=5.0)
    return cluster


def suspicions(node: ClusterNode) -> float:
    """
    How many members a node suspected so far.
    """
    value = node.metrics.registry.get_sample_value("clustron_suspicions_total")
    return value or 0.0


def feed(node: ClusterNode, sender: str, frame_type: int, body: Any) -> bool:
    """
    Hand a decoded body to the layer the node's frame dispatch would.

    @return: whether it was accepted (False when it raised a protocol
        violation, which the wire counts and answers by closing the
        connection).
    """
    handler: Callable[[str, int, Any], None]
    if frame_type == framing.MESSAGE:
        handler = node.messenger.frame_received
    else:
        handler = node.membership.frame_received
    try:
        handler(sender, frame_type, body)
    except (ProtocolViolation, FrameError):
        return False
    return True


def through(serializer_name: str, body: Any) -> Any:
    """
    C{body} as a peer could send it: encoded and decoded by a serializer.
    """
    serializer = plugins.find("serializer", serializer_name)
    return serializer.loads(serializer.dumps(body))


KEYS_HMAC = (b"k" * 32, b"another key")


def integrity(kind: str, keys: tuple[bytes, ...] = KEYS_HMAC) -> Any:
    """
    A fresh trailer of one kind.
    """
    if kind == "crc32":
        return Crc32()
    if kind == "hmac":
        return HmacSha256(keys, b"session")
    return NoIntegrity()


def decode_all(decoder: FrameDecoder, stream: bytes, cuts: list[int]) -> list[Frame]:
    """
    Feed C{stream} cut at C{cuts}; check the decoder never holds more than
    one incomplete frame.
    """
    frames: list[Frame] = []
    start = 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        frames.extend(decoder.feed(stream[start:cut]))
        start = cut
        assert decoder.buffered <= decoder.max_frame_bytes + 3
    return frames


# -- the framer ---------------------------------------------------------------------


class FramerPropertyTests(SynchronousTestCase):
    """
    L{FrameDecoder} on bytes from anyone.
    """

    @PROPERTIES
    @given(
        kind=st.sampled_from(["crc32", "hmac", "none"]),
        max_frame_bytes=st.sampled_from([16, 100, 4096, 1048576]),
        data=st.binary(max_size=600),
        cuts=st.lists(st.integers(0, 600), max_size=8),
    )
    def test_arbitrary_bytes(
        self, kind: str, max_frame_bytes: int, data: bytes, cuts: list[int]
    ) -> None:
        """
        Arbitrary bytes, in arbitrary chunks, give frames or a L{FrameError};
        never more than one frame's worth of bytes is held, and a decoder
        that raised keeps raising the same error.
        """
        decoder = FrameDecoder(max_frame_bytes, integrity(kind))
        try:
            decode_all(decoder, data, [c for c in cuts if c <= len(data)])
        except FrameError as e:
            self.assertEqual(decoder.buffered, 0)
            self.assertIs(self.assertRaises(FrameError, decoder.feed, b"x"), e)

    @PROPERTIES
    @given(
        kind=st.sampled_from(["crc32", "hmac"]),
        payloads=st.lists(st.binary(max_size=50), min_size=1, max_size=4),
        position=st.integers(0, 10**6),
        flip=st.integers(1, 255),
        cuts=st.lists(st.integers(0, 400), max_size=5),
    )
    def test_damage_never_decodes_to_another_frame(
        self, kind: str, payloads: list[bytes], position: int, flip: int, cuts: list[int]
    ) -> None:
        """
        One damaged byte anywhere in a stream of checksummed or signed frames
        is refused, or (in a length prefix) leaves the decoder waiting: no
        frame comes out that was not sent.
        """
        sender, receiver = integrity(kind), integrity(kind)
        sent = [Frame(framing.MESSAGE, 1, sender.flag, p) for p in payloads]
        stream = bytearray(b"".join(encode_frame(f.frame_type, f.payload, 1, sender) for f in sent))
        stream[position % len(stream)] ^= flip
        decoder = FrameDecoder(4096, receiver)
        try:
            frames = decode_all(decoder, bytes(stream), [c for c in cuts if c <= len(stream)])
        except FrameError:
            return
        self.assertEqual(frames, sent[: len(frames)])
        self.assertLess(len(frames), len(sent))

    @PROPERTIES
    @given(
        payloads=st.lists(st.binary(max_size=30), min_size=1, max_size=4),
        replay=st.integers(0, 3),
    )
    def test_replayed_signed_frame_refused(self, payloads: list[bytes], replay: int) -> None:
        """
        Any signed frame sent again on the same connection is refused.
        """
        sender, receiver = integrity("hmac"), integrity("hmac")
        encoded = [encode_frame(framing.MESSAGE, p, 1, sender) for p in payloads]
        decoder = FrameDecoder(4096, receiver)
        self.assertEqual(len(decoder.feed(b"".join(encoded))), len(encoded))
        error = self.assertRaises(FrameError, decoder.feed, encoded[replay % len(encoded)])
        self.assertEqual(error.reason, "bad_signature")

    @PROPERTIES
    @given(payload=st.binary(max_size=40), keys=st.lists(st.binary(min_size=1), min_size=1))
    def test_unknown_key_refused(self, payload: bytes, keys: list[bytes]) -> None:
        """
        A frame signed with keys the receiver does not hold is refused.
        """
        sender = HmacSha256(
            [b"x" + k for k in keys if b"x" + k not in KEYS_HMAC] or [b"?"], b"session"
        )
        data = encode_frame(framing.MESSAGE, payload, 1, sender)
        decoder = FrameDecoder(4096, integrity("hmac"))
        self.assertEqual(self.assertRaises(FrameError, decoder.feed, data).reason, "bad_signature")

    def test_hostile_length_costs_no_memory(self) -> None:
        """
        A length over C{max_frame_bytes} is refused as soon as its four bytes
        arrive; a frame trickled in a byte at a time never holds more than
        its own length.
        """
        decoder = FrameDecoder(1000, Crc32())
        error = self.assertRaises(FrameError, decoder.feed, (1001).to_bytes(4, "big"))
        self.assertEqual((error.reason, decoder.buffered), ("oversized", 0))
        decoder = FrameDecoder(1000, Crc32())
        decoder.feed((1000).to_bytes(4, "big") + b"CX\x01\x00\x01\x01\x06")
        for _ in range(2000):
            try:
                decoder.feed(b"\x00")
            except FrameError as e:
                self.assertEqual(e.reason, "bad_checksum")
                break
            self.assertLessEqual(decoder.buffered, 1003)
        else:
            self.fail("a frame of 1000 bytes was never complete")


# -- the handshake ------------------------------------------------------------------

OURS = Hello(
    cluster_id="test",
    node_id="local",
    incarnation=5,
    protocol=(framing.PROTOCOL_MAJOR, framing.PROTOCOL_MINOR),
    app_version="1",
    address="127.0.0.1:7101",
    serializer="json",
    nonce="ours",
)

HELLOS = st.fixed_dictionaries(
    {
        "cluster_id": st.sampled_from(["test", "other"]) | TEXT,
        "node_id": st.sampled_from(["peer", "local", "n-1.a_b"]) | TEXT,
        "incarnation": INTS | JSON_VALUES,
        "protocol": st.lists(INTS, min_size=2, max_size=2) | JSON_VALUES,
        "app_version": TEXT | JSON_VALUES,
        "address": st.sampled_from(["10.0.0.9:7000", "[::1]:1", "h:65536", "h:0", ":1"]) | TEXT,
        "serializer": st.sampled_from(["json", "msgpack", "nope"]) | JSON_VALUES,
    },
    optional={
        "priority": INTS | JSON_VALUES,
        "signing": st.sampled_from(["crc32", "hmac-sha256"]) | JSON_VALUES,
        "nonce": TEXT | JSON_VALUES,
        "extra": JSON_VALUES,
    },
)


def judge_hello(test: SynchronousTestCase, payload: Any) -> Hello | None:
    """
    Parse a HELLO payload as a node does, and check what holds of the
    outcome.
    """
    reject = Reject.from_dict(payload)
    test.assertIsInstance(reject.reason, str)
    test.assertIsInstance(reject.detail, str)
    try:
        theirs = Hello.from_dict(payload)
    except ProtocolViolation as e:
        test.assertEqual(e.reason, "malformed_hello")
        return None
    test.assertEqual(Hello.from_dict(json.loads(json.dumps(theirs.to_dict()))), theirs)
    test.assertTrue(is_address(theirs.address))
    verdict = check_hello(OURS, theirs, {"json", "msgpack"}, {"mine"})
    if verdict is not None:
        test.assertEqual([type(v) for v in verdict], [str, str])
    return theirs


class HandshakePropertyTests(SynchronousTestCase):
    """
    L{Hello.from_dict}, L{check_hello} and L{Reject.from_dict} on anything a
    peer can send (HELLO and REJECT payloads are always JSON).
    """

    @PROPERTIES
    @given(payload=JSON_VALUES)
    def test_arbitrary_values(self, payload: Any) -> None:
        """
        Any JSON value is a valid HELLO or a C{malformed_hello} violation.
        """
        judge_hello(self, payload)

    @PROPERTIES
    @given(payload=HELLOS)
    def test_hello_shaped_values(self, payload: dict[str, Any]) -> None:
        """
        HELLO-shaped mappings with arbitrary field values, likewise.
        """
        judge_hello(self, json_serializer.loads(json_serializer.dumps(payload)))

    @PROPERTIES
    @given(data=st.binary(max_size=200))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """
        Arbitrary payload bytes fail to decode with a L{SerializationError},
        or decode to a value judged as above.
        """
        try:
            payload = json_serializer.loads(data)
        except SerializationError:
            return
        judge_hello(self, payload)

    @settings(PROPERTIES, max_examples=30)
    @given(reason=st.text(min_size=1, max_size=300))
    def test_reject_reasons_are_bounded_labels(self, reason: str) -> None:
        """
        A REJECT's reason (any text, from a peer) never becomes a metric
        label unless it is one this code sends, and is cut short.
        """
        mesh, reactor = make_mesh("crc32")
        protocol, transport = connect(mesh, reactor)
        protocol.dataReceived(
            encode_frame(framing.REJECT, json_serializer.dumps({"reason": reason}), 1, Crc32())
        )
        # An inbound connection is refused quietly; count a dialled one too.
        protocol.dial_address = ("192.0.2.7", 7101)
        mesh.rejected_by_peer(protocol, Reject.from_dict({"reason": reason}))
        labels = {
            sample.labels["reason"]
            for metric in mesh.metrics.registry.collect()
            if metric.name == "clustron_handshake_rejections"
            for sample in metric.samples
        }
        self.assertLessEqual(labels, REASONS | {"other"})
        self.assertLessEqual(len(Reject.from_dict({"reason": reason}).reason), 64)


def make_mesh(signing: str) -> tuple[Mesh, MemoryReactorClock]:
    """
    A started mesh on a memory reactor.
    """
    config = NodeConfig.from_dict(
        {"cluster_id": "test", "node_id": "local", "listen": "tcp:7101:interface=127.0.0.1"}
    )
    config = attrs.evolve(
        config,
        security=SecurityConfig(signing, keys=KEYS_HMAC if signing == "hmac-sha256" else ()),
    )
    reactor = MemoryReactorClock()
    mesh = Mesh(
        reactor,
        config,
        plugins.find("transport", "tcp"),
        json_serializer,
        list(plugins.installed("serializer").values()),
        NodeMetrics(),
        random.Random(1),
        5,
    )
    mesh.start()
    return mesh, reactor


def connect(mesh: Mesh, reactor: MemoryReactorClock) -> tuple[Any, StringTransport]:
    """
    An inbound connection to C{mesh} from 192.0.2.7.
    """
    address = IPv4Address("TCP", "192.0.2.7", 40000)
    protocol = reactor.tcpServers[0][1].buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport


class HandshakeSessionPropertyTests(SynchronousTestCase):
    """
    Whole handshakes against a real L{Mesh}: a peer's HELLO (any value),
    then arbitrary frames, with CRC32 or HMAC-SHA256 signing.
    """

    @settings(PROPERTIES, max_examples=60)
    @given(
        signing=st.sampled_from(["crc32", "hmac-sha256"]),
        hello=HELLOS | JSON_VALUES,
        frames=st.lists(
            st.tuples(st.sampled_from(sorted(framing.FRAME_TYPE_NAMES) + [0, 99]), ANY_VALUES),
            max_size=4,
        ),
        garbage=st.binary(max_size=40),
        time_out=st.booleans(),
    )
    def test_session(
        self,
        signing: str,
        hello: Any,
        frames: list[tuple[int, Any]],
        garbage: bytes,
        time_out: bool,
    ) -> None:
        """
        No input makes the protocol raise or log an error; a connection
        that did not complete a handshake leaves no peer behind.
        """
        with logged_errors() as errors:
            mesh, reactor = make_mesh(signing)
            protocol, transport = connect(mesh, reactor)
            handshake = mesh.integrity_for(mesh.local_hello, None)
            own = Hello.from_dict(
                json.loads(FrameDecoder(4096, handshake).feed(transport.value())[0].payload)
            )
            if isinstance(hello, dict):
                hello = dict(hello, cluster_id="test", signing=signing)
            try:
                payload = json_serializer.dumps(hello)
            except SerializationError:
                payload = b"[]"
            protocol.dataReceived(encode_frame(framing.HELLO, payload, 1, handshake))
            try:
                theirs: Hello | None = Hello.from_dict(json.loads(payload))
            except ProtocolViolation:
                theirs = None
            if signing == "hmac-sha256" and theirs is not None and not protocol.closed:
                proof = json_serializer.dumps({"a": theirs.nonce, "b": own.nonce})
                protocol.dataReceived(encode_frame(framing.PROOF, proof, 1, handshake))
            session = mesh.integrity_for(own, theirs) if theirs is not None else Crc32()
            msgpack = plugins.find("serializer", "msgpack")
            for frame_type, body in frames:
                if protocol.closed:
                    break
                protocol.dataReceived(
                    encode_frame(frame_type, msgpack.dumps(body), msgpack.wire_id, session)
                )
            if not protocol.closed:
                protocol.dataReceived(garbage)
            if time_out:
                reactor.advance(mesh.handshake_timeout + 1)
            established = protocol.established
            protocol.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(mesh.peers, {})
            if not established:
                self.assertEqual(mesh._pending_inbound, {})
        self.assertEqual(errors, [])


# -- envelopes ------------------------------------------------------------------------


class EnvelopePropertyTests(SynchronousTestCase):
    """
    Decoded bodies handed to the membership and messaging layers of a node
    of a converged 3-node simulated cluster.
    """

    @CLUSTER_PROPERTIES
    @given(
        inputs=st.lists(
            st.tuples(
                st.sampled_from(["n1", "n2", "n3"]),
                st.sampled_from(["n1", "n2", "n3", "x9"]),
                st.sampled_from([framing.CONTROL, framing.HEARTBEAT, framing.MESSAGE]),
                GARBAGE,
            ),
            min_size=1,
            max_size=12,
        )
    )
    def test_garbage_changes_nothing(self, inputs: list[tuple[str, str, int, Any]]) -> None:
        """
        Arbitrary values that are no control message, as CONTROL, HEARTBEAT
        or MESSAGE bodies from members and from a non-member, raise nothing
        but protocol violations (every CONTROL one is refused), log no
        error, change no view and raise no suspicion.
        """
        cluster = converged_cluster()
        views = {n.node_id: n.view for n in cluster.live()}
        with logged_errors() as errors:
            for node_id, sender, frame_type, body in inputs:
                if sender == node_id:
                    continue
                accepted = feed(cluster.nodes[node_id], sender, frame_type, body)
                if frame_type == framing.CONTROL:
                    self.assertFalse(accepted, body)
            cluster.run(1.0)
        self.assertEqual(errors, [])
        self.assertEqual({n.node_id: n.view for n in cluster.live()}, views)
        self.assertEqual([suspicions(n) for n in cluster.live()], [0, 0, 0])

    @CLUSTER_PROPERTIES
    @given(
        serializer=st.sampled_from(["json", "msgpack"]),
        inputs=st.lists(
            st.tuples(
                st.sampled_from(["n1", "n2", "n3"]),
                st.sampled_from(["n1", "n2", "n3", "x9"]),
                st.sampled_from([framing.CONTROL, framing.HEARTBEAT, framing.MESSAGE]),
                st.booleans(),
                control_bodies(),
                envelopes(),
            ),
            min_size=1,
            max_size=10,
        ),
    )
    def test_refused_messages_change_nothing(
        self, serializer: str, inputs: list[tuple[str, str, int, bool, Any, Any]]
    ) -> None:
        """
        Protocol-shaped messages with arbitrary fields, sent through JSON or
        msgpack: a message the node refuses changes no node's membership
        state, and nothing raises or logs an error, whatever is accepted.
        """
        cluster = converged_cluster(serializer)
        with logged_errors() as errors:
            for node_id, sender, frame_type, wire_json, control, envelope in inputs:
                if sender == node_id:
                    continue
                body = envelope if frame_type == framing.MESSAGE else control
                try:
                    body = through("json" if wire_json else "msgpack", body)
                except SerializationError:
                    continue
                before = {n.node_id: fingerprint(n) for n in cluster.live()}
                if not feed(cluster.nodes[node_id], sender, frame_type, body):
                    self.assertEqual(
                        {n.node_id: fingerprint(n) for n in cluster.live()}, before, body
                    )
                cluster.run(0.05)
            cluster.run(1.0)
        self.assertEqual(errors, [])

    @CLUSTER_PROPERTIES
    @given(
        inputs=st.lists(
            st.tuples(
                st.sampled_from(["n1", "n2", "n3"]),
                st.sampled_from([framing.CONTROL, framing.HEARTBEAT, framing.MESSAGE]),
                control_bodies([k for k in CONTROL_KINDS if k not in ("view", "merge", "join")]),
                envelopes(),
            ),
            min_size=1,
            max_size=12,
        )
    )
    def test_non_member_cannot_change_membership(
        self, inputs: list[tuple[str, int, Any, Any]]
    ) -> None:
        """
        A peer outside the view changes no node's view with any message but
        the three by which the protocol lets outsiders in (C{join}, and a
        coordinator's C{view} and C{merge}): not with votes, probes,
        heartbeats, leaves, admin requests or messages.
        """
        cluster = converged_cluster()
        views = {n.node_id: n.view for n in cluster.live()}
        with logged_errors() as errors:
            for node_id, frame_type, control, envelope in inputs:
                body = envelope if frame_type == framing.MESSAGE else control
                try:
                    body = through("msgpack", body)
                except SerializationError:
                    continue
                feed(cluster.nodes[node_id], "x9", frame_type, body)
                cluster.run(0.05)
            cluster.run(1.0)
        self.assertEqual(errors, [])
        self.assertEqual({n.node_id: n.view for n in cluster.live()}, views)
        self.assertEqual([suspicions(n) for n in cluster.live()], [0, 0, 0])


class EnvelopeRegressionTests(SynchronousTestCase):
    """
    The inputs that crashed a node before they were refused (found by the
    fuzz targets and by review).
    """

    def setUp(self) -> None:
        self.cluster = converged_cluster()
        self.coordinator = self.cluster.nodes["n3"]
        self.assertTrue(self.coordinator.membership.acting)
        self.before = self.coordinator.view

    def refused(self, node: ClusterNode, sender: str, frame_type: int, body: Any) -> None:
        with logged_errors() as errors:
            self.assertFalse(feed(node, sender, frame_type, body))
            self.cluster.run(1.0)
        self.assertEqual(errors, [])
        self.assertEqual(self.coordinator.view, self.before)

    def test_join_with_bad_address(self) -> None:
        """
        A join whose address is not host:port is refused (it used to go into
        a view and crash the coordinator installing it).
        """
        for address in ("ack", "host:", "host:99999", "x" * 400):
            self.refused(
                self.coordinator,
                "x9",
                framing.CONTROL,
                {"k": "join", "incarnation": 1, "address": address, "priority": 0},
            )

    def test_join_with_huge_incarnation(self) -> None:
        """
        A join whose incarnation no view may carry is refused (every member
        would have refused the coordinator's next view).
        """
        self.refused(
            self.coordinator,
            "x9",
            framing.CONTROL,
            {"k": "join", "incarnation": 2**70, "address": "h:1", "priority": 0},
        )

    def test_view_member_with_bad_address(self) -> None:
        """
        A view listing a member with a bad address is malformed.
        """
        view = self.before.to_dict()
        view["epoch"] += 1
        view["members"][0]["address"] = "nowhere"
        self.refused(self.cluster.nodes["n1"], "n3", framing.CONTROL, {"k": "view", "view": view})
        self.assertRaises(ProtocolViolation, View.from_dict, view)

    def test_unhashable_envelope_kind(self) -> None:
        """
        An envelope whose kind is a list is malformed.
        """
        self.refused(
            self.coordinator, "n1", framing.MESSAGE, {"type": "u", "id": "n1:1:1", "k": ["tf"]}
        )

    def test_probe_with_unencodable_nonce(self) -> None:
        """
        A probe's nonce and origin are sent back: one that the node's
        serializer cannot encode (bytes from msgpack) is refused.
        """
        self.refused(
            self.coordinator,
            "n1",
            framing.CONTROL,
            {"k": "probe", "nonce": b"\x00", "origin": "n2"},
        )
        self.refused(
            self.coordinator, "n1", framing.CONTROL, {"k": "probe", "nonce": 1, "origin": math.nan}
        )

    def test_heartbeat_with_huge_times(self) -> None:
        """
        Heartbeat times that do not convert to floats, or that cannot be
        echoed (NaN), are ignored.
        """
        with logged_errors() as errors:
            for value in (10**400, math.nan, math.inf, "x"):
                self.assertTrue(
                    feed(
                        self.coordinator,
                        "n1",
                        framing.HEARTBEAT,
                        {"v": list(self.before.id), "t": value, "e": value, "h": 0},
                    )
                )
            self.cluster.run(1.0)
        self.assertEqual(errors, [])
        self.assertEqual(self.coordinator.view, self.before)

    def test_alive_with_huge_incarnation(self) -> None:
        """
        A member's refutation with an incarnation no view may carry is
        ignored.
        """
        with logged_errors() as errors:
            feed(self.coordinator, "n1", framing.CONTROL, {"k": "alive", "incarnation": 2**70})
            self.cluster.run(1.0)
        self.assertEqual(errors, [])
        self.assertEqual(self.coordinator.view, self.before)

    def test_admin_from_non_member(self) -> None:
        """
        Only members may forward operators' requests.
        """
        self.refused(
            self.coordinator,
            "x9",
            framing.CONTROL,
            {"k": "admin", "id": "x", "op": "remove", "target": "n1"},
        )

    def test_flush_reply_with_bad_position(self) -> None:
        """
        A flush reply whose position is not two integers is malformed.
        """
        sent: list[Any] = []
        order = TotalOrder(
            "n3", self.cluster.clock, lambda to, body: sent.append(body), lambda entry: None
        )
        order.view_changed("n3", 2, ["n1", "n2", "n3"], True)
        for last in (["a", 1], [None, None], [1.5, 2], [-1, 0], [2**70, 0]):
            self.assertRaises(
                ProtocolViolation,
                order.received,
                "n1",
                "tr",
                {"epoch": 2, "last": last, "entries": []},
            )

    def test_unencodable_control_message(self) -> None:
        """
        A membership message the serializer cannot encode is logged and not
        sent; it never raises into the caller (often a timer).
        """
        errors: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(errors.append)
        self.addCleanup(globalLogPublisher.removeObserver, errors.append)
        self.assertFalse(self.coordinator.mesh.try_send("n1", framing.CONTROL, {"x": b"bytes"}))
        self.assertTrue(any("could not encode" in (formatEvent(e) or "") for e in errors))


# -- floods ----------------------------------------------------------------------------


class Flooder(Protocol):
    """
    One attacking connection: C{garbage} writes random bytes, C{silent}
    writes nothing (half-open), C{slow} announces a large frame and trickles
    it, C{useless} completes a handshake and sends valid but useless frames.
    """

    def __init__(self, factory: FloodFactory) -> None:
        self.factory = factory
        self.call: Any = None

    def connectionMade(self) -> None:  # noqa: N802
        mode = self.factory.mode
        if mode == "slow":
            self.transport.write((100_000).to_bytes(4, "big") + b"CX\x01\x00\x01\x01\x01")
        if mode == "useless":
            hello = Hello(
                cluster_id="sim",
                node_id=f"intruder{self.factory.next_id()}",
                incarnation=1,
                protocol=(framing.PROTOCOL_MAJOR, 0),
                app_version="",
                address="10.0.9.9:1",
                serializer="json",
                nonce="n",
            )
            self.transport.write(
                encode_frame(framing.HELLO, json_serializer.dumps(hello.to_dict()), 1, Crc32())
            )
        if mode != "silent":
            self.tick()

    def tick(self) -> None:
        mode = self.factory.mode
        if mode == "garbage":
            self.transport.write(bytes(self.factory.rng.getrandbits(8) for _ in range(64)))
        elif mode == "slow":
            self.transport.write(b"\x00" * 16)
        elif mode == "useless":
            for frame_type, body in (
                (framing.HEARTBEAT, {"v": None, "c": None, "a": False, "j": False, "i": 1}),
                (framing.MESSAGE, {"type": "ack", "ids": []}),
            ):
                self.transport.write(
                    encode_frame(frame_type, json_serializer.dumps(body), 1, Crc32())
                )
        self.call = self.factory.host.callLater(0.01, self.tick)

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.factory.lost()


class FloodFactory(ClientFactory):
    """
    Keeps C{count} attacking connections open to one address (reconnecting
    20 ms after each one closes) until told to stop.
    """

    protocol = Flooder

    def __init__(self, host: Any, target: str, mode: str, count: int) -> None:
        self.host = host
        self.target = target
        self.mode = mode
        self.rng = random.Random(7)
        self.running = True
        self.connections = 0
        self.ids = 0
        for _ in range(count):
            self.dial()

    def next_id(self) -> int:
        self.ids += 1
        return self.ids % 5

    def buildProtocol(self, addr: Any) -> Flooder:  # noqa: N802
        return Flooder(self)

    def dial(self) -> None:
        if self.running:
            self.connections += 1
            self.host.connectTCP(self.target, PORT, self)

    def lost(self) -> None:
        self.host.callLater(0.02, self.dial)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:  # noqa: N802
        self.lost()


class FloodTests(SynchronousTestCase):
    """
    An attacker host floods one node of a converged 3-node simulated cluster
    with 50 connections at a time for 3 simulated seconds (15 heartbeat
    intervals; suspicion would come after 4).
    """

    def flood(self, mode: str) -> tuple[SimCluster, dict[str, float]]:
        cluster = converged_cluster()
        node = cluster.nodes["n3"]
        views = {n.node_id: n.view for n in cluster.live()}
        attacker = cluster.network.host("10.0.9.9")
        factory = FloodFactory(attacker, cluster.host_of("n3"), mode, 50)
        wire = node.config.wire
        peak = {"buffered": 0.0, "queued": 0.0, "pending": 0.0, "connections": 0.0}
        with logged_errors() as errors:
            for _ in range(300):
                cluster.run(0.01)
                protocols = list(node.mesh._protocols)
                peak["buffered"] = max(
                    peak["buffered"], sum(p._decoder.buffered for p in protocols)
                )
                peak["queued"] = max(
                    peak["queued"], max((p.queued_frames for p in protocols), default=0)
                )
                peak["pending"] = max(
                    peak["pending"], node.mesh._pending_inbound.get("10.0.9.9", 0)
                )
                peak["connections"] = max(peak["connections"], len(protocols))
                self.assertLessEqual(
                    node.mesh._pending_inbound.get("10.0.9.9", 0), wire.max_connections_per_address
                )
            factory.running = False
            attacker.crash()
            cluster.run(wire.handshake_timeout + 1)
        self.assertEqual(errors, [])
        self.assertEqual({n.node_id: n.view for n in cluster.live()}, views)
        self.assertTrue(cluster.converged())
        self.assertEqual([suspicions(n) for n in cluster.live()], [0, 0, 0])
        self.assertGreater(factory.connections, 50)
        # Every attacking connection is gone: the peers are the members.
        self.assertEqual(sorted(node.mesh.peers), ["n1", "n2"])
        self.assertEqual(node.mesh._pending_inbound, {})
        # At most max_connections_per_address handshakes at a time, and the
        # attacker's established connections (one per intruder id).
        self.assertLessEqual(peak["connections"], 2 + wire.max_connections_per_address + 5)
        self.assertLessEqual(peak["queued"], wire.send_queue_frames)
        return cluster, peak

    def test_garbage(self) -> None:
        """
        Random bytes on 50 connections: each is refused on its first frame.
        """
        self.flood("garbage")

    def test_half_open(self) -> None:
        """
        50 connections that never say anything: at most
        C{max_connections_per_address} wait for a handshake, each for at
        most C{handshake_timeout}; the rest are refused at once.
        """
        cluster, peak = self.flood("silent")
        self.assertEqual(
            peak["pending"], cluster.nodes["n3"].config.wire.max_connections_per_address
        )

    def test_slow_frames(self) -> None:
        """
        Connections that announce large frames and trickle them: the bytes
        held stay below one frame per pending handshake.
        """
        cluster, peak = self.flood("slow")
        wire = cluster.nodes["n3"].config.wire
        self.assertLessEqual(peak["buffered"], wire.max_connections_per_address * 100_004)

    def test_valid_but_useless_frames(self) -> None:
        """
        Intruders that complete handshakes and send heartbeats and empty
        acknowledgements every 10 ms: the members' heartbeats still flow,
        nobody is suspected, the view stays, and the intruders leave no state
        behind once they go.
        """
        cluster, _ = self.flood("useless")
        node = cluster.nodes["n3"]
        cluster.run(10 * node.config.failure_detector.dead_after + 1)
        self.assertEqual(sorted(node.membership.peers), ["n1", "n2"])
        self.assertEqual(sorted(node.mesh._address_of), ["n1", "n2"])
        self.assertTrue(cluster.converged())


# -- the fuzz targets ------------------------------------------------------------------


class FuzzTargetTests(SynchronousTestCase):
    """
    Each atheris target in C{fuzz/} runs for a few seconds without a crash.
    """

    def test_targets(self) -> None:
        """
        C{python fuzz/fuzz_NAME.py -max_total_time=3}, all three at once.
        """
        if importlib.util.find_spec("atheris") is None:
            raise SkipTest("atheris is not installed (pip install 'clustron[fuzz]')")
        artifacts = os.path.abspath(self.mktemp())
        os.makedirs(artifacts)
        env = dict(os.environ, PYTHONPATH=REPOSITORY)
        running = {
            name: subprocess.Popen(
                [
                    sys.executable,
                    os.path.join(REPOSITORY, "fuzz", f"fuzz_{name}.py"),
                    "-max_total_time=3",
                    f"-artifact_prefix={artifacts}/",
                    "-print_final_stats=1",
                ],
                cwd=artifacts,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for name in ("framer", "handshake", "envelope")
        }
        problems = []
        for name, process in running.items():
            output, _ = process.communicate(timeout=120)
            text = output.decode("utf-8", "replace")
            if process.returncode != 0 or "Done " not in text:
                problems.append(f"fuzz_{name} exited {process.returncode}:\n{text[-3000:]}")
        self.assertEqual(problems, [])
        self.assertEqual(os.listdir(artifacts), [])
