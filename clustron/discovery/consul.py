"""
The ``consul`` discovery plugin: each node registers itself as an instance
of a Consul service, with a health check, and reads the healthy instances
through blocking queries.

Configuration::

    discovery:
      consul:
        url: "http://127.0.0.1:8500"   # the local Consul agent
        service: clustron              # the service name
        check: ttl                     # ttl (default) | tcp | http
        ttl: 10                        # ttl checks: seconds; passed every ttl/3
        # check_url: "http://10.0.0.1:8101/v1/health"   # http checks
        # check_interval: 5            # tcp/http checks: seconds between checks
        # token: "..."                 # an ACL token (sent as X-Consul-Token)

It uses Consul's HTTP API through treq, which the ``consul`` extra
installs: ``PUT /v1/agent/service/register``, ``PUT
/v1/agent/check/pass/<check>``, ``PUT /v1/agent/service/deregister/<id>`` and
``GET /v1/health/service/<name>?passing=true&index=N&wait=Ws`` (a blocking
query: it answers when the healthy set changes past index ``N``, as told by
the ``X-Consul-Index`` header, or after ``wait``).

The instance ID is ``<service>-<cluster_id>-<node_id>``; its ``Meta`` holds
``cluster_id`` and ``node_id``, and instances of another cluster id are
ignored. With ``check: ttl`` the node passes its check every ``ttl / 3``
seconds, so a dead node turns critical after ``ttl`` and Consul removes it
after ``deregister_after`` seconds; a clean stop deregisters at once.
With ``tcp`` or ``http`` the agent checks the advertised address or
``check_url`` itself.

When Consul cannot be reached the known addresses stay, and registration
and queries are retried with capped exponential backoff.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from clustron.backoff import Backoff, RandomSource
from clustron.discovery.jsonhttp import (
    RegistryError,
    default_client,
    describe_failure,
    request_json,
)
from clustron.discovery.options import (
    RETRY_OPTIONS,
    Option,
    Problems,
    check_options,
    check_retry,
    format_host_port,
    http_url,
    one_of,
    positive_number,
    text,
    with_defaults,
)
from clustron.discovery.status import Address, ReportsStatus, SourceStatus
from clustron.errors import ConfigError
from clustron.interfaces import IDiscovery, IDiscoveryPlugin

log = Logger()

#: The least time between two health queries whose index did not move.
MIN_QUERY_SPACING = 1.0


def _service_name(key: str, value: object) -> Problems:
    if (
        not isinstance(value, str)
        or not value
        or not all(c.isascii() and (c.isalnum() or c in "-_") for c in value)
    ):
        return [(key, f"must be a service name of letters, digits, '-' and '_'; got {value!r}")]
    return []


OPTIONS = (
    Option("url", http_url, default="http://127.0.0.1:8500"),
    Option("service", _service_name, default="clustron"),
    Option("check", one_of("ttl", "tcp", "http"), default="ttl"),
    Option("ttl", positive_number, default=10.0),
    Option("check_url", http_url),
    Option("check_interval", positive_number, default=5.0),
    Option("deregister_after", positive_number, default=60.0),
    Option("wait", positive_number, default=30.0),
    Option("token", text),
    Option("timeout", positive_number, default=5.0),
    *RETRY_OPTIONS,
)


@attrs.frozen
class ConsulSettings:
    """
    The validated options of the C{consul} plugin (see the module
    docstring).
    """

    url: str = "http://127.0.0.1:8500"
    service: str = "clustron"
    check: str = "ttl"
    ttl: float = 10.0
    check_url: str | None = None
    check_interval: float = 5.0
    deregister_after: float = 60.0
    wait: float = 30.0
    token: str | None = None
    timeout: float = 5.0
    retry_initial: float = 0.5
    retry_max: float = 30.0

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> ConsulSettings:
        """
        @raise ConfigError: when the options are invalid.
        """
        problems = _cross_problems(options)
        values = with_defaults(options, OPTIONS)
        if problems:
            raise ConfigError(problems)
        values["url"] = values["url"].rstrip("/")
        return cls(**values)


def _cross_problems(options: object) -> Problems:
    if not isinstance(options, Mapping):
        return []
    problems = check_retry(options)
    if options.get("check") == "http" and not options.get("check_url"):
        problems.append(("check_url", "is required when check is http"))
    if options.get("check_url") is not None and options.get("check", "ttl") != "http":
        problems.append(("check_url", "is only used when check is http"))
    return problems


def _duration(seconds: float) -> str:
    """
    A Go duration string, as Consul reads them.
    """
    return f"{seconds:g}s"


@implementer(IDiscovery)
class ConsulDiscovery(ReportsStatus):
    """
    A discovery source registering this node as a Consul service instance
    and reading the healthy instances.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        settings: ConsulSettings,
        node_config: Any,
        on_change: Callable[[], object],
        http: Any,
        rng: RandomSource | None = None,
    ) -> None:
        """
        @param reactor: for timers and request timeouts.
        @param settings: the options.
        @param node_config: gives C{cluster_id}, C{node_id} and
            C{advertise_address}.
        @param on_change: called when the address set changes.
        @param http: a treq C{HTTPClient} (or C{StubTreq}).
        @param rng: the jitter of retry delays.
        """
        self._reactor = reactor
        self._settings = settings
        self._http = http
        self._cluster_id: str = node_config.cluster_id
        self._node_id: str = node_config.node_id
        self._address: Address = tuple(node_config.advertise_address)  # type: ignore[assignment]
        self.service_id = f"{settings.service}-{node_config.cluster_id}-{node_config.node_id}"
        self.check_id = f"service:{self.service_id}"
        self._status = SourceStatus("consul", on_change)
        retry = (settings.retry_initial, settings.retry_max)
        self._register_backoff = Backoff(*retry, rng, jitter="equal")
        self._query_backoff = Backoff(*retry, rng, jitter="equal")
        self._running = False
        self._registered = False
        self._index = 0
        self._register_timer: IDelayedCall | None = None
        self._query_timer: IDelayedCall | None = None
        self._pending: set[Deferred[Any]] = set()

    def start(self) -> Deferred[None]:
        """
        Register this node and start reading the healthy instances.

        @return: a Deferred that fires (never fails) once the first
            registration attempt and the first query are over.
        """
        self._running = True
        registered = self._register()
        queried = self._query()
        return registered.addCallback(lambda _: queried)

    def stop(self) -> Deferred[None]:
        """
        Stop the loops and deregister this node.

        @return: a Deferred that fires when the deregistration is answered
            or has failed (it is logged).
        """
        self._running = False
        for timer in (self._register_timer, self._query_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._register_timer = self._query_timer = None
        for pending in list(self._pending):
            pending.cancel()
        if not self._registered:
            return succeed(None)
        self._registered = False
        done = Deferred.fromCoroutine(
            self._call("PUT", f"/v1/agent/service/deregister/{quote(self.service_id, safe='')}")
        )

        def failed(failure: Failure) -> None:
            log.warn(
                "consul discovery: could not deregister {service_id}: {reason}",
                service_id=self.service_id,
                reason=failure.getErrorMessage(),
            )

        return done.addCallbacks(lambda _: None, failed)

    # Registration and the TTL check.

    def _track(self, pending: Deferred[Any]) -> Deferred[Any]:
        self._pending.add(pending)

        def forget(result: object) -> object:
            self._pending.discard(pending)
            return result

        return pending.addBoth(forget)

    def _registration(self) -> dict[str, Any]:
        settings = self._settings
        host, port = self._address
        check: dict[str, Any] = {
            "CheckID": self.check_id,
            "Name": f"clustron node {self._node_id}",
            "DeregisterCriticalServiceAfter": _duration(settings.deregister_after),
        }
        if settings.check == "ttl":
            check.update(TTL=_duration(settings.ttl), Status="passing")
        elif settings.check == "tcp":
            check.update(
                TCP=format_host_port(host, port),
                Interval=_duration(settings.check_interval),
                Timeout=_duration(settings.timeout),
            )
        else:
            check.update(
                HTTP=settings.check_url,
                Interval=_duration(settings.check_interval),
                Timeout=_duration(settings.timeout),
            )
        return {
            "ID": self.service_id,
            "Name": settings.service,
            "Address": host,
            "Port": port,
            "Tags": ["clustron", f"cluster-{self._cluster_id}"],
            "Meta": {"cluster_id": self._cluster_id, "node_id": self._node_id},
            "Check": check,
        }

    def _register(self) -> Deferred[None]:
        self._register_timer = None

        async def register() -> None:
            await self._call(
                "PUT", "/v1/agent/service/register?replace-existing-checks=true",
                self._registration(),
            )
            self._registered = True
            if self._settings.check == "ttl":
                await self._pass()

        attempt = self._track(Deferred.fromCoroutine(register()))
        return attempt.addCallbacks(self._registered_ok, self._registration_failed)

    async def _pass(self) -> None:
        await self._call("PUT", f"/v1/agent/check/pass/{quote(self.check_id, safe='')}")

    def _registered_ok(self, _: object) -> None:
        if not self._running:
            return
        self._register_backoff.reset()
        self._status.succeeded(self._reactor.seconds())
        if self._settings.check == "ttl":
            self._register_timer = self._reactor.callLater(
                self._settings.ttl / 3, self._keep_passing
            )

    def _registration_failed(self, failure: Failure) -> None:
        if not self._running:
            return
        delay = self._register_backoff.next_delay()
        reason = describe_failure(failure, self._settings.timeout)
        self._status.failed(
            self._reactor.seconds(), f"registering {self.service_id}: {reason}", delay
        )
        self._register_timer = self._reactor.callLater(delay, self._register)

    def _keep_passing(self) -> None:
        self._register_timer = None
        passed = self._track(Deferred.fromCoroutine(self._pass()))

        def failed(failure: Failure) -> None:
            if not self._running:
                return
            log.warn(
                "consul discovery: passing check {check_id} failed: {reason}; registering again",
                check_id=self.check_id,
                reason=describe_failure(failure, self._settings.timeout),
            )
            self._register()

        passed.addCallbacks(self._registered_ok, failed)

    # Health queries.

    def _query(self) -> Deferred[None]:
        self._query_timer = None
        asked = self._index
        query = self._track(Deferred.fromCoroutine(self._healthy()))
        return query.addCallbacks(
            lambda result: self._answered(asked, *result), self._query_failed
        )

    async def _healthy(self) -> tuple[int, list[Any]]:
        settings = self._settings
        path = f"/v1/health/service/{quote(settings.service, safe='')}?passing=true"
        timeout = settings.timeout
        if self._index:
            path += f"&index={self._index}&wait={_duration(settings.wait)}"
            timeout += settings.wait + settings.wait / 16
        response, entries = await self._call("GET", path, timeout=timeout, with_response=True)
        if not isinstance(entries, list):
            raise RegistryError(f"health answer is not a list: {entries!r:.200}")
        try:
            index = int(response.headers.getRawHeaders("X-Consul-Index", ["0"])[0])
        except ValueError:
            index = 0
        return index, entries

    def _answered(self, asked: int, index: int, entries: list[Any]) -> None:
        if not self._running:
            return
        # Consul's rules for blocking queries: an index that goes backwards
        # (or is not positive) starts over from 0.
        self._index = index if index > 0 and index >= asked else 0
        addresses = set()
        for entry in entries:
            address = self._address_of(entry)
            if address is not None:
                addresses.add(address)
        if addresses:
            self._query_backoff.reset()
            self._status.succeeded(self._reactor.seconds(), addresses)
            delay = 0.0 if self._index > asked else MIN_QUERY_SPACING
        else:
            delay = self._query_backoff.next_delay()
            self._status.failed(
                self._reactor.seconds(),
                f"no healthy instances of {self._settings.service} in cluster {self._cluster_id}",
                delay,
            )
        self._query_timer = self._reactor.callLater(delay, self._query)

    def _address_of(self, entry: Any) -> Address | None:
        try:
            service = entry["Service"]
            meta = service.get("Meta") or {}
            if meta.get("cluster_id") != self._cluster_id:
                return None
            host = service.get("Address") or entry["Node"]["Address"]
            port = service["Port"]
            if not isinstance(host, str) or not host:
                raise ValueError(f"bad address {host!r}")
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError(f"bad port {port!r}")
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            log.warn("consul discovery: ignoring unreadable instance: {reason}", reason=e)
            return None
        return host, port

    def _query_failed(self, failure: Failure) -> None:
        if not self._running:
            return
        self._index = 0
        delay = self._query_backoff.next_delay()
        self._status.failed(
            self._reactor.seconds(),
            f"querying {self._settings.service}: "
            f"{describe_failure(failure, self._settings.timeout)}",
            delay,
        )
        self._query_timer = self._reactor.callLater(delay, self._query)

    # Requests.

    async def _call(
        self,
        method: str,
        path: str,
        body: object = None,
        timeout: float | None = None,
        with_response: bool = False,
    ) -> Any:
        headers = {}
        if self._settings.token:
            headers["X-Consul-Token"] = self._settings.token
        response, document = await request_json(
            self._http,
            self._reactor,
            method,
            self._settings.url + path,
            body,
            headers=headers,
            timeout=timeout or self._settings.timeout,
        )
        return (response, document) if with_response else document


@implementer(IDiscoveryPlugin)
class ConsulDiscoveryPlugin:
    """
    Discovery through Consul: register a service instance with a health
    check, read the healthy instances with blocking queries.
    """

    name = "consul"

    def validate(self, options: Mapping[str, Any] | None) -> list[tuple[str, str]]:
        """
        Check the options (see L{clustron.discovery.consul}).
        """
        return check_options(options, OPTIONS) + _cross_problems(options)

    def create(
        self,
        reactor: Any,
        node_config: Any,
        options: Mapping[str, Any] | None,
        on_change: Callable[[], object],
        http: Any = None,
    ) -> ConsulDiscovery:
        """
        Build a L{ConsulDiscovery}.

        @param http: a treq C{HTTPClient}; by default one on C{reactor}.
        @raise ConfigError: when the options are invalid or treq is missing.
        """
        problems = self.validate(options)
        if problems:
            raise ConfigError(problems)
        settings = ConsulSettings.from_options(options)
        if http is None:
            http = default_client(reactor, "consul")
        return ConsulDiscovery(reactor, settings, node_config, on_change, http)


#: The plugin instance that C{twisted/plugins/clustron_builtins.py} exposes.
consul_discovery = ConsulDiscoveryPlugin()
