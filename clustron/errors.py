"""
Exception types raised by Clustron.
"""

from __future__ import annotations

from collections.abc import Sequence


class ClustronError(Exception):
    """
    Base class of every exception Clustron raises on purpose.
    """


class ConfigError(ClustronError):
    """
    A configuration failed validation.

    @ivar errors: every problem found, as C{(key_path, reason)} pairs, in the
        order they were found.
    """

    def __init__(self, errors: Sequence[tuple[str, str]]) -> None:
        self.errors = list(errors)
        super().__init__(self.render())

    def render(self) -> str:
        """
        @return: one line per problem, C{key.path: reason}.
        """
        return "\n".join(f"{key}: {reason}" if key else reason for key, reason in self.errors)


class MissingPlugin(ClustronError):
    """
    No installed plugin of the requested kind has the requested name.

    @ivar kind: the kind of plugin (C{"transport"}, C{"serializer"}, ...).
    @ivar requested: the name that was asked for.
    @ivar installed: the names that are installed, sorted.
    """

    def __init__(self, kind: str, requested: str, installed: Sequence[str]) -> None:
        self.kind = kind
        self.requested = requested
        self.installed = sorted(installed)
        names = ", ".join(self.installed) or "(none)"
        super().__init__(f"no {kind} plugin named {requested!r} is installed; installed: {names}")


class SerializationError(ClustronError):
    """
    A value could not be encoded, or bytes could not be decoded.
    """


class FrameError(ClustronError):
    """
    Bytes from a peer violate the framing rules (bad magic, version, length,
    checksum or signature). The connection that produced them is closed.

    @ivar reason: a short machine-readable reason (used as a metric label).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ProtocolViolation(ClustronError):
    """
    A well-framed message that breaks the protocol (wrong type for the
    connection's state, malformed fields).

    @ivar reason: a short machine-readable reason.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class HandshakeRejected(ClustronError):
    """
    A peer refused our handshake, or we refused theirs.

    @ivar reason: the machine-readable reason (C{"cluster_id_mismatch"},
        C{"protocol_version"}, ...).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class QueueFull(ClustronError):
    """
    A bounded send queue has no room: the peer is slow or unreachable.
    """


class MessageTooLarge(ClustronError):
    """
    A message body is larger than C{messaging.max_message_bytes}.
    """


class NotJoined(ClustronError):
    """
    The operation needs this node to be a member of a view, and it is not.
    """


class RequestTimeout(ClustronError):
    """
    A request got no reply within its timeout.
    """


class RemoteError(ClustronError):
    """
    The remote handler of a request raised an exception.

    @ivar type_name: the remote exception's type name.
    @ivar message: the remote exception's message.
    """

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        self.message = message
        super().__init__(f"{type_name}: {message}")


class UnknownMember(ClustronError):
    """
    The named node is not a member of the current view.
    """


class DeliveryFailed(ClustronError):
    """
    A reliable message could not be delivered: its receiver was declared
    dead or left before acknowledging it.
    """


class NoQuorum(ClustronError):
    """
    The action needs a coordinator with quorum, and there is none.
    """
