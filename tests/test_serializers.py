"""
The msgpack and protobuf serializers, alone and in a mixed cluster.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from clustron.errors import SerializationError
from clustron.interfaces import ISerializerPlugin
from clustron.serializers.msgpack import msgpack_serializer
from clustron.serializers.protobuf import protobuf_serializer
from clustron.testkit.cluster import SimCluster

plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


class SerializerTests(SynchronousTestCase):
    """
    Round trips and hostile bytes.
    """

    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(ISerializerPlugin, msgpack_serializer))
        self.assertTrue(verifyObject(ISerializerPlugin, protobuf_serializer))

    @settings(max_examples=150, deadline=None)
    @given(plain)
    def test_roundtrip(self, value: Any) -> None:
        for serializer in (msgpack_serializer, protobuf_serializer):
            self.assertEqual(serializer.loads(serializer.dumps(value)), value)

    def test_msgpack_carries_bytes(self) -> None:
        self.assertEqual(
            msgpack_serializer.loads(msgpack_serializer.dumps(b"\x00\xff")), b"\x00\xff"
        )

    def test_protobuf_refuses_what_it_cannot_carry(self) -> None:
        for value in (b"bytes", 2**60, float("nan"), {1: "x"}, object()):
            with self.assertRaises(SerializationError):
                protobuf_serializer.dumps(value)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=64))
    def test_garbage_raises_only_serialization_error(self, data: bytes) -> None:
        for serializer in (msgpack_serializer, protobuf_serializer):
            try:
                serializer.loads(data)
            except SerializationError:
                pass


class MixedClusterTests(SynchronousTestCase):
    """
    The serializer is part of the handshake and of every frame header, so
    nodes configured with different (installed) serializers interoperate.
    """

    def test_mixed_serializers(self) -> None:
        cluster = SimCluster(
            3,
            seed=1,
            per_node={"n1": {"serializer": "msgpack"}, "n2": {"serializer": "protobuf"}},
        )
        cluster.start()
        self.assertTrue(cluster.run_until(cluster.converged, 3))
        got: list[Any] = []
        for node in cluster.nodes.values():
            node.on_message("t", lambda m: got.append((m.sender, m.body)))
        for node_id in cluster.node_ids:
            cluster.nodes[node_id].broadcast("t", {"from": node_id, "n": [1, 2]})
        cluster.run(1)
        self.assertEqual(len(got), 9)
        self.assertEqual({b["from"] for _, b in got}, set(cluster.node_ids))
