"""
Two Clustron plugins: ``file`` discovery and ``ordinal`` election.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from clustron.discovery.options import (
    Option,
    check_options,
    parse_host_port,
    positive_number,
    text,
    with_defaults,
)
from clustron.interfaces import (
    IDiscovery,
    IDiscoveryPlugin,
    IElectionPlugin,
    IElectionStrategy,
)

log = Logger()

Address = tuple[str, int]

#: The options under ``discovery: {file: {...}}``.
FILE_OPTIONS = (
    Option("path", text, required=True),
    Option("interval", positive_number, default=5.0),
)


@implementer(IDiscovery)
class FileDiscovery:
    """
    Peers listed in a file, one ``host:port`` per line (``#`` starts a
    comment), read again every ``interval`` seconds.
    """

    def __init__(
        self,
        clock: IReactorTime,
        path: str,
        interval: float,
        on_change: Callable[[], object],
    ) -> None:
        self._path = path
        self._interval = interval
        self._on_change = on_change
        self._known: frozenset[Address] = frozenset()
        self._loop = LoopingCall(self._read)
        self._loop.clock = clock

    def start(self) -> None:
        """
        Read the file now, then every ``interval`` seconds.
        """
        self._loop.start(self._interval, now=True)

    def stop(self) -> None:
        """
        Stop reading; there is no registration to withdraw.
        """
        if self._loop.running:
            self._loop.stop()

    def addresses(self) -> set[Address]:
        """
        The addresses read last time the file could be read.
        """
        return set(self._known)

    def _read(self) -> None:
        try:
            with open(self._path, encoding="utf-8") as f:
                lines = [line.split("#", 1)[0].strip() for line in f]
            found = frozenset(parse_host_port(line) for line in lines if line)
        except (OSError, ValueError) as e:
            # Keep the addresses known so far: losing every peer because a
            # file was briefly unreadable could split the cluster.
            log.warn("file discovery cannot read {path}: {error}", path=self._path, error=str(e))
            return
        if found != self._known:
            self._known = found
            self._on_change()


@implementer(IPlugin, IDiscoveryPlugin)
class FileDiscoveryPlugin:
    """
    Selected by ``discovery: {file: {path: peers.txt}}``.
    """

    name = "file"

    def validate(self, options: Mapping[str, Any] | None) -> list[tuple[str, str]]:
        """
        ``path`` is required; ``interval`` is a positive number of seconds.
        """
        return check_options(options, FILE_OPTIONS)

    def create(
        self,
        reactor: IReactorTime,
        node_config: Any,
        options: Mapping[str, Any] | None,
        on_change: Callable[[], object],
    ) -> FileDiscovery:
        """
        A relative ``path`` is relative to the configuration file's directory.
        """
        values = with_defaults(options, FILE_OPTIONS)
        base = os.path.dirname(node_config.source_path or os.path.join(os.getcwd(), "x"))
        path = os.path.join(base, os.path.expanduser(values["path"]))
        return FileDiscovery(reactor, path, values["interval"], on_change)


@implementer(IElectionStrategy)
class OrdinalStrategy:
    """
    Rank by priority, then by the number that ends the node id, so that
    ``n10`` outranks ``n9`` (plain Bully compares ids as text: ``n9`` wins).
    """

    def rank(self, member: Any) -> tuple[int, int, str]:
        """
        ``(priority, trailing number or -1, node_id)``.
        """
        match = re.search(r"(\d+)$", member.node_id)
        return (member.priority, int(match.group(1)) if match else -1, member.node_id)

    def choose(self, candidates: Iterable[Any]) -> str | None:
        """
        The highest-ranked candidate's node id, or None.
        """
        best = max(candidates, key=self.rank, default=None)
        return None if best is None else str(best.node_id)


@implementer(IPlugin, IElectionPlugin)
class OrdinalElectionPlugin:
    """
    Selected by ``election: {plugin: ordinal}``.
    """

    name = "ordinal"

    def create(self, config: Any) -> OrdinalStrategy:
        """
        The strategy holds no state, so one per node is plenty.
        """
        return OrdinalStrategy()
