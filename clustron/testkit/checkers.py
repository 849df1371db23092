"""
Invariant checkers: a global observer of every node's decisions.

A checker subscribes to each node's membership C{observers} (the decisions a
node makes: elected, install, accept, vote, refuse_stale) and asserts the
promises of DESIGN section 4 after every event:

- at most one coordinator per epoch;
- no view installed by a coordinator without quorum;
- epochs never go back on a node;
- one view id names one member set everywhere.

Violations are collected as strings (so a seed sweep can print them all);
L{MembershipChecker.assert_ok} raises with every one of them.
"""

from __future__ import annotations

from typing import Any

from clustron.membership.view import View


class InvariantViolation(AssertionError):
    """
    A promise was broken; the message lists every violation.
    """


class MembershipChecker:
    """
    Checks the membership promises across all nodes of a simulation.

    With C{majority} (the default) a view install needs a majority of the
    previous view whatever quorum the nodes are configured with: that is the
    promise that rules out split brain, and what C{quorum: none} gives up, so
    the checker reports it there.

    @ivar violations: every violation found, in the order found.
    @ivar coordinators: the coordinator of each epoch seen.
    """

    def __init__(self, majority: bool = True) -> None:
        self.majority = majority
        self.violations: list[str] = []
        self.coordinators: dict[int, str] = {}
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
        time = fields.get("time", 0.0)
        if kind == "elected":
            self._claim(fields["epoch"], node_id, time)
        elif kind == "install":
            view: View = fields["view"]
            self._claim(view.epoch, node_id, time)
            required = fields["required"]
            if self.majority:
                required = max(required, fields["base"] // 2 + 1)
            if not fields["acting"] or fields["present"] < required:
                self.violations.append(
                    f"t={time:.3f} {node_id} installed view {view.epoch}.{view.seq} without quorum "
                    f"({fields['present']} of {fields['base']} reachable, {required} needed)"
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
                f"{[m for m, _ in members]}, elsewhere {[m for m, _ in known]}"
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
