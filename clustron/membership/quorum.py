"""
Quorum: how many members a coordinator must reach before it acts.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class QuorumPolicy:
    """
    The quorum rule of C{membership.quorum}.

    @ivar mode: C{"majority"}, C{"none"} or C{"static"} (an integer was
        configured).
    @ivar size: for C{"static"}, the number of members required.
    @ivar expected_members: for C{"majority"}, the cluster size to take the
        majority of, instead of the size of the previous view.
    """

    mode: str
    size: int = 0
    expected_members: int | None = None

    @classmethod
    def from_config(cls, quorum: str | int, expected_members: int | None) -> QuorumPolicy:
        """
        Build the policy from C{membership.quorum} and
        C{membership.expected_members}.
        """
        if isinstance(quorum, int):
            return cls("static", size=quorum)
        if quorum == "none":
            return cls("none")
        return cls("majority", expected_members=expected_members)

    def required(self, base: int) -> int:
        """
        @param base: the number of active members of the previous view.
        @return: how many members (the coordinator included) must be
            reachable for the coordinator to act.
        """
        if self.mode == "none":
            return 1
        if self.mode == "static":
            return self.size
        size = self.expected_members if self.expected_members else base
        return size // 2 + 1

    def satisfied(self, present: int, base: int) -> bool:
        """
        @return: whether C{present} reachable members make a quorum of a
            view with C{base} active members.
        """
        return present >= self.required(base)
