"""
Views: who is in the cluster, in what state, and who coordinates.

A view is named by C{(epoch, seq)}. Only the acting coordinator of an epoch
installs views in it, numbering them with C{seq}; a new coordinator starts a
new epoch. View ids only increase on every node, and one view id names one
member set everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from clustron.errors import ProtocolViolation

JOINING = "joining"
ALIVE = "alive"
SUSPECT = "suspect"
DEAD = "dead"
LEAVING = "leaving"

STATES = (JOINING, ALIVE, SUSPECT, DEAD, LEAVING)

#: States of members that still belong to the group (count towards quorum,
#: receive broadcasts). Dead and leaving members stay listed for a while so
#: that operators see why they went, then are reaped.
ACTIVE_STATES = frozenset({JOINING, ALIVE, SUSPECT})

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_MEMBERS = 4096
_MAX_REASON = 512

ViewId = tuple[int, int]


def is_address(text: str) -> bool:
    """
    Whether C{text} is a C{"host:port"} address (at most 300 characters, the
    port a decimal number from 1 to 65535), as members are dialled at.
    """
    host, sep, port = text.rpartition(":")
    return (
        len(text) <= 300
        and bool(sep and host)
        and port.isascii()
        and port.isdigit()
        and 0 < int(port) < 65536
    )


@attrs.frozen
class Member:
    """
    One member as a view records it.

    @ivar node_id: its unique id.
    @ivar address: C{"host:port"} peers dial to reach it.
    @ivar incarnation: the incarnation the view knows; a higher one refutes
        suspicion and a restart brings a new one.
    @ivar priority: its election priority (rank is C{(priority, node_id)}).
    @ivar state: one of L{STATES}.
    @ivar draining: True when operators asked it to drain: it is never
        elected.
    @ivar reason: why it is in this state (who decided, what was seen).
    """

    node_id: str
    address: str
    incarnation: int
    priority: int = 0
    state: str = ALIVE
    draining: bool = False
    reason: str = ""

    @property
    def active(self) -> bool:
        """
        Whether the member still belongs to the group (not dead or leaving).
        """
        return self.state in ACTIVE_STATES

    def to_dict(self) -> dict[str, Any]:
        """
        @return: the member as plain data (the shape of C{GET /v1/cluster}).
        """
        return {
            "node_id": self.node_id,
            "address": self.address,
            "state": self.state,
            "incarnation": self.incarnation,
            "priority": self.priority,
            "draining": self.draining,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Member:
        """
        Parse a member received from a peer.

        @raise ProtocolViolation: on any malformed field.
        """
        if not isinstance(data, Mapping):
            raise ProtocolViolation("malformed_view", "member is not a mapping")
        node_id = data.get("node_id")
        address = data.get("address")
        incarnation = data.get("incarnation")
        priority = data.get("priority", 0)
        state = data.get("state")
        draining = data.get("draining", False)
        reason = data.get("reason", "")
        if not isinstance(node_id, str) or not _ID.fullmatch(node_id):
            raise ProtocolViolation("malformed_view", f"bad member id {node_id!r}")
        if not isinstance(address, str) or not is_address(address):
            raise ProtocolViolation("malformed_view", f"bad address for {node_id}")
        for name, value in (("incarnation", incarnation), ("priority", priority)):
            if not isinstance(value, int) or isinstance(value, bool) or abs(value) > 2**63:
                raise ProtocolViolation("malformed_view", f"bad {name} for {node_id}")
        if state not in STATES:
            raise ProtocolViolation("malformed_view", f"bad state {state!r} for {node_id}")
        if not isinstance(draining, bool):
            raise ProtocolViolation("malformed_view", f"bad draining flag for {node_id}")
        if not isinstance(reason, str):
            raise ProtocolViolation("malformed_view", f"bad reason for {node_id}")
        return cls(
            node_id=node_id,
            address=address,
            incarnation=incarnation,  # type: ignore[arg-type]
            priority=priority,  # type: ignore[arg-type]
            state=state,  # type: ignore[arg-type]
            draining=draining,
            reason=reason[:_MAX_REASON],
        )


@attrs.frozen
class View:
    """
    A numbered membership view.

    @ivar epoch: grows with every change of coordinator.
    @ivar seq: grows with every view the coordinator installs in its epoch.
    @ivar coordinator: the node id of the coordinator that installed it.
    @ivar members: the members, sorted by node id.
    """

    epoch: int
    seq: int
    coordinator: str
    members: tuple[Member, ...]

    @property
    def id(self) -> ViewId:
        """
        C{(epoch, seq)}.
        """
        return (self.epoch, self.seq)

    def member(self, node_id: str) -> Member | None:
        """
        @return: the member with this id, or None.
        """
        for member in self.members:
            if member.node_id == node_id:
                return member
        return None

    def active_members(self) -> tuple[Member, ...]:
        """
        Members that belong to the group (not dead or leaving).
        """
        return tuple(m for m in self.members if m.active)

    def active_ids(self) -> tuple[str, ...]:
        """
        The node ids of L{active_members}, sorted.
        """
        return tuple(m.node_id for m in self.members if m.active)

    def is_active_member(self, node_id: str) -> bool:
        """
        Whether C{node_id} belongs to the group in this view.
        """
        member = self.member(node_id)
        return member is not None and member.active

    def replace(self, *, epoch: int, seq: int, coordinator: str, members: Iterable[Member]) -> View:
        """
        @return: a new view (members are sorted by id).
        """
        return View(epoch, seq, coordinator, tuple(sorted(members, key=lambda m: m.node_id)))

    def to_dict(self) -> dict[str, Any]:
        """
        @return: the view as plain data (the shape of C{GET /v1/cluster}).
        """
        return {
            "epoch": self.epoch,
            "seq": self.seq,
            "coordinator": self.coordinator,
            "members": [m.to_dict() for m in self.members],
        }

    @classmethod
    def from_dict(cls, data: Any) -> View:
        """
        Parse a view received from a peer.

        @raise ProtocolViolation: on any malformed field.
        """
        if not isinstance(data, Mapping):
            raise ProtocolViolation("malformed_view", "view is not a mapping")
        epoch = data.get("epoch")
        seq = data.get("seq")
        coordinator = data.get("coordinator")
        members = data.get("members")
        for name, value in (("epoch", epoch), ("seq", seq)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**62:
                raise ProtocolViolation("malformed_view", f"bad {name}")
        if not isinstance(coordinator, str) or not _ID.fullmatch(coordinator):
            raise ProtocolViolation("malformed_view", "bad coordinator")
        if not isinstance(members, list) or len(members) > _MAX_MEMBERS:
            raise ProtocolViolation("malformed_view", "bad member list")
        parsed = [Member.from_dict(m) for m in members]
        if len({m.node_id for m in parsed}) != len(parsed):
            raise ProtocolViolation("malformed_view", "duplicate member")
        return cls(
            epoch,  # type: ignore[arg-type]
            seq,  # type: ignore[arg-type]
            coordinator,
            tuple(sorted(parsed, key=lambda m: m.node_id)),
        )


def parse_view_id(value: Any) -> ViewId:
    """
    Parse C{[epoch, seq]} received from a peer.

    @raise ProtocolViolation: when it is not two non-negative integers.
    """
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62 for v in value)
    ):
        raise ProtocolViolation("malformed", f"bad view id {value!r}")
    return (value[0], value[1])
