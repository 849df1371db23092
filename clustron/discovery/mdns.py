"""
The ``mdns`` discovery plugin: announce this node and browse for the others
on the local link with multicast DNS (DNS-SD service ``_clustron._tcp.local.``).

Configuration::

    discovery:
      mdns: {interfaces: ["192.168.1.10"]}   # default: every interface

It needs the ``zeroconf`` package (``pip install clustron[mdns]``), imported
only when an mdns source is created.

Each node registers an instance named after its cluster and node id, with
TXT records ``cluster`` (the cluster id), ``node`` (the node id), ``proto``
(L{PROTOCOL_VERSION}) and ``addr`` (the advertised ``host:port``). Instances
of another cluster id or protocol version are ignored.

zeroconf runs its own asyncio loop in a thread. L{ZeroconfBackend} keeps all
zeroconf calls on that loop (or in the reactor's thread pool for the
blocking start and close) and hands every result to the reactor thread with
C{reactor.callFromThread}; L{MdnsDiscovery} itself only runs in the reactor
thread and is tested deterministically with a fake backend.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from clustron.backoff import Backoff, RandomSource
from clustron.discovery.options import (
    RETRY_OPTIONS,
    Option,
    check_options,
    check_retry,
    format_host_port,
    ip_address,
    list_of,
    parse_host_port,
    positive_number,
    with_defaults,
)
from clustron.discovery.status import Address, ReportsStatus, SourceStatus
from clustron.errors import ConfigError
from clustron.interfaces import IDiscovery, IDiscoveryPlugin
from clustron.wire.framing import PROTOCOL_MAJOR, PROTOCOL_MINOR

log = Logger()

#: The DNS-SD service type Clustron nodes announce.
SERVICE_TYPE = "_clustron._tcp.local."

#: The wire protocol version announced in the C{proto} TXT record
#: (C{major.minor}); instances of another major version are ignored.
PROTOCOL_VERSION = f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}"

#: The time to live of the announced records, in seconds: a node that dies
#: without saying goodbye is forgotten this long after its last announcement
#: (RFC 6762 suggests 75 minutes for service records; discovery wants less).
RECORD_TTL = 120

#: How to install zeroconf, for errors.
MISSING_ZEROCONF = "needs the zeroconf package, which is missing: pip install clustron[mdns]"

OPTIONS = (
    Option("interfaces", list_of(ip_address)),
    Option("resolve_timeout", positive_number, default=3.0),
    *RETRY_OPTIONS,
)

#: Called (in the reactor thread) when an instance is seen: its full name,
#: TXT properties, addresses and port.
Seen = Callable[[str, Mapping[bytes, bytes | None], list[str], int], None]

#: Called (in the reactor thread) when an instance says goodbye or expires.
Gone = Callable[[str], None]


@attrs.frozen
class MdnsSettings:
    """
    The validated options of the C{mdns} plugin.

    @ivar interfaces: the IP addresses of the interfaces to use, or C{None}
        for all.
    @ivar resolve_timeout: seconds to wait for an instance's details.
    @ivar retry_initial: the first retry delay after a failure.
    @ivar retry_max: the cap on retry delays.
    """

    interfaces: tuple[str, ...] | None = None
    resolve_timeout: float = 3.0
    retry_initial: float = 0.5
    retry_max: float = 30.0

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> MdnsSettings:
        """
        @raise ConfigError: when the options are invalid.
        """
        values = with_defaults(options, OPTIONS)
        if values["interfaces"] is not None:
            values["interfaces"] = tuple(values["interfaces"])
        return cls(**values)


@attrs.frozen
class Announcement:
    """
    What this node announces.

    @ivar instance: the instance label (unique per node and cluster).
    @ivar host: the advertised host.
    @ivar port: the advertised port.
    @ivar addresses: IP addresses for the A/AAAA records.
    @ivar properties: the TXT records.
    """

    instance: str
    host: str
    port: int
    addresses: tuple[str, ...]
    properties: Mapping[str, str]

    @property
    def name(self) -> str:
        """
        The full service instance name.
        """
        return f"{self.instance}.{SERVICE_TYPE}"


def instance_label(cluster_id: str, node_id: str) -> str:
    """
    A DNS-SD instance label for a node: C{cluster-node} with characters
    other than letters, digits, C{-} and C{_} replaced, at most 63 bytes.
    """
    raw = f"{cluster_id}-{node_id}"
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in raw)
    return cleaned[:63]


def announcement_for(node_config: Any, interfaces: tuple[str, ...] | None) -> Announcement:
    """
    The announcement of a node.

    @raise ConfigError: when the advertised host is not an IP address and
        no interface address is configured (mDNS needs address records).
    """
    host, port = node_config.advertise_address
    try:
        addresses: tuple[str, ...] = (str(ipaddress.ip_address(host)),)
    except ValueError:
        if not interfaces:
            raise ConfigError(
                [
                    (
                        "interfaces",
                        f"mdns needs an address to announce: advertise host {host!r} is not an "
                        "IP address, so list the interface addresses",
                    )
                ]
            ) from None
        addresses = interfaces
    return Announcement(
        instance=instance_label(node_config.cluster_id, node_config.node_id),
        host=host,
        port=port,
        addresses=addresses,
        properties={
            "cluster": node_config.cluster_id,
            "node": node_config.node_id,
            "proto": PROTOCOL_VERSION,
            "addr": format_host_port(host, port),
        },
    )


class MdnsBackend(Protocol):
    """
    Announces and browses on the network for L{MdnsDiscovery}.
    """

    def open(self, announcement: Announcement, seen: Seen, gone: Gone) -> Deferred[None]:
        """
        Start announcing and browsing; C{seen} and C{gone} are then called
        in the reactor thread as instances come and go.

        @return: a Deferred firing once the announcement is made.
        """

    def close(self) -> Deferred[None]:
        """
        Withdraw the announcement (goodbye packets) and stop browsing.

        @return: a Deferred firing when done; never fails.
        """


@implementer(IDiscovery)
class MdnsDiscovery(ReportsStatus):
    """
    A discovery source announcing this node with mDNS and browsing for the
    others of its cluster.
    """

    def __init__(
        self,
        reactor: Any,
        settings: MdnsSettings,
        announcement: Announcement,
        cluster_id: str,
        on_change: Callable[[], object],
        backend: MdnsBackend,
        rng: RandomSource | None = None,
    ) -> None:
        """
        @param reactor: for timers.
        @param settings: the options.
        @param announcement: what to announce.
        @param cluster_id: instances of other clusters are ignored.
        @param on_change: called when the address set changes.
        @param backend: the network side.
        @param rng: the jitter of retry delays.
        """
        self._reactor = reactor
        self._settings = settings
        self._announcement = announcement
        self._cluster_id = cluster_id
        self._backend = backend
        self._status = SourceStatus("mdns", on_change)
        self._backoff = Backoff(settings.retry_initial, settings.retry_max, rng, jitter="equal")
        self._instances: dict[str, Address] = {}
        self._ignored_versions: set[str] = set()
        self._running = False
        self._opened = False
        self._timer: IDelayedCall | None = None

    def start(self) -> Deferred[None]:
        """
        Announce this node and browse.

        @return: a Deferred that fires (never fails) once the announcement
            is made or has failed (then it is retried with backoff).
        """
        self._running = True
        return self._open()

    def stop(self) -> Deferred[None]:
        """
        Say goodbye and stop browsing.

        @return: a Deferred that fires when the backend is closed.
        """
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self._opened:
            return succeed(None)
        self._opened = False
        return self._backend.close()

    def _open(self) -> Deferred[None]:
        self._timer = None
        self._opened = True
        opened = self._backend.open(self._announcement, self._seen, self._gone)
        return opened.addCallbacks(self._announced, self._failed)

    def _announced(self, _: object) -> None:
        if not self._running:
            return
        self._backoff.reset()
        self._status.succeeded(self._reactor.seconds())

    def _failed(self, failure: Failure) -> Deferred[None] | None:
        if not self._running:
            return None
        delay = self._backoff.next_delay()
        self._status.failed(
            self._reactor.seconds(),
            f"announcing {self._announcement.name}: "
            f"{failure.type.__name__}: {failure.getErrorMessage()}",
            delay,
        )
        self._opened = False

        def retry(_: object) -> None:
            if self._running:
                self._timer = self._reactor.callLater(delay, self._open)

        return self._backend.close().addCallback(retry)

    def _seen(
        self, name: str, properties: Mapping[bytes, bytes | None], addresses: list[str], port: int
    ) -> None:
        if not self._running:
            return
        text = {
            key.decode("utf-8", "replace"): (value or b"").decode("utf-8", "replace")
            for key, value in properties.items()
        }
        if text.get("cluster") != self._cluster_id:
            log.debug(
                "mdns discovery: ignoring {name} of cluster {other}",
                name=name,
                other=text.get("cluster"),
            )
            self._forget(name)
            return
        version = text.get("proto", "")
        if version.split(".")[0] != str(PROTOCOL_MAJOR):
            if version not in self._ignored_versions:
                self._ignored_versions.add(version)
                log.warn(
                    "mdns discovery: ignoring {name}: protocol version {version!r}, "
                    "ours is {ours}",
                    name=name,
                    version=version,
                    ours=PROTOCOL_VERSION,
                )
            self._forget(name)
            return
        try:
            if text.get("addr"):
                address = parse_host_port(text["addr"])
            elif addresses and 0 < port < 65536:
                address = (addresses[0], port)
            else:
                raise ValueError("no addr record and no address")
        except ValueError as e:
            log.warn("mdns discovery: ignoring {name}: {reason}", name=name, reason=e)
            self._forget(name)
            return
        self._instances[name] = address
        self._publish()

    def _gone(self, name: str) -> None:
        if self._running:
            self._forget(name)

    def _forget(self, name: str) -> None:
        if self._instances.pop(name, None) is not None:
            self._publish()

    def _publish(self) -> None:
        addresses = set(self._instances.values())
        if addresses:
            self._status.succeeded(self._reactor.seconds(), addresses)


def load_zeroconf() -> Any:
    """
    Import zeroconf.

    @raise ConfigError: naming the extra to install when it is missing.
    """
    try:
        import zeroconf
        import zeroconf.asyncio  # noqa: F401
    except ImportError:
        raise ConfigError([("", MISSING_ZEROCONF)]) from None
    return zeroconf


class ZeroconfBackend:
    """
    The L{MdnsBackend} on the C{zeroconf} package.

    Zeroconf is created and closed in the reactor's thread pool (both
    block briefly); everything else runs as coroutines on zeroconf's own
    loop; results come back with C{reactor.callFromThread}.
    """

    def __init__(
        self, reactor: Any, interfaces: tuple[str, ...] | None, resolve_timeout: float
    ) -> None:
        """
        @param reactor: provides C{callFromThread} and C{getThreadPool}.
        @param interfaces: interface addresses, or C{None} for all.
        @param resolve_timeout: seconds to wait for an instance's details.
        """
        self._zeroconf = load_zeroconf()
        self._reactor = reactor
        self._interfaces = interfaces
        self._resolve_timeout = resolve_timeout
        self._zc: Any = None
        self._browser: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _in_pool(self, work: Callable[[], Any]) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), work)

    def _on_loop(self, zc: Any, coroutine: Coroutine[Any, Any, Any]) -> Deferred[Any]:
        future = asyncio.run_coroutine_threadsafe(coroutine, zc.loop)
        result: Deferred[Any] = Deferred()

        def deliver(done: concurrent.futures.Future[Any]) -> None:
            if done.cancelled():
                result.errback(Failure(concurrent.futures.CancelledError()))
            elif done.exception() is not None:
                result.errback(Failure(done.exception()))
            else:
                result.callback(done.result())

        future.add_done_callback(lambda done: self._reactor.callFromThread(deliver, done))
        return result

    def _create(self) -> Any:
        zeroconf = self._zeroconf
        if self._interfaces is None:
            return zeroconf.Zeroconf()
        ip_version = (
            zeroconf.IPVersion.All
            if any(":" in address for address in self._interfaces)
            else zeroconf.IPVersion.V4Only
        )
        return zeroconf.Zeroconf(interfaces=list(self._interfaces), ip_version=ip_version)

    def open(self, announcement: Announcement, seen: Seen, gone: Gone) -> Deferred[None]:
        """
        Create zeroconf, browse for L{SERVICE_TYPE} and register
        C{announcement}.
        """
        module = self._zeroconf
        info = module.ServiceInfo(
            SERVICE_TYPE,
            announcement.name,
            port=announcement.port,
            properties=dict(announcement.properties),
            server=f"{announcement.instance}.local.",
            host_ttl=RECORD_TTL,
            other_ttl=RECORD_TTL,
            parsed_addresses=list(announcement.addresses),
        )
        timeout_ms = int(self._resolve_timeout * 1000)
        reactor = self._reactor

        async def resolve(service_type: str, name: str) -> None:
            details = module.asyncio.AsyncServiceInfo(service_type, name)
            if await details.async_request(self._zc, timeout_ms):
                reactor.callFromThread(
                    seen, name, dict(details.properties), details.parsed_addresses(),
                    details.port or 0,
                )
            else:
                reactor.callFromThread(
                    log.info,
                    "mdns discovery: no details for {name} within {timeout} ms",
                    name=name,
                    timeout=timeout_ms,
                )

        def handler(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
            # Called by zeroconf on its loop, with these keyword arguments.
            if state_change is module.ServiceStateChange.Removed:
                reactor.callFromThread(gone, name)
                return
            task = asyncio.ensure_future(resolve(service_type, name))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        async def announce() -> None:
            self._browser = module.asyncio.AsyncServiceBrowser(
                self._zc, SERVICE_TYPE, handlers=[handler]
            )
            broadcast = await self._zc.async_register_service(info)
            await broadcast

        def created(zc: Any) -> Deferred[None]:
            self._zc = zc
            return self._on_loop(zc, announce())

        return self._in_pool(self._create).addCallback(created)

    def close(self) -> Deferred[None]:
        """
        Say goodbye, stop browsing and close zeroconf; failures are logged.
        """
        zc, self._zc = self._zc, None
        if zc is None:
            return succeed(None)
        browser, self._browser = self._browser, None
        tasks, self._tasks = self._tasks, set()

        async def withdraw() -> None:
            for task in tasks:
                task.cancel()
            if browser is not None:
                await browser.async_cancel()
            await zc.async_unregister_all_services()

        withdrawn = self._on_loop(zc, withdraw())

        def log_failure(failure: Failure) -> None:
            log.warn(
                "mdns discovery: withdrawing the announcement failed: {reason}",
                reason=failure.getErrorMessage(),
            )

        withdrawn.addErrback(log_failure)
        withdrawn.addCallback(lambda _: self._in_pool(zc.close))
        withdrawn.addErrback(log_failure)
        return withdrawn


@implementer(IDiscoveryPlugin)
class MdnsDiscoveryPlugin:
    """
    Discovery on the local link with multicast DNS (needs
    C{pip install clustron[mdns]}).
    """

    name = "mdns"

    def validate(self, options: Mapping[str, Any] | None) -> list[tuple[str, str]]:
        """
        Check the options (C{interfaces}, C{resolve_timeout},
        C{retry_initial}, C{retry_max}) and that zeroconf is installed.
        """
        problems = check_options(options, OPTIONS) + check_retry(options)
        try:
            load_zeroconf()
        except ConfigError as e:
            problems.extend(e.errors)
        return problems

    def create(
        self,
        reactor: Any,
        node_config: Any,
        options: Mapping[str, Any] | None,
        on_change: Callable[[], object],
        backend: MdnsBackend | None = None,
    ) -> MdnsDiscovery:
        """
        Build an L{MdnsDiscovery}.

        @param backend: the network side; by default a L{ZeroconfBackend}.
        @raise ConfigError: when the options are invalid, the advertised
            address cannot be announced, or zeroconf is missing.
        """
        problems = check_options(options, OPTIONS) + check_retry(options)
        if problems:
            raise ConfigError(problems)
        settings = MdnsSettings.from_options(options)
        announcement = announcement_for(node_config, settings.interfaces)
        if backend is None:
            backend = ZeroconfBackend(reactor, settings.interfaces, settings.resolve_timeout)
        return MdnsDiscovery(
            reactor, settings, announcement, node_config.cluster_id, on_change, backend
        )


#: The plugin instance that C{twisted/plugins/clustron_builtins.py} exposes.
mdns_discovery = MdnsDiscoveryPlugin()
