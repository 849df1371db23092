"""
What one discovery source knows: its addresses and how its last attempts
went.

A source updates its L{SourceStatus} after every attempt. A failed attempt
never clears the addresses (a node must not lose its peers, and maybe form
a second cluster, because discovery briefly failed); only a successful
answer that holds addresses replaces them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.logger import Logger

from clustron.discovery.options import format_host_port

log = Logger()

Address = tuple[str, int]


class SourceStatus:
    """
    The addresses a discovery source knows, and its recent history.

    @ivar source: the source's name for logs (C{"dns"}, C{"etcd"}, ...).
    @ivar last_error: the reason of the latest failure, or C{None} once an
        attempt has succeeded since.
    @ivar last_error_at: when the latest failure happened (reactor seconds),
        or C{None} when there never was one.
    @ivar last_success: when the latest successful attempt finished (reactor
        seconds), or C{None} before the first one.
    @ivar failures: consecutive failures since the last success.
    """

    def __init__(self, source: str, on_change: Callable[[], object]) -> None:
        """
        @param source: the source's name for logs.
        @param on_change: called with no arguments whenever the address set
            changes.
        """
        self.source = source
        self._on_change = on_change
        self._addresses: frozenset[Address] = frozenset()
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_success: float | None = None
        self.failures = 0

    @property
    def addresses(self) -> frozenset[Address]:
        """
        The current address set.
        """
        return self._addresses

    def succeeded(self, now: float, addresses: Iterable[Address] | None = None) -> None:
        """
        Record a successful attempt.

        @param now: the reactor time.
        @param addresses: the new address set, or C{None} when the attempt
            did not produce a set (a registration, say). An empty set here
            is a failure, not a success: use L{failed}.
        """
        self.last_success = now
        self.last_error = None
        self.failures = 0
        if addresses is not None:
            self.replace(addresses)

    def failed(self, now: float, reason: str, retry_in: float | None = None) -> None:
        """
        Record a failed attempt and log it; the addresses stay as they were.

        @param now: the reactor time.
        @param reason: why the attempt failed, for people.
        @param retry_in: seconds until the next attempt, for the log.
        """
        self.last_error = reason
        self.last_error_at = now
        self.failures += 1
        log.warn(
            "discovery source {source} failed ({failures} in a row): {reason}; "
            "keeping {count} known addresses, retrying in {retry_in:.2f} s",
            source=self.source,
            failures=self.failures,
            reason=reason,
            count=len(self._addresses),
            retry_in=retry_in if retry_in is not None else 0.0,
        )

    def replace(self, addresses: Iterable[Address]) -> None:
        """
        Set the address set, calling C{on_change} when it differs.
        """
        new = frozenset(addresses)
        if new != self._addresses:
            log.info(
                "discovery source {source} now knows {count} addresses: {addresses}",
                source=self.source,
                count=len(new),
                addresses=sorted(new),
            )
            self._addresses = new
            self._on_change()

    def snapshot(self) -> dict[str, Any]:
        """
        @return: a JSON-friendly summary for status pages.
        """
        return {
            "source": self.source,
            "addresses": [format_host_port(host, port) for host, port in sorted(self._addresses)],
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_success": self.last_success,
            "failures": self.failures,
        }


class ReportsStatus:
    """
    Base class of discovery sources that keep a L{SourceStatus} in
    C{_status}: it answers L{IDiscovery.addresses} and exposes the status
    for status pages.
    """

    _status: SourceStatus

    def addresses(self) -> set[Address]:
        """
        @return: the C{(host, port)} pairs this source knows now.
        """
        return set(self._status.addresses)

    @property
    def last_error(self) -> str | None:
        """
        The reason of the latest failure, or C{None} once an attempt has
        succeeded since.
        """
        return self._status.last_error

    @property
    def last_success(self) -> float | None:
        """
        When the latest successful attempt finished (reactor seconds).
        """
        return self._status.last_success

    def status(self) -> dict[str, Any]:
        """
        @return: a JSON-friendly summary (see L{SourceStatus.snapshot}).
        """
        return self._status.snapshot()
