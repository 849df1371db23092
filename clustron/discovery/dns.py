"""
The ``dns`` discovery plugin: peers from DNS SRV records (or A/AAAA
records), re-resolved every ``interval`` seconds.

Configuration::

    discovery:
      dns:
        name: _clustron._tcp.clustron.default.svc.cluster.local
        nameservers: ["10.96.0.10:53"]   # default: the nameservers of /etc/resolv.conf
        interval: 5                      # seconds between lookups
        timeout: 2                       # seconds to wait for each nameserver

Two modes:

 - SRV (no ``port``): ``name`` is looked up as SRV; every record gives a
   target host and a port. Targets are turned into addresses from the
   answer's additional section, or by an A and AAAA lookup through the same
   nameservers; a target with no address records is kept as a host name.
   This is what a Kubernetes headless service publishes as
   ``_<port-name>._<proto>.<service>.<namespace>.svc.<cluster-domain>``.
 - A/AAAA (``port`` given): ``name`` is a plain host name; every A and AAAA
   record gives one address, all with the configured ``port``.

Names are looked up as written (no search domains): give the fully
qualified name. A lookup that fails, or whose answer holds no usable
address, keeps the addresses known so far and is retried with capped
exponential backoff (``retry_initial``, ``retry_max``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import attrs
from twisted.internet import defer
from twisted.internet.defer import (
    Deferred,
    FirstError,
    gatherResults,
    succeed,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import (
    AuthoritativeDomainError,
    DNSNameError,
    DNSQueryRefusedError,
    DNSQueryTimeoutError,
    DNSServerError,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from clustron.backoff import Backoff, RandomSource
from clustron.discovery.options import (
    RETRY_OPTIONS,
    Option,
    Problems,
    check_options,
    check_retry,
    host_port,
    list_of,
    parse_host_port,
    port_number,
    positive_number,
    with_defaults,
)
from clustron.discovery.status import Address, ReportsStatus, SourceStatus
from clustron.errors import ConfigError
from clustron.interfaces import IDiscovery, IDiscoveryPlugin

log = Logger()

#: Where the system's nameservers are listed.
RESOLV_CONF = "/etc/resolv.conf"

#: Builds a resolver (a L{twisted.names} C{IResolver}) for a list of
#: C{(host, port)} nameservers.
ResolverFactory = Callable[[list[Address]], Any]


def _dns_name(key: str, value: object) -> Problems:
    if not isinstance(value, str) or not value.strip("."):
        return [(key, f"must be a DNS name, got {type(value).__name__} {value!r}")]
    name = value.rstrip(".")
    if len(name) > 253:
        return [(key, f"is {len(name)} characters long; a DNS name has at most 253")]
    for label in name.split("."):
        if not 1 <= len(label) <= 63:
            return [(key, f"{value!r} has an empty label or one longer than 63 characters")]
        if not all(c.isascii() and (c.isalnum() or c in "-_") for c in label):
            return [(key, f"{value!r} has a label with characters other than a-z, 0-9, '-', '_'")]
    return []


OPTIONS = (
    Option("name", _dns_name, required=True),
    Option("nameservers", list_of(host_port(default_port=53)), default=[]),
    Option("port", port_number),
    Option("interval", positive_number, default=5.0),
    Option("timeout", positive_number, default=2.0),
    *RETRY_OPTIONS,
)


@attrs.frozen
class DnsSettings:
    """
    The validated options of the C{dns} plugin.

    @ivar name: the name to look up.
    @ivar nameservers: C{(host, port)} nameservers; empty for the system's.
    @ivar port: the port of every address in A/AAAA mode; C{None} for SRV.
    @ivar interval: seconds between successful lookups.
    @ivar timeout: seconds to wait for each nameserver.
    @ivar retry_initial: the first retry delay after a failure.
    @ivar retry_max: the cap on retry delays.
    """

    name: str
    nameservers: tuple[Address, ...] = ()
    port: int | None = None
    interval: float = 5.0
    timeout: float = 2.0
    retry_initial: float = 0.5
    retry_max: float = 30.0

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> DnsSettings:
        """
        @raise clustron.errors.ConfigError: when the options are invalid.
        """
        values = with_defaults(options, OPTIONS)
        values["nameservers"] = tuple(
            parse_host_port(server, 53) for server in values["nameservers"]
        )
        return cls(**values)


class NoRecords(Exception):
    """
    An answer held no usable address.
    """


def system_nameservers(path: str = RESOLV_CONF) -> list[Address]:
    """
    The nameservers listed in a C{resolv.conf(5)} file, on port 53.

    @return: C{[("127.0.0.1", 53)]} when the file is missing or lists none,
        as the C library does.
    @raise OSError: when the file exists but cannot be read.
    """
    servers: list[Address] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    servers.append((words[1], 53))
    except FileNotFoundError:
        pass
    return servers or [("127.0.0.1", 53)]


def _real_resolver(reactor: Any) -> ResolverFactory:
    from twisted.names import client

    def build(servers: list[Address]) -> Any:
        return client.Resolver(servers=list(servers), reactor=reactor)

    return build


def _clean(name: object) -> str:
    return str(name).rstrip(".").lower()


def _address_of(record: dns.RRHeader) -> str | None:
    if record.type == dns.A:
        return cast(dns.Record_A, record.payload).dottedQuad()
    if record.type == dns.AAAA:
        return socket.inet_ntop(socket.AF_INET6, cast(dns.Record_AAAA, record.payload).address)
    return None


def describe_failure(failure: Failure, servers: Sequence[Address], timeout: float) -> str:
    """
    A reason, for people, for a failed lookup.
    """
    while failure.check(FirstError):
        failure = failure.value.subFailure
    where = ", ".join(f"{host}:{port}" for host, port in servers)
    if failure.check(DNSQueryTimeoutError, TimeoutError, defer.TimeoutError):
        return f"no answer from {where} within {timeout} s"
    if failure.check(DNSNameError, AuthoritativeDomainError):
        return f"no such name (NXDOMAIN) at {where}"
    if failure.check(DNSServerError):
        return f"server failure (SERVFAIL) at {where}"
    if failure.check(DNSQueryRefusedError):
        return f"query refused (REFUSED) by {where}"
    if failure.check(NoRecords):
        return str(failure.value)
    return f"{failure.type.__name__}: {failure.getErrorMessage()} (nameservers {where})"


@implementer(IDiscovery)
class DnsDiscovery(ReportsStatus):
    """
    A discovery source that looks a DNS name up every C{interval} seconds.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        settings: DnsSettings,
        on_change: Callable[[], object],
        resolver_factory: ResolverFactory | None = None,
        nameservers: Callable[[], list[Address]] | None = None,
        rng: RandomSource | None = None,
    ) -> None:
        """
        @param reactor: for timers, and for the network when
            C{resolver_factory} is not given.
        @param settings: the options.
        @param on_change: called when the address set changes.
        @param resolver_factory: builds a resolver for a list of nameservers;
            by default a L{twisted.names.client.Resolver} on C{reactor}.
        @param nameservers: gives the system nameservers, asked before each
            lookup when C{settings.nameservers} is empty; by default
            L{system_nameservers}.
        @param rng: the jitter of retry delays.
        """
        self._reactor = reactor
        self._settings = settings
        self._resolver_factory = resolver_factory or _real_resolver(reactor)
        self._system_nameservers = nameservers or system_nameservers
        self._status = SourceStatus("dns", on_change)
        self._backoff = Backoff(settings.retry_initial, settings.retry_max, rng, jitter="equal")
        self._resolver: tuple[tuple[Address, ...], Any] | None = None
        self._servers: tuple[Address, ...] = ()
        self._running = False
        self._call: IDelayedCall | None = None
        self._inflight: Deferred[set[Address]] | None = None
        self._idle_waiters: list[Deferred[None]] = []

    def start(self) -> Deferred[None]:
        """
        Look the name up now, then keep doing so.

        @return: a Deferred that fires (never fails) once the first lookup
            is over, successful or not.
        """
        self._running = True
        self._round()
        return self._when_idle()

    def stop(self) -> Deferred[None]:
        """
        Stop looking up.

        @return: a Deferred that fires once a lookup in progress is over (it
            is bounded by C{timeout} per nameserver).
        """
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return self._when_idle()

    def _when_idle(self) -> Deferred[None]:
        if self._inflight is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def _round(self) -> None:
        self._call = None
        try:
            self._servers = self._settings.nameservers or tuple(self._system_nameservers())
            resolver = self._resolver_for(self._servers)
            lookup = Deferred.fromCoroutine(self._lookup(resolver))
        except Exception:
            lookup = Deferred()
            lookup.errback(Failure())
        self._inflight = lookup
        delay = lookup.addCallbacks(self._succeeded, self._failed)
        delay.addErrback(self._unexpected)
        # _unexpected turns every failure into a delay, so _round_over only
        # ever gets a float.
        delay.addBoth(cast("Callable[[float | Failure], None]", self._round_over))

    def _resolver_for(self, servers: tuple[Address, ...]) -> Any:
        if self._resolver is None or self._resolver[0] != servers:
            self._resolver = (servers, self._resolver_factory(list(servers)))
        return self._resolver[1]

    def _succeeded(self, addresses: set[Address]) -> float:
        if not self._running:
            return 0.0
        self._backoff.reset()
        self._status.succeeded(self._reactor.seconds(), addresses)
        return self._settings.interval

    def _failed(self, failure: Failure) -> float:
        if not self._running:
            return 0.0
        delay = self._backoff.next_delay()
        reason = describe_failure(failure, self._servers, self._settings.timeout)
        self._status.failed(self._reactor.seconds(), f"{self._settings.name}: {reason}", delay)
        return delay

    def _unexpected(self, failure: Failure) -> float:
        log.failure("dns discovery bookkeeping failed", failure)
        return self._backoff.next_delay()

    def _round_over(self, delay: float) -> None:
        self._inflight = None
        if self._running:
            self._call = self._reactor.callLater(delay, self._round)
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    async def _lookup(self, resolver: Any) -> set[Address]:
        settings = self._settings
        timeout = (settings.timeout,)
        if settings.port is not None:
            hosts = await self._hosts_of(resolver, settings.name, timeout)
            if not hosts:
                raise NoRecords(f"{settings.name} has no A or AAAA records")
            return {(host, settings.port) for host in hosts}
        answers, _authority, additional = await resolver.lookupService(settings.name, timeout)
        targets = [
            (_clean(record.payload.target), record.payload.port)
            for record in answers
            if record.type == dns.SRV and _clean(record.payload.target)
        ]
        if not targets:
            raise NoRecords(f"{settings.name} has no SRV records with a target")
        glue: dict[str, list[str]] = {}
        for record in additional:
            address = _address_of(record)
            if address is not None:
                glue.setdefault(_clean(record.name), []).append(address)
        resolved = await gatherResults(
            [
                Deferred.fromCoroutine(self._target_hosts(resolver, target, glue, timeout))
                for target, _port in targets
            ],
            consumeErrors=True,
        )
        return {
            (host, port)
            for (_target, port), hosts in zip(targets, resolved, strict=True)
            for host in hosts
        }

    async def _target_hosts(
        self,
        resolver: Any,
        target: str,
        glue: dict[str, list[str]],
        timeout: tuple[float, ...],
    ) -> list[str]:
        if target in glue:
            return glue[target]
        hosts = await self._hosts_of(resolver, target, timeout)
        if not hosts:
            log.debug(
                "dns discovery: SRV target {target} has no address records; using the name",
                target=target,
            )
            return [target]
        return hosts

    async def _hosts_of(self, resolver: Any, name: str, timeout: tuple[float, ...]) -> list[str]:
        results = await gatherResults(
            [
                _or_nothing(resolver.lookupAddress(name, timeout)),
                _or_nothing(resolver.lookupIPV6Address(name, timeout)),
            ],
            consumeErrors=True,
        )
        hosts: list[str] = []
        for answers in results:
            for record in answers:
                address = _address_of(record)
                if address is not None and address not in hosts:
                    hosts.append(address)
        return hosts


def _or_nothing(lookup: Deferred[Any]) -> Deferred[list[dns.RRHeader]]:
    """
    The answers of a lookup, or none when the name does not exist.
    """

    def answers(result: tuple[list[dns.RRHeader], Any, Any]) -> list[dns.RRHeader]:
        return list(result[0])

    def absent(failure: Failure) -> list[dns.RRHeader]:
        failure.trap(DNSNameError, AuthoritativeDomainError)
        return []

    return lookup.addCallbacks(answers, absent)


@implementer(IDiscoveryPlugin)
class DnsDiscoveryPlugin:
    """
    Discovery from DNS SRV records (Kubernetes headless services) or A/AAAA
    records, re-resolved periodically.
    """

    name = "dns"

    def validate(self, options: Mapping[str, Any] | None) -> list[tuple[str, str]]:
        """
        Check the options (C{name}, C{nameservers}, C{port}, C{interval},
        C{timeout}, C{retry_initial}, C{retry_max}).
        """
        return check_options(options, OPTIONS) + check_retry(options)

    def create(
        self,
        reactor: Any,
        node_config: object,
        options: Mapping[str, Any] | None,
        on_change: Callable[[], object],
    ) -> DnsDiscovery:
        """
        Build a L{DnsDiscovery} resolving through the configured
        nameservers, or the system's.

        @raise clustron.errors.ConfigError: when the options are invalid.
        """
        problems = self.validate(options)
        if problems:
            raise ConfigError(problems)
        return DnsDiscovery(reactor, DnsSettings.from_options(options), on_change)


#: The plugin instance that C{twisted/plugins/clustron_builtins.py} exposes.
dns_discovery = DnsDiscoveryPlugin()
