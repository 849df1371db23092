"""
The connection handshake, as pure functions.

Both ends send a HELLO as soon as the connection is up. Each checks the
other's: a different cluster id, an incompatible protocol major version, an
unknown serializer or a duplicate node id is refused with an explicit REJECT
reason, which both sides log and count. HELLO and REJECT payloads are always
JSON, whatever serializer the node is configured with, so that nodes that
disagree on serializers can still tell each other why.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

import attrs

from clustron.errors import ProtocolViolation
from clustron.wire.framing import PROTOCOL_MAJOR, PROTOCOL_MINOR

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_TEXT = 256

# Rejection reasons (also metric labels).
CLUSTER_ID_MISMATCH = "cluster_id_mismatch"
PROTOCOL_VERSION = "protocol_version"
UNKNOWN_SERIALIZER = "unknown_serializer"
DUPLICATE_NODE_ID = "duplicate_node_id"
SELF_CONNECTION = "self_connection"
SIGNING_MISMATCH = "signing_mismatch"
TLS_IDENTITY = "tls_identity"
MALFORMED_HELLO = "malformed_hello"

#: Every rejection reason this code sends (a REJECT may carry any text: only
#: these become metric labels, so a peer cannot grow the label set).
REASONS = frozenset(
    {
        CLUSTER_ID_MISMATCH,
        PROTOCOL_VERSION,
        UNKNOWN_SERIALIZER,
        DUPLICATE_NODE_ID,
        SELF_CONNECTION,
        SIGNING_MISMATCH,
        TLS_IDENTITY,
        MALFORMED_HELLO,
    }
)
_MAX_REASON = 64


@attrs.frozen
class Hello:
    """
    What a node says about itself when a connection opens.

    @ivar cluster_id: the cluster it belongs to.
    @ivar node_id: its unique id.
    @ivar incarnation: grows each time the node starts (and when it refutes
        a suspicion).
    @ivar protocol: C{(major, minor)} protocol version.
    @ivar app_version: the application's own version string, informative.
    @ivar address: the C{"host:port"} peers dial to reach it.
    @ivar serializer: the name of the serializer its frames use.
    @ivar priority: its election priority.
    @ivar signing: its frame integrity mode (C{crc32}, C{hmac-sha256}, C{none}).
    @ivar nonce: random hex drawn for each connection (it binds signatures
        to the connection, and lets a node that dialled itself recognise its
        own HELLO).
    """

    cluster_id: str
    node_id: str
    incarnation: int
    protocol: tuple[int, int]
    app_version: str
    address: str
    serializer: str
    priority: int = 0
    signing: str = "crc32"
    nonce: str = ""

    def to_dict(self) -> dict[str, Any]:
        """
        @return: the HELLO payload as plain data.
        """
        return {
            "cluster_id": self.cluster_id,
            "node_id": self.node_id,
            "incarnation": self.incarnation,
            "protocol": list(self.protocol),
            "app_version": self.app_version,
            "address": self.address,
            "serializer": self.serializer,
            "priority": self.priority,
            "signing": self.signing,
            "nonce": self.nonce,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Hello:
        """
        Parse and check a received HELLO payload.

        @raise ProtocolViolation: (reason C{malformed_hello}) naming the first
            bad field.
        """
        if not isinstance(data, Mapping):
            raise ProtocolViolation(MALFORMED_HELLO, "hello is not a mapping")

        def text(key: str, pattern: re.Pattern[str] | None = None) -> str:
            value = data.get(key)
            if not isinstance(value, str) or len(value) > _MAX_TEXT:
                raise ProtocolViolation(MALFORMED_HELLO, f"{key} must be a short string")
            if pattern is not None and not pattern.fullmatch(value):
                raise ProtocolViolation(MALFORMED_HELLO, f"{key} {value!r} is not a valid id")
            return value

        def integer(key: str, default: int | None = None) -> int:
            value = data.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or abs(value) > 2**63:
                raise ProtocolViolation(MALFORMED_HELLO, f"{key} must be an integer")
            return value

        protocol = data.get("protocol")
        if (
            not isinstance(protocol, list)
            or len(protocol) != 2
            or not all(
                isinstance(p, int) and not isinstance(p, bool) and 0 <= p < 256 for p in protocol
            )
        ):
            raise ProtocolViolation(MALFORMED_HELLO, "protocol must be [major, minor]")
        address = text("address")
        host, _, port = address.rpartition(":")
        if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ProtocolViolation(MALFORMED_HELLO, f"address {address!r} is not host:port")
        return cls(
            cluster_id=text("cluster_id", _ID),
            node_id=text("node_id", _ID),
            incarnation=integer("incarnation"),
            protocol=(protocol[0], protocol[1]),
            app_version=text("app_version"),
            address=address,
            serializer=text("serializer"),
            priority=integer("priority", 0),
            signing=text("signing") if "signing" in data else "crc32",
            nonce=text("nonce") if "nonce" in data else "",
        )


def check_hello(
    ours: Hello,
    theirs: Hello,
    known_serializers: frozenset[str] | set[str],
    own_nonces: Collection[str] = (),
) -> tuple[str, str] | None:
    """
    Decide whether to accept a peer's HELLO.

    @param own_nonces: the nonces this node sent in the HELLOs of its open
        connections (besides C{ours.nonce}): a HELLO with our id and one of
        them is our own.

    @return: None to accept, or C{(reason, detail)} to refuse.
    """
    if theirs.cluster_id != ours.cluster_id:
        return (
            CLUSTER_ID_MISMATCH,
            f"peer is in cluster {theirs.cluster_id!r}, this node is in {ours.cluster_id!r}",
        )
    if theirs.protocol[0] != PROTOCOL_MAJOR:
        return (
            PROTOCOL_VERSION,
            f"peer speaks protocol {theirs.protocol[0]}.{theirs.protocol[1]}, "
            f"this node speaks {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}",
        )
    if theirs.signing != ours.signing:
        return (
            SIGNING_MISMATCH,
            f"peer protects frames with {theirs.signing!r}, this node with {ours.signing!r}",
        )
    if theirs.serializer not in known_serializers:
        return (
            UNKNOWN_SERIALIZER,
            f"peer uses serializer {theirs.serializer!r}, installed here: "
            + ", ".join(sorted(known_serializers)),
        )
    if theirs.node_id == ours.node_id:
        # Our id with a nonce we did not draw is another process, even when
        # it started at the same moment (same incarnation).
        if theirs.nonce == ours.nonce or theirs.nonce in own_nonces:
            return (SELF_CONNECTION, "connected to itself")
        return (
            DUPLICATE_NODE_ID,
            f"another node (at {theirs.address}) uses this node's id {ours.node_id!r}",
        )
    return None


@attrs.frozen
class Reject:
    """
    Why a handshake was refused.
    """

    reason: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        """
        @return: the REJECT payload as plain data.
        """
        return {"reason": self.reason, "detail": self.detail}

    @classmethod
    def from_dict(cls, data: Any) -> Reject:
        """
        Parse a received REJECT (lenient: it only feeds a log line).
        """
        if not isinstance(data, Mapping):
            return cls("unknown", "malformed reject")
        reason = data.get("reason")
        detail = data.get("detail")
        return cls(
            reason[:_MAX_REASON] if isinstance(reason, str) else "unknown",
            detail[:_MAX_TEXT] if isinstance(detail, str) else "",
        )


def keep_connection(local_id: str, peer_id: str, initiated_locally: bool) -> bool:
    """
    The one-connection-per-peer-pair rule: when two connections join the
    same pair of nodes, both nodes keep the one dialled by the node with the
    smaller id, so both reach the same decision without talking.

    @return: whether a connection dialled by us (C{initiated_locally}) or by
        the peer is the one to keep.
    """
    initiator = local_id if initiated_locally else peer_id
    return initiator == min(local_id, peer_id)
