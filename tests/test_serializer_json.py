"""
Tests for L{clustron.serializers.json}: the default serializer.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from clustron.errors import SerializationError
from clustron.interfaces import ISerializer, ISerializerPlugin
from clustron.serializers.json import JsonSerializer, json_serializer

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=15,
)


class InterfaceTests(SynchronousTestCase):
    """
    The plugin object.
    """

    def test_provides(self) -> None:
        """
        The module-level instance is an L{ISerializerPlugin} named C{json}
        with wire id 1 (which the handshake relies on).
        """
        self.assertTrue(verifyObject(ISerializerPlugin, json_serializer))
        self.assertTrue(verifyObject(ISerializer, JsonSerializer()))
        self.assertEqual(json_serializer.name, "json")
        self.assertEqual(json_serializer.wire_id, 1)

    def test_discoverable(self) -> None:
        """
        L{clustron.plugins.find} finds it.
        """
        import twisted.plugins.clustron_builtins  # noqa: F401
        from clustron.plugins import find

        self.assertIsInstance(find("serializer", "json"), JsonSerializer)


class DumpsTests(SynchronousTestCase):
    """
    L{JsonSerializer.dumps}.
    """

    def test_compact_utf8(self) -> None:
        """
        Output is compact UTF-8 JSON, non-ASCII text unescaped.
        """
        self.assertEqual(
            json_serializer.dumps({"a": [1, 2.5, None, True], "é": "ü"}),
            '{"a":[1,2.5,null,true],"é":"ü"}'.encode(),
        )

    def test_refused_values(self) -> None:
        """
        Values JSON cannot carry raise L{SerializationError}, never anything
        else.
        """
        circular: list[Any] = []
        circular.append(circular)
        deep: Any = []
        for _ in range(100_000):
            deep = [deep]
        for value in (
            b"bytes",
            float("nan"),
            float("inf"),
            -float("inf"),
            {1, 2},
            object(),
            {(1, 2): "tuple key"},
            circular,
            "\ud800",
            {"\udfff": 1},
            deep,
        ):
            self.assertRaises(SerializationError, json_serializer.dumps, value)

    def test_error_names_the_problem(self) -> None:
        """
        The error says what could not be encoded.
        """
        with self.assertRaises(SerializationError) as caught:
            json_serializer.dumps({"k": b"x"})
        self.assertIn("bytes", str(caught.exception))


class LoadsTests(SynchronousTestCase):
    """
    L{JsonSerializer.loads}.
    """

    def test_plain(self) -> None:
        """
        JSON documents decode, surrounding whitespace allowed.
        """
        self.assertEqual(json_serializer.loads(b'{"a":[1,"x",null]}'), {"a": [1, "x", None]})
        self.assertEqual(json_serializer.loads(b' \n{"a":1}\t '), {"a": 1})
        self.assertEqual(json_serializer.loads(memoryview(b"[1]")), [1])
        self.assertEqual(json_serializer.loads("\"é\"".encode()), "é")

    def test_malformed(self) -> None:
        """
        Anything but one UTF-8 JSON document raises L{SerializationError}.
        """
        for data in (
            b"",
            b"   ",
            b"{",
            b"[1,]",
            b"{'a': 1}",
            b"[1] [2]",
            b"[1] x",
            b"\xff\xfe",
            b'"\xc3"',
            b"\x00",
            b"1" * 5000,
        ):
            self.assertRaises(SerializationError, json_serializer.loads, data)

    def test_non_finite_numbers_refused(self) -> None:
        """
        What C{dumps} refuses, C{loads} refuses too: C{NaN}, C{Infinity} and
        numbers that overflow to infinity, so that a received value can
        always be sent on.
        """
        for data in (b"NaN", b"Infinity", b"-Infinity", b"[1e400]", b'{"x": -1e999}'):
            self.assertRaises(SerializationError, json_serializer.loads, data)
        self.assertEqual(json_serializer.loads(b"1.7976931348623157e308"), 1.7976931348623157e308)

    def test_lone_surrogates_refused(self) -> None:
        """
        An escaped lone UTF-16 surrogate is refused (no UTF-8 text holds one,
        so it could not be sent on); escaped surrogate pairs are characters
        like any other.
        """
        for data in (rb'"\ud800"', rb'["\uDFFF"]', rb'{"k": "a\udbffb"}', rb'{"\ud800": 1}'):
            self.assertRaises(SerializationError, json_serializer.loads, data)
        self.assertEqual(json_serializer.loads(rb'"\ud83d\ude00"'), "\U0001f600")
        self.assertEqual(json_serializer.loads(rb'"\\ud800"'), "\\ud800")

    def test_deep_nesting(self) -> None:
        """
        Absurdly deep nesting is a L{SerializationError}, not a crash.
        """
        self.assertRaises(SerializationError, json_serializer.loads, b"[" * 200_000)
        self.assertRaises(
            SerializationError, json_serializer.loads, b"[" * 200_000 + b"]" * 200_000
        )


class PropertyTests(SynchronousTestCase):
    """
    Properties over arbitrary input.
    """

    @PROPERTY
    @given(json_values)
    def test_roundtrip(self, value: Any) -> None:
        """
        Plain data survives C{dumps} then C{loads}.
        """
        self.assertEqual(json_serializer.loads(json_serializer.dumps(value)), value)

    @PROPERTY
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """
        Arbitrary bytes decode or raise L{SerializationError}, nothing else;
        whatever decodes encodes again.
        """
        try:
            value = json_serializer.loads(data)
        except SerializationError:
            return
        json_serializer.dumps(value)

    @PROPERTY
    @given(st.text(alphabet="[]{}\",:0123456789abcdefABCDEF.+-tnulrsINiy \\u", max_size=60))
    def test_json_like_text(self, text: str) -> None:
        """
        The same for text made of JSON's own characters (more likely to get
        deep into the parser).
        """
        try:
            value = json_serializer.loads(text.encode())
        except SerializationError:
            return
        json_serializer.dumps(value)
        if isinstance(value, float):
            self.assertTrue(math.isfinite(value))
