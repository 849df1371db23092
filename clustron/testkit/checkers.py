"""
Invariant checkers: a global observer of every node's decisions.

A checker subscribes to each node's membership C{observers} (the decisions a
node makes: elected, install, accept, vote, refuse_stale) and asserts the
promises of DESIGN section 4 after every event:

- at most one coordinator per epoch;
- no view installed by a coordinator without quorum;
- epochs never go back on a node;
- one view id names one member set everywhere.

L{MessagingChecker} does the same for DESIGN section 5 (no duplicate
delivery, FIFO, causal order, one message per total-order position, no
gaps) and, given the nodes, checks that only the acting coordinator of an
epoch sequences total order in it.

Violations are collected as strings (so a seed sweep can print them all);
C{assert_ok} raises with every one of them. Liveness (what must eventually
happen once faults stop) is checked by L{clustron.testkit.liveness}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

from clustron.membership.view import View

__all__ = ["InvariantViolation", "MembershipChecker", "MessagingChecker"]


class InvariantViolation(AssertionError):
    """
    A promise was broken; the message lists every violation.
    """


def _show_members(members: tuple[tuple[str, int], ...]) -> str:
    return "[" + ", ".join(f"{node}#{incarnation}" for node, incarnation in members) + "]"


class MembershipChecker:
    """
    Checks the membership promises across all nodes of a simulation.

    With C{majority} (the default) a view install needs a majority of the
    previous view whatever quorum the nodes are configured with: that is the
    promise that rules out split brain, and what C{quorum: none} gives up, so
    the checker reports it there.

    @ivar violations: every violation found, in the order found.
    @ivar coordinators: the coordinator of each epoch seen.
    @ivar installed: every view installed by a coordinator, with the time,
        in the order installed.
    """

    def __init__(self, majority: bool = True, clock: IReactorTime | None = None) -> None:
        """
        @param majority: hold every install to a majority of the previous
            view, whatever quorum the nodes are configured with.
        @param clock: the simulation's clock, whose time stamps violations
            and L{installed}; without it, the observing node's own clock is
            used (which clock skew offsets).
        """
        self.majority = majority
        self.clock = clock
        self.violations: list[str] = []
        self.coordinators: dict[int, str] = {}
        self.installed: list[tuple[float, View]] = []
        self._members_of: dict[tuple[int, int], tuple[tuple[str, int], ...]] = {}
        self._last_epoch: dict[int, tuple[str, int]] = {}
        self.events = 0

    def attach(self, node: Any) -> None:
        """
        Observe one node (call for every node, including restarted ones).
        """
        key = id(node.membership)
        node_id = node.node_id

        def observe(kind: str, fields: dict[str, Any]) -> None:
            self.events += 1
            self._observe(key, node_id, kind, fields)

        node.membership.observers.append(observe)

    def _observe(self, key: int, node_id: str, kind: str, fields: dict[str, Any]) -> None:
        time = self.clock.seconds() if self.clock is not None else fields.get("time", 0.0)
        if kind == "elected":
            self._claim(fields["epoch"], node_id, time)
        elif kind == "install":
            view: View = fields["view"]
            self.installed.append((time, view))
            self._claim(view.epoch, node_id, time)
            required = fields["required"]
            if self.majority:
                required = max(required, fields["base"] // 2 + 1)
            if not fields["acting"] or fields["present"] < required:
                self.violations.append(
                    f"t={time:.3f} {node_id} installed view {view.epoch}.{view.seq} without quorum "
                    f"({fields['present']} of {fields['base']} reachable, {required} needed): "
                    "split brain possible"
                )
            self._same_members(view, node_id, time)
        elif kind == "accept":
            view = fields["view"]
            self._same_members(view, node_id, time)
            last = self._last_epoch.get(key)
            if last is not None and view.epoch < last[1]:
                self.violations.append(
                    f"t={time:.3f} {node_id} went back from epoch {last[1]} to {view.epoch}"
                )
            self._last_epoch[key] = (node_id, view.epoch)

    def _claim(self, epoch: int, node_id: str, time: float) -> None:
        holder = self.coordinators.setdefault(epoch, node_id)
        if holder != node_id:
            self.violations.append(
                f"t={time:.3f} split brain: {node_id} and {holder} both coordinate epoch {epoch}"
            )

    def _same_members(self, view: View, node_id: str, time: float) -> None:
        members = tuple((m.node_id, m.incarnation) for m in view.members)
        known = self._members_of.setdefault(view.id, members)
        if known != members:
            self.violations.append(
                f"t={time:.3f} view {view.epoch}.{view.seq} at {node_id} has members "
                f"{_show_members(members)}, elsewhere {_show_members(known)}"
            )

    @property
    def ok(self) -> bool:
        """
        Whether no violation was found.
        """
        return not self.violations

    def assert_ok(self) -> None:
        """
        @raise InvariantViolation: listing every violation, if any.
        """
        if self.violations:
            raise InvariantViolation("\n".join(self.violations))


class MessagingChecker:
    """
    Checks the messaging promises (DESIGN section 5) across all nodes:

    - no message is delivered twice to one node;
    - FIFO: per sender and receiver, unicasts and FIFO broadcasts arrive in
      send order;
    - causal: a causal broadcast is delivered only after everything that
      happened before it (happens-before is computed here, from what each
      sender had delivered when it broadcast, not taken from the nodes);
    - total: one message per position everywhere, one position per
      message everywhere, and each node delivers
      positions in increasing order, without gaps inside an epoch unless it
      left the view in between (a node that rejoins starts where the
      sequence then stands);
    - sequencing: only a node that coordinates the position's epoch and is
      acting (has quorum and is not stepping down, as its membership says at
      that moment) assigns a position, and, given the L{MembershipChecker},
      no other node coordinates that epoch.

    @ivar violations: every violation found, in the order found.
    @ivar delivered: per node id, the message ids delivered, in order.
    """

    def __init__(
        self, membership: MembershipChecker | None = None, clock: IReactorTime | None = None
    ) -> None:
        """
        @param membership: the membership checker whose epoch coordinators
            sequencers are compared with, if any.
        @param clock: the simulation's clock, whose time stamps violations;
            without it, the observing node's own clock is used.
        """
        self.membership = membership
        self.clock = clock
        self.violations: list[str] = []
        self.delivered: dict[str, list[str]] = {}
        self.sent: dict[str, tuple[str, str]] = {}
        self._seen: dict[int, set[str]] = {}
        self._fifo_last: dict[tuple[int, str, int], int] = {}
        self._past: dict[str, frozenset[str]] = {}
        self._history: dict[int, set[str]] = {}
        self._at_position: dict[tuple[int, int], str] = {}
        self._position_of: dict[str, tuple[int, int]] = {}
        self._last_position: dict[int, tuple[int, int]] = {}
        self._rejoined: set[int] = set()
        self.total_log: dict[int, list[tuple[tuple[int, int], str]]] = {}

    def attach(self, node: Any) -> None:
        """
        Observe one node's messenger (call for every node, restarted ones
        too).
        """
        key = id(node.messenger)
        node_id = node.node_id
        self._seen[key] = set()
        self._history[key] = set()
        self.total_log[key] = []

        def observe(kind: str, fields: dict[str, Any]) -> None:
            if kind == "total_sequence":
                self._sequenced(node, fields)
            self._observe(key, node_id, kind, fields)

        def on_event(event: dict[str, Any]) -> None:
            if event["type"] == "left_cluster":
                # When it joins again it starts where the sequence stands.
                self._rejoined.add(key)

        node.messenger.observers.append(observe)
        subscribe = getattr(node, "subscribe", None)
        if subscribe is not None:
            subscribe(on_event)

    def _sequenced(self, node: Any, fields: dict[str, Any]) -> None:
        time = self._time(fields)
        position = fields["position"]
        pos = (position.epoch, position.seq)
        membership = node.membership
        view = membership.view
        where = f"t={time:.3f} {node.node_id} sequenced {fields['id']} at {pos}"
        if view is None or not membership.joined:
            self.violations.append(f"{where} while not a member of a view")
            return
        if view.coordinator != node.node_id or view.epoch != pos[0]:
            self.violations.append(
                f"{where} but its view {view.epoch}.{view.seq} is coordinated by {view.coordinator}"
            )
        if not membership.acting:
            self.violations.append(f"{where} while not acting (no quorum, or stepping down)")
        if self.membership is not None:
            holder = self.membership.coordinators.get(pos[0])
            if holder is not None and holder != node.node_id:
                self.violations.append(f"{where}, but {holder} coordinates epoch {pos[0]}")

    def _time(self, fields: dict[str, Any]) -> float:
        return self.clock.seconds() if self.clock is not None else fields["time"]

    def _observe(self, key: int, node_id: str, kind: str, fields: dict[str, Any]) -> None:
        time = self._time(fields)
        msg_id = fields["id"]
        if kind == "broadcast":
            self.sent[msg_id] = (node_id, fields["order"])
            if fields["order"] == "causal":
                # Everything this node delivered (and its own earlier
                # broadcasts, which it delivers too) happened before.
                self._past[msg_id] = frozenset(self._history[key])
            return
        if kind != "deliver":
            return
        order = fields["order"]
        self.delivered.setdefault(node_id, []).append(msg_id)
        if msg_id in self._seen[key]:
            self.violations.append(f"t={time:.3f} {node_id} delivered {msg_id} twice")
            return
        self._seen[key].add(msg_id)
        sender_node, incarnation, counter = msg_id.rsplit(":", 2)
        if order in ("unicast", "fifo"):
            stream = (key, sender_node, int(incarnation))
            last = self._fifo_last.get(stream, 0)
            if int(counter) <= last:
                self.violations.append(
                    f"t={time:.3f} {node_id} delivered {msg_id} after a later message "
                    f"of the same sender (FIFO broken)"
                )
            self._fifo_last[stream] = max(last, int(counter))
        if order == "causal":
            for later, past in self._past.items():
                # A delivered message whose past holds this one: this one
                # arrives too late.
                if msg_id in past and later in self._seen[key]:
                    self.violations.append(
                        f"t={time:.3f} {node_id} delivered {msg_id} after {later}, "
                        "which causally depends on it (causal order broken)"
                    )
        if order == "total":
            position = fields["position"]
            pos = (position.epoch, position.seq)
            holder = self._at_position.setdefault(pos, msg_id)
            if holder != msg_id:
                self.violations.append(
                    f"t={time:.3f} {node_id} delivered {msg_id} at {pos}, where {holder} "
                    "was delivered elsewhere (total order broken)"
                )
            placed = self._position_of.setdefault(msg_id, pos)
            if placed != pos:
                self.violations.append(
                    f"t={time:.3f} {node_id} delivered {msg_id} at {pos}, but it was delivered "
                    f"at {placed} elsewhere (total order broken: sequenced twice)"
                )
            last_pos = self._last_position.get(key)
            rejoined = key in self._rejoined
            self._rejoined.discard(key)
            if last_pos is not None and pos <= last_pos:
                self.violations.append(
                    f"t={time:.3f} {node_id} delivered position {pos} after {last_pos} (regression)"
                )
            elif (
                last_pos is not None
                and not rejoined
                and pos[0] == last_pos[0]
                and pos[1] != last_pos[1] + 1
            ):
                self.violations.append(
                    f"t={time:.3f} {node_id} delivered position {pos} after {last_pos} without "
                    "leaving the view in between (gap)"
                )
            self._last_position[key] = pos
            self.total_log[key].append((pos, msg_id))
        self._history[key].add(msg_id)

    @property
    def ok(self) -> bool:
        """
        Whether no violation was found.
        """
        return not self.violations

    def assert_ok(self) -> None:
        """
        @raise InvariantViolation: listing every violation, if any.
        """
        if self.violations:
            raise InvariantViolation("\n".join(self.violations))
