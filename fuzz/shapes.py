"""
Plain-data values built from fuzzer bytes, shaped like Clustron's messages.

Random bytes rarely decode to a JSON document that reaches past the first
type check of a handler. The builders here spend the fuzzer's bytes on
choices instead: which message kind, which of its fields, which value for
each (with the protocol's own keys, node ids and boundary numbers among the
candidates), so that most inputs are I{nearly} valid messages and the fuzzer
explores the handlers rather than the JSON parser.

Values may hold what any installed serializer can decode, not only JSON:
bytes, NaN and infinities come from msgpack.
"""

from __future__ import annotations

import math
from typing import Any

import atheris

from clustron.membership import group as membership_group

#: Every key the wire protocol uses (membership, messaging, total order).
KEYS = (
    "k",
    "v",
    "c",
    "ca",
    "a",
    "j",
    "i",
    "epoch",
    "seq",
    "coordinator",
    "members",
    "node_id",
    "address",
    "incarnation",
    "priority",
    "state",
    "draining",
    "reason",
    "view",
    "merged_from",
    "granted",
    "bootstrap",
    "fallback",
    "transfer",
    "prefer",
    "target",
    "nonce",
    "origin",
    "id",
    "op",
    "by",
    "ok",
    "result",
    "error",
    "message",
    "type",
    "f",
    "ids",
    "t",
    "b",
    "rq",
    "vc",
    "e",
    "mid",
    "tc",
    "last",
    "entries",
    "fill",
    "index",
    "count",
    "total",
    "data",
    "s",
    "et",
    "em",
    "cluster_id",
    "protocol",
    "app_version",
    "serializer",
    "signing",
)

#: Strings worth trying where a string goes.
WORDS = (
    "",
    "n1",
    "n2",
    "n3",
    "x9",
    "sim",
    "json",
    "msgpack",
    "protobuf",
    "crc32",
    "hmac-sha256",
    "none",
    "alive",
    "suspect",
    "dead",
    "leaving",
    "joining",
    "join",
    "view",
    "vote_req",
    "vote",
    "prevote_req",
    "prevote",
    "abdicate",
    "leave",
    "merge",
    "probe_req",
    "probe",
    "probe_ack",
    "admin",
    "admin_result",
    "join_refused",
    "view_req",
    "alive",
    "election",
    "remove",
    "drain",
    "d",
    "u",
    "ack",
    "frag",
    "m",
    "r",
    "b",
    "c",
    "t",
    "tf",
    "ts",
    "tq",
    "tr",
    "to",
    "tk",
    "10.0.0.1:7000",
    "10.0.0.3:7000",
    "[::1]:7000",
    "host:0",
    "host:99999",
    ":",
    "n1:1:1",
    "n2:0:1",
    "n3:5:18446744073709551615",
    "n1:01:1",
    "n1:1:-1",
    "removed by operator",
    "restarted",
    "AAAA",
    "!!",
    "\x00",
    "\ud800",
    "é" * 3,
    "a" * 300,
    "n" * 70,
)

#: Integers worth trying where a number goes.
NUMBERS = (
    0,
    1,
    2,
    3,
    -1,
    7000,
    255,
    256,
    65535,
    65536,
    2**31,
    2**32,
    2**53,
    2**62 - 1,
    2**62,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63),
    10**30,
)

#: Message kinds, by frame.
CONTROL_KINDS = membership_group.CONTROL_KINDS
ENVELOPE_TYPES = ("d", "u", "ack", "frag")
ENVELOPE_KINDS = ("m", "r", "b", "c", "tf", "ts", "tq", "tr", "to", "tk")

#: The fields each control message kind reads.
CONTROL_FIELDS = {
    "join": ("incarnation", "address", "priority"),
    "join_refused": ("reason",),
    "view": ("view", "merged_from"),
    "view_req": (),
    "vote_req": ("epoch", "view", "priority", "bootstrap", "fallback", "transfer"),
    "vote": ("epoch", "granted", "reason"),
    "prevote_req": ("epoch", "view", "priority", "bootstrap", "fallback", "transfer"),
    "prevote": ("epoch", "granted", "reason"),
    "abdicate": ("epoch", "prefer"),
    "leave": (),
    "alive": ("incarnation",),
    "merge": ("view",),
    "probe_req": ("target", "nonce"),
    "probe": ("nonce", "origin"),
    "probe_ack": ("nonce", "origin", "target"),
    "admin": ("id", "op", "target", "by"),
    "admin_result": ("id", "ok", "result", "error", "message"),
}

#: The fields each envelope kind reads (besides type, id and the FIFO stamp).
ENVELOPE_FIELDS = {
    "m": ("t", "b", "rq"),
    "r": ("c", "ok", "b", "et", "em"),
    "b": ("t", "b"),
    "c": ("t", "b", "vc"),
    "tf": ("mid", "t", "b", "tc"),
    "ts": ("e",),
    "tq": ("epoch",),
    "tr": ("epoch", "last", "entries"),
    "to": ("epoch", "fill"),
    "tk": ("mid",),
}


class Shaper:
    """
    Builds values from a L{atheris.FuzzedDataProvider}.

    @param data: the fuzzer's input.
    @param exotic: whether values may hold bytes, NaN and infinities (what
        msgpack decodes), not only what JSON decodes.
    """

    def __init__(self, data: bytes, exotic: bool = True) -> None:
        self.fdp = atheris.FuzzedDataProvider(data)
        self.exotic = exotic

    def flag(self) -> bool:
        """
        @return: a fuzzer-chosen boolean.
        """
        return self.fdp.ConsumeBool()

    def pick(self, options: Any) -> Any:
        """
        @return: one of C{options}, fuzzer-chosen.
        """
        return self.fdp.PickValueInList(list(options))

    def number(self) -> int:
        """
        @return: an interesting or arbitrary integer.
        """
        if self.flag():
            return self.pick(NUMBERS)
        return self.fdp.ConsumeIntInRange(-1000, 1000)

    def text(self) -> str:
        """
        @return: a protocol word or arbitrary text.
        """
        if self.flag():
            return self.pick(WORDS)
        return self.fdp.ConsumeUnicodeNoSurrogates(self.fdp.ConsumeIntInRange(0, 24))

    def node_id(self) -> str:
        """
        @return: a node id, mostly one of the cluster's.
        """
        return self.pick(("n1", "n2", "n3", "x9")) if self.flag() else self.text()

    def message_id(self) -> str:
        """
        @return: a message id string, mostly well formed.
        """
        if self.fdp.ConsumeIntInRange(0, 3) == 0:
            return self.text()
        return f"{self.node_id()}:{self.number()}:{self.number()}"

    def view_id(self) -> Any:
        """
        @return: a C{[epoch, seq]} pair, mostly well formed.
        """
        if self.fdp.ConsumeIntInRange(0, 3) == 0:
            return self.value(1)
        return [self.number(), self.number()]

    def member(self) -> Any:
        """
        @return: a view member, mostly well formed.
        """
        if self.fdp.ConsumeIntInRange(0, 7) == 0:
            return self.value(2)
        member: dict[str, Any] = {
            "node_id": self.node_id(),
            "address": self.pick(("10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"))
            if self.flag()
            else self.text(),
            "incarnation": self.number(),
            "priority": self.number(),
            "state": self.pick(("alive", "suspect", "dead", "leaving", "joining", "x")),
            "draining": self.flag(),
            "reason": self.text(),
        }
        return self.mutate(member)

    def view(self) -> Any:
        """
        @return: a view, mostly well formed.
        """
        if self.fdp.ConsumeIntInRange(0, 7) == 0:
            return self.value(3)
        members = [self.member() for _ in range(self.fdp.ConsumeIntInRange(0, 4))]
        view = {
            "epoch": self.number(),
            "seq": self.number(),
            "coordinator": self.node_id(),
            "members": members,
        }
        return self.mutate(view)

    def entry(self) -> Any:
        """
        @return: a total-order entry, mostly well formed.
        """
        if self.fdp.ConsumeIntInRange(0, 5) == 0:
            return self.value(2)
        return [
            self.number(),
            self.number(),
            self.message_id(),
            self.node_id(),
            self.text(),
            self.value(1),
            self.pick((None, {}, {"traceparent": "x"}, 1)),
        ]

    def field(self, key: str) -> Any:
        """
        @return: a value for field C{key}, mostly of the type it expects.
        """
        if self.fdp.ConsumeIntInRange(0, 5) == 0:
            return self.value(2)
        if key in ("view",):
            return self.view() if self.flag() else self.view_id()
        if key in ("v", "last"):
            return self.view_id()
        if key in ("members",):
            return [self.member() for _ in range(self.fdp.ConsumeIntInRange(0, 3))]
        if key in ("merged_from",):
            return [self.view() for _ in range(self.fdp.ConsumeIntInRange(0, 2))]
        if key in ("e",):
            return self.entry()
        if key in ("entries", "fill"):
            return [self.entry() for _ in range(self.fdp.ConsumeIntInRange(0, 3))]
        if key in ("c", "ca", "coordinator", "prefer", "target", "origin", "node_id", "by"):
            return self.node_id()
        if key in ("id", "mid"):
            return self.message_id()
        if key in ("ids",):
            return [self.message_id() for _ in range(self.fdp.ConsumeIntInRange(0, 3))]
        if key in (
            "a",
            "j",
            "granted",
            "bootstrap",
            "fallback",
            "transfer",
            "ok",
            "rq",
            "draining",
        ):
            return self.flag()
        if key in ("vc",):
            return {self.node_id(): self.number() for _ in range(self.fdp.ConsumeIntInRange(0, 3))}
        if key in ("f",):
            return [
                self.number() for _ in range(4 if self.flag() else self.fdp.ConsumeIntInRange(0, 6))
            ]
        if key in ("data",):
            return self.pick(("", "AAAA", "aGVsbG8=", "!!!")) if self.flag() else self.text()
        if key in ("t", "s", "address", "reason", "op", "et", "em", "error", "message"):
            return self.text()
        return self.number() if self.flag() else self.value(1)

    def mutate(self, obj: dict[str, Any]) -> dict[str, Any]:
        """
        Sometimes drop a key of C{obj}, or add a stray one.
        """
        if obj and self.fdp.ConsumeIntInRange(0, 5) == 0:
            obj.pop(self.pick(sorted(obj)))
        if self.fdp.ConsumeIntInRange(0, 5) == 0:
            obj[self.pick(KEYS)] = self.value(1)
        return obj

    def value(self, depth: int) -> Any:
        """
        @return: any plain-data value, nested at most C{depth} deep.
        """
        choice = self.fdp.ConsumeIntInRange(0, 9 if depth > 0 else 7)
        if choice == 0:
            return None
        if choice == 1:
            return self.flag()
        if choice == 2:
            return self.number()
        if choice == 3:
            special = (0.0, -0.0, 0.5, 1e308, -1e308, 2.0**63)
            if self.exotic:
                special += (math.nan, math.inf, -math.inf)
            return self.pick(special)
        if choice in (4, 5):
            return self.text()
        if choice == 6:
            return self.fdp.ConsumeBytes(self.fdp.ConsumeIntInRange(0, 8)) if self.exotic else ""
        if choice == 7:
            return self.node_id()
        if choice == 8:
            return [self.value(depth - 1) for _ in range(self.fdp.ConsumeIntInRange(0, 4))]
        return {
            (self.pick(KEYS) if self.flag() else self.text()): self.value(depth - 1)
            for _ in range(self.fdp.ConsumeIntInRange(0, 4))
        }

    def control(self, heartbeat: bool) -> Any:
        """
        @return: the body of a CONTROL frame (or of a HEARTBEAT frame).
        """
        if self.fdp.ConsumeIntInRange(0, 7) == 0:
            return self.value(3)
        if heartbeat:
            fields: tuple[str, ...] = ("v", "c", "ca", "a", "j", "i")
            body: dict[str, Any] = {}
        else:
            kind = self.pick(CONTROL_KINDS) if self.fdp.ConsumeIntInRange(0, 9) else self.text()
            fields = CONTROL_FIELDS.get(kind, ())
            body = {"k": kind}
        for key in fields:
            if self.fdp.ConsumeIntInRange(0, 7):
                body[key] = self.field(key)
        return self.mutate(body)

    def envelope(self, sender: str) -> Any:
        """
        @return: the body of a MESSAGE frame from C{sender}.
        """
        if self.fdp.ConsumeIntInRange(0, 7) == 0:
            return self.value(3)
        kind_of_envelope = self.pick(ENVELOPE_TYPES)
        body: dict[str, Any] = {"type": kind_of_envelope}
        if kind_of_envelope == "ack":
            body["ids"] = self.field("ids")
            return self.mutate(body)
        if kind_of_envelope == "frag":
            for key in ("id", "index", "count", "total", "data", "s"):
                body[key] = self.field(key) if key in ("id", "data") else self.number()
            if self.flag():
                body["s"] = self.pick(("json", "msgpack", "protobuf"))
            if self.flag():
                body["index"], body["count"] = 0, 1
            return self.mutate(body)
        if self.flag():
            body["id"] = f"{sender}:{self.pick((1, 2, self.number()))}:{self.number()}"
        else:
            body["id"] = self.message_id()
        if kind_of_envelope == "d":
            body["f"] = self.field("f")
        kind = self.pick(ENVELOPE_KINDS)
        body["k"] = kind
        for key in ENVELOPE_FIELDS[kind]:
            if self.fdp.ConsumeIntInRange(0, 7):
                body[key] = self.field(key)
        return self.mutate(body)

    def hello(self) -> Any:
        """
        @return: a HELLO payload, mostly well formed.
        """
        if self.fdp.ConsumeIntInRange(0, 7) == 0:
            return self.value(3)
        hello: dict[str, Any] = {
            "cluster_id": self.pick(("test", "other", "")) if self.flag() else self.text(),
            "node_id": self.node_id(),
            "incarnation": self.number(),
            "protocol": [self.pick((1, 0, 2, 255)), self.number()]
            if self.flag()
            else self.value(1),
            "app_version": self.text(),
            "address": self.pick(("10.0.0.9:7000", "[::1]:1", "h:65535", "h:65536", "h:0", "x"))
            if self.flag()
            else self.text(),
            "serializer": self.pick(("json", "msgpack", "nope")) if self.flag() else self.text(),
            "priority": self.number(),
            "signing": self.pick(("crc32", "hmac-sha256", "none")) if self.flag() else self.text(),
            "nonce": self.text(),
        }
        return self.mutate(hello)
