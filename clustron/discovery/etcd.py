"""
The ``etcd`` discovery plugin: each node registers itself under a key
prefix with a lease it keeps alive, and watches the prefix for the others.

Configuration::

    discovery:
      etcd:
        endpoints: ["http://127.0.0.1:2379"]   # tried in turn after failures
        prefix: /clustron/demo                 # default: /clustron/<cluster_id>
        ttl: 10                                # lease seconds

It speaks etcd v3's JSON gateway (``/v3/lease/grant``, ``/v3/lease/keepalive``,
``/v3/lease/revoke``, ``/v3/kv/put``, ``/v3/kv/range``, ``/v3/watch``; keys
and values base64) through treq, which the ``etcd`` extra installs.

This node's key is ``<prefix>/<node_id>``; its value is JSON
``{"cluster_id": ..., "node_id": ..., "address": "host:port"}``. The lease is
kept alive every ``ttl / 3`` seconds; when the node dies the lease expires
and the key disappears after ``ttl`` seconds; a clean stop revokes the lease
at once. Values of another cluster id, or that cannot be read, are ignored.

When etcd cannot be reached the known addresses stay, and the whole session
(lease, registration, listing, watch) is set up again with capped
exponential backoff, on the next endpoint.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from clustron.backoff import Backoff, RandomSource
from clustron.discovery.jsonhttp import (
    JsonStream,
    RegistryError,
    default_client,
    describe_failure,
    read_body,
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
    list_of,
    parse_host_port,
    positive_number,
    text,
    with_defaults,
)
from clustron.discovery.status import Address, ReportsStatus, SourceStatus
from clustron.errors import ConfigError
from clustron.interfaces import IDiscovery, IDiscoveryPlugin

log = Logger()


def _ttl(key: str, value: object) -> Problems:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        return [(key, f"must be a whole number of seconds, at least 1; got {value!r}")]
    return []


OPTIONS = (
    Option("endpoints", list_of(http_url), required=True),
    Option("prefix", text),
    Option("ttl", _ttl, default=10),
    Option("timeout", positive_number, default=5.0),
    *RETRY_OPTIONS,
)


@attrs.frozen
class EtcdSettings:
    """
    The validated options of the C{etcd} plugin.

    @ivar endpoints: base URLs of etcd members.
    @ivar prefix: the key prefix, without a trailing C{/}.
    @ivar ttl: the lease time to live, in seconds.
    @ivar timeout: seconds to wait for each request.
    @ivar retry_initial: the first retry delay after a failure.
    @ivar retry_max: the cap on retry delays.
    """

    endpoints: tuple[str, ...]
    prefix: str
    ttl: int = 10
    timeout: float = 5.0
    retry_initial: float = 0.5
    retry_max: float = 30.0

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None, cluster_id: str) -> EtcdSettings:
        """
        @param cluster_id: gives the default prefix C{/clustron/<cluster_id>}.
        @raise ConfigError: when the options are invalid.
        """
        values = with_defaults(options, OPTIONS)
        prefix = values["prefix"] or f"/clustron/{cluster_id}"
        return cls(
            endpoints=tuple(url.rstrip("/") for url in values["endpoints"]),
            prefix=prefix.rstrip("/") or "/",
            ttl=values["ttl"],
            timeout=values["timeout"],
            retry_initial=values["retry_initial"],
            retry_max=values["retry_max"],
        )


def _b64(data: str) -> str:
    return base64.b64encode(data.encode("utf-8")).decode("ascii")


def _unb64(data: object) -> str:
    if not isinstance(data, str):
        raise ValueError(f"expected base64 text, got {data!r}")
    return base64.b64decode(data, validate=True).decode("utf-8")


def _range_end(prefix: str) -> str:
    """
    The end of the key range holding every key that starts with C{prefix}
    (the prefix with its last character incremented).
    """
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _error_of(document: object) -> str | None:
    """
    The error an etcd gateway answer carries, if any (plain answers carry
    C{"error"} as text, streamed ones as an object with a C{"message"}).
    """
    if isinstance(document, Mapping) and "error" in document:
        error = document["error"]
        if isinstance(error, Mapping):
            return str(error.get("message", error))
        return str(document.get("message") or error)
    return None


@implementer(IDiscovery)
class EtcdDiscovery(ReportsStatus):
    """
    A discovery source registering this node in etcd and watching the
    prefix.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        settings: EtcdSettings,
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
        host, port = node_config.advertise_address
        self._key = f"{settings.prefix.rstrip('/')}/{node_config.node_id}"
        self._value = json.dumps(
            {
                "cluster_id": node_config.cluster_id,
                "node_id": node_config.node_id,
                "address": format_host_port(host, port),
            },
            sort_keys=True,
        )
        self._range_start = settings.prefix.rstrip("/") + "/"
        self._status = SourceStatus("etcd", on_change)
        self._backoff = Backoff(settings.retry_initial, settings.retry_max, rng, jitter="equal")
        self._entries: dict[str, Address] = {}
        self._lease: str | None = None
        self._endpoint_index = 0
        self._session = 0
        self._running = False
        self._timer: IDelayedCall | None = None
        self._watch: JsonStream | None = None
        self._pending: set[Deferred[Any]] = set()

    @property
    def key(self) -> str:
        """
        This node's key in etcd.
        """
        return self._key

    def start(self) -> Deferred[None]:
        """
        Register, list the prefix and watch it.

        @return: a Deferred that fires (never fails) once the first attempt
            is over, successful or not.
        """
        self._running = True
        return self._establish()

    def stop(self) -> Deferred[None]:
        """
        Stop watching and keeping the lease alive, and revoke the lease so
        that this node's key disappears at once.

        @return: a Deferred that fires when the revocation is answered or
            has failed (it is logged, and the lease then expires on its own).
        """
        self._running = False
        self._session += 1
        self._cancel_timer()
        self._end_watch()
        for pending in list(self._pending):
            pending.cancel()
        lease, self._lease = self._lease, None
        if lease is None:
            return succeed(None)
        revoked = Deferred.fromCoroutine(self._post("/v3/lease/revoke", {"ID": lease}))

        def revoke_failed(failure: Failure) -> None:
            log.warn(
                "etcd discovery: could not revoke lease {lease} of {key}: {reason}; "
                "the key expires after {ttl} s",
                lease=lease,
                key=self._key,
                reason=describe_failure(failure, self._settings.timeout),
                ttl=self._settings.ttl,
            )

        return revoked.addCallbacks(lambda _: None, revoke_failed)

    # Sessions: lease, registration, listing, watch.

    def _track(self, pending: Deferred[Any]) -> Deferred[Any]:
        self._pending.add(pending)

        def forget(result: object) -> object:
            self._pending.discard(pending)
            return result

        return pending.addBoth(forget)

    def _establish(self) -> Deferred[None]:
        self._session += 1
        session = self._session
        self._cancel_timer()
        self._end_watch()
        attempt = self._track(Deferred.fromCoroutine(self._connect(session)))
        return attempt.addCallbacks(
            lambda _: self._connected(session), lambda failure: self._lost(session, failure)
        )

    async def _connect(self, session: int) -> None:
        lease = await self._ensure_lease()
        await self._post(
            "/v3/kv/put", {"key": _b64(self._key), "value": _b64(self._value), "lease": lease}
        )
        listing = await self._post(
            "/v3/kv/range",
            {"key": _b64(self._range_start), "range_end": _b64(_range_end(self._range_start))},
        )
        try:
            revision = int(listing["header"]["revision"])
        except (KeyError, TypeError, ValueError):
            raise RegistryError(f"range answer without a revision: {listing!r}") from None
        self._entries = {}
        for kv in listing.get("kvs", []):
            self._apply_put(kv)
        if session == self._session and self._running:
            self._start_watch(session, revision + 1)

    async def _ensure_lease(self) -> str:
        if self._lease is not None and await self._lease_alive(self._lease):
            return self._lease
        granted = await self._post("/v3/lease/grant", {"TTL": self._settings.ttl})
        lease = granted.get("ID") if isinstance(granted, Mapping) else None
        if lease in (None, "", "0", 0):
            raise RegistryError(f"lease grant answer without an ID: {granted!r}")
        self._lease = str(lease)
        log.info(
            "etcd discovery: lease {lease} granted for {key} (ttl {ttl} s)",
            lease=self._lease,
            key=self._key,
            ttl=granted.get("TTL"),
        )
        return self._lease

    async def _lease_alive(self, lease: str) -> bool:
        answer = await self._post("/v3/lease/keepalive", {"ID": lease})
        result = answer.get("result", answer) if isinstance(answer, Mapping) else {}
        try:
            return int(result.get("TTL", 0)) > 0
        except (TypeError, ValueError):
            raise RegistryError(f"keep-alive answer with a bad TTL: {answer!r}") from None

    def _connected(self, session: int) -> None:
        if session != self._session or not self._running:
            return
        self._backoff.reset()
        self._publish()
        self._schedule(self._settings.ttl / 3, self._keep_alive, session)

    def _lost(self, session: int, failure: Failure) -> None:
        if session != self._session or not self._running:
            return
        self._session += 1
        self._end_watch()
        self._cancel_timer()
        endpoint = self._endpoint()
        self._endpoint_index += 1
        delay = self._backoff.next_delay()
        reason = describe_failure(failure, self._settings.timeout)
        self._status.failed(self._reactor.seconds(), f"{endpoint}: {reason}", delay)
        self._schedule(delay, self._establish)

    def _keep_alive(self, session: int) -> None:
        if self._lease is None:
            self._establish()
            return
        lease = self._lease
        check = self._track(Deferred.fromCoroutine(self._lease_alive(lease)))

        def checked(alive: bool) -> None:
            if session != self._session or not self._running:
                return
            if alive:
                self._status.succeeded(self._reactor.seconds())
                self._schedule(self._settings.ttl / 3, self._keep_alive, session)
            else:
                log.warn(
                    "etcd discovery: lease {lease} of {key} expired; registering again",
                    lease=lease,
                    key=self._key,
                )
                self._lease = None
                self._establish()

        check.addCallbacks(checked, lambda failure: self._lost(session, failure))

    # The watch.

    def _start_watch(self, session: int, revision: int) -> None:
        request = self._track(
            Deferred.fromCoroutine(self._open_watch(session, revision))
        )
        request.addErrback(lambda failure: self._lost(session, failure))

    async def _open_watch(self, session: int, revision: int) -> None:
        url = self._endpoint() + "/v3/watch"
        body = {
            "create_request": {
                "key": _b64(self._range_start),
                "range_end": _b64(_range_end(self._range_start)),
                "start_revision": str(revision),
            }
        }
        response = await self._http.request(
            "POST",
            url,
            data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": ["application/json"]},
            unbuffered=True,
            reactor=self._reactor,
            timeout=self._settings.timeout,
        )
        if response.code != 200:
            raw = await read_body(response, self._reactor, self._settings.timeout)
            text = raw[:300].decode("utf-8", "replace").strip()
            raise RegistryError(f"POST {url} answered HTTP {response.code}: {text}")
        if session != self._session or not self._running:
            unwanted = JsonStream(lambda _: None)
            response.deliverBody(unwanted)
            unwanted.abort()
            return
        stream = JsonStream(lambda document: self._watch_event(session, document))
        self._watch = stream
        response.deliverBody(stream)
        stream.done.addCallbacks(
            lambda _: self._lost(session, Failure(RegistryError("watch stream ended"))),
            lambda failure: self._lost(session, failure),
        )

    def _watch_event(self, session: int, document: object) -> None:
        if session != self._session or not self._running:
            return
        error = _error_of(document)
        if error is not None:
            raise RegistryError(f"watch failed: {error}")
        result = document.get("result", {}) if isinstance(document, Mapping) else {}
        if result.get("canceled"):
            raise RegistryError(f"watch canceled: {result.get('cancel_reason', 'no reason')}")
        if result.get("compact_revision") not in (None, "0", 0):
            raise RegistryError(f"watch fell behind compaction to {result['compact_revision']}")
        own_key_deleted = False
        for event in result.get("events", []):
            kv = event.get("kv", {})
            if event.get("type") == "DELETE":
                try:
                    key = _unb64(kv.get("key"))
                except ValueError:
                    continue
                self._entries.pop(key, None)
                own_key_deleted = own_key_deleted or key == self._key
            else:
                self._apply_put(kv)
        if own_key_deleted:
            log.warn(
                "etcd discovery: this node's key {key} was deleted; registering again",
                key=self._key,
            )
            self._lease = None
            self._establish()
            return
        self._publish()

    def _end_watch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.abort()

    # Entries and requests.

    def _apply_put(self, kv: Mapping[str, Any]) -> None:
        try:
            key = _unb64(kv.get("key"))
            value = json.loads(_unb64(kv.get("value", "")))
            if value.get("cluster_id") != self._cluster_id:
                log.debug(
                    "etcd discovery: ignoring {key} of cluster {other}",
                    key=key,
                    other=value.get("cluster_id"),
                )
                self._entries.pop(key, None)
                return
            address = parse_host_port(value["address"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.warn("etcd discovery: ignoring unreadable entry {kv}: {reason}", kv=kv, reason=e)
            return
        self._entries[key] = address

    def _publish(self) -> None:
        addresses = set(self._entries.values())
        if addresses:
            self._status.succeeded(self._reactor.seconds(), addresses)
        else:
            self._status.failed(
                self._reactor.seconds(), f"no readable registrations under {self._range_start}"
            )

    def _endpoint(self) -> str:
        endpoints = self._settings.endpoints
        return endpoints[self._endpoint_index % len(endpoints)]

    async def _post(self, path: str, body: object) -> Any:
        _response, document = await request_json(
            self._http,
            self._reactor,
            "POST",
            self._endpoint() + path,
            body,
            timeout=self._settings.timeout,
        )
        error = _error_of(document)
        if error is not None:
            raise RegistryError(f"{path}: {error}")
        return document if document is not None else {}

    # Timers.

    def _schedule(self, delay: float, action: Callable[..., object], *args: object) -> None:
        self._cancel_timer()
        self._timer = self._reactor.callLater(delay, action, *args)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()


@implementer(IDiscoveryPlugin)
class EtcdDiscoveryPlugin:
    """
    Discovery through etcd: register under a prefix with a lease, watch the
    prefix.
    """

    name = "etcd"

    def validate(self, options: Mapping[str, Any] | None) -> list[tuple[str, str]]:
        """
        Check the options (C{endpoints}, C{prefix}, C{ttl}, C{timeout},
        C{retry_initial}, C{retry_max}).
        """
        return check_options(options, OPTIONS) + check_retry(options)

    def create(
        self,
        reactor: Any,
        node_config: Any,
        options: Mapping[str, Any] | None,
        on_change: Callable[[], object],
        http: Any = None,
    ) -> EtcdDiscovery:
        """
        Build an L{EtcdDiscovery}.

        @param http: a treq C{HTTPClient}; by default one on C{reactor}.
        @raise ConfigError: when the options are invalid or treq is missing.
        """
        problems = self.validate(options)
        if problems:
            raise ConfigError(problems)
        settings = EtcdSettings.from_options(options, node_config.cluster_id)
        if http is None:
            http = default_client(reactor, "etcd")
        return EtcdDiscovery(reactor, settings, node_config, on_change, http)


#: The plugin instance that C{twisted/plugins/clustron_builtins.py} exposes.
etcd_discovery = EtcdDiscoveryPlugin()
