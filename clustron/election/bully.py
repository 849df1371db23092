"""
The ``bully`` election strategy (the default).

Rank is C{(priority, node_id)}: the highest-ranked member that may coordinate
(alive, reachable, not draining, not leaving) is the one that should. Bully
alone is unsafe under partitions; Clustron pairs it with epochs, majority
votes and quorum checks (see L{clustron.membership}), so the strategy only
says who I{should} coordinate, never who I{does}.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from clustron.interfaces import IElectionPlugin, IElectionStrategy


@implementer(IElectionStrategy)
class BullyStrategy:
    """
    Highest C{(priority, node_id)} wins.
    """

    def rank(self, member: Any) -> tuple[int, str]:
        """
        @return: C{(member.priority, member.node_id)}.
        """
        return (member.priority, member.node_id)

    def choose(self, candidates: Iterable[Any]) -> str | None:
        """
        @return: the node id of the highest-ranked candidate, or None.
        """
        best = max(candidates, key=self.rank, default=None)
        return None if best is None else best.node_id  # type: ignore[no-any-return]


@implementer(IPlugin, IElectionPlugin)
class BullyPlugin:
    """
    Offers L{BullyStrategy} as the ``bully`` election plugin.
    """

    name = "bully"

    def create(self, config: Any) -> BullyStrategy:
        """
        @return: a L{BullyStrategy}.
        """
        return BullyStrategy()


bully_election = BullyPlugin()
