"""
The ``static`` discovery plugin: a fixed list of seed addresses.

Configuration::

    discovery:
      static: {seeds: ["10.0.0.1:7101", "10.0.0.2:7101", "[fd00::3]:7101"]}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from clustron.discovery.options import (
    Option,
    check_options,
    host_port,
    list_of,
    parse_host_port,
    with_defaults,
)
from clustron.discovery.status import ReportsStatus, SourceStatus
from clustron.interfaces import IDiscovery, IDiscoveryPlugin

OPTIONS = (Option("seeds", list_of(host_port(), allow_empty=True), default=[]),)


@implementer(IDiscovery)
class StaticDiscovery(ReportsStatus):
    """
    A discovery source whose addresses are the configured seeds.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        seeds: list[tuple[str, int]],
        on_change: Callable[[], object],
    ) -> None:
        """
        @param reactor: gives the time of L{start} for the status.
        @param seeds: the C{(host, port)} pairs.
        @param on_change: called when the set changes (once, at L{start},
            when there are seeds).
        """
        self._reactor = reactor
        self._seeds = frozenset(seeds)
        self._status = SourceStatus("static", on_change)

    def start(self) -> None:
        """
        Make the seeds known.
        """
        self._status.succeeded(self._reactor.seconds(), self._seeds)

    def stop(self) -> None:
        """
        Nothing to withdraw: static seeds register nothing.
        """


@implementer(IDiscoveryPlugin)
class StaticDiscoveryPlugin:
    """
    Discovery from a fixed list of C{host:port} seeds (option C{seeds}).
    """

    name = "static"

    def validate(self, options: Mapping[str, Any] | None) -> list[tuple[str, str]]:
        """
        Check the options: C{seeds} is a list of C{"host:port"} strings.
        """
        return check_options(options, OPTIONS)

    def create(
        self,
        reactor: IReactorTime,
        node_config: object,
        options: Mapping[str, Any] | None,
        on_change: Callable[[], object],
    ) -> StaticDiscovery:
        """
        Build a L{StaticDiscovery} from the options.

        @raise clustron.errors.ConfigError: when the options are invalid.
        """
        values = with_defaults(options, OPTIONS)
        seeds = [parse_host_port(seed) for seed in values["seeds"]]
        return StaticDiscovery(reactor, seeds, on_change)


#: The plugin instance that C{twisted/plugins/clustron_builtins.py} exposes.
static_discovery = StaticDiscoveryPlugin()
