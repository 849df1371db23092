"""
Tests for L{clustron.discovery.etcd} and L{clustron.discovery.jsonhttp},
against an in-memory fake of etcd's v3 JSON gateway served through
L{treq.testing.StubTreq}.
"""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import attrs
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface.verify import verifyObject

from clustron.discovery.etcd import EtcdDiscovery, EtcdSettings, etcd_discovery
from clustron.discovery.jsonhttp import (
    JsonStream,
    RegistryError,
    describe_failure,
    read_body,
    request_json,
)
from clustron.errors import ConfigError
from clustron.interfaces import IDiscovery


@attrs.frozen
class NodeConfig:
    """
    The part of L{clustron.config.NodeConfig} discovery reads.
    """

    cluster_id: str
    node_id: str
    advertise: str

    @property
    def advertise_address(self) -> tuple[str, int]:
        host, port = self.advertise.rsplit(":", 1)
        return host, int(port)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


@attrs.define
class Lease:
    ttl: int
    expiry: IDelayedCall | None = None
    keys: set[str] = attrs.Factory(set)


class FakeEtcd(Resource):
    """
    The parts of etcd's v3 JSON gateway the plugin uses, on an injected
    clock: leases expire when not kept alive, watches stream events as
    newline-delimited JSON and replay history from their start revision.

    @ivar down: when true every request answers 503 and open watches end.
    @ivar down_hosts: C{Host} headers answered with 503.
    @ivar requests: the paths asked, in order.
    """

    isLeaf = True

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.revision = 1
        self.kvs: dict[str, tuple[str, str]] = {}
        self.history: list[tuple[int, dict[str, Any]]] = []
        self.leases: dict[str, Lease] = {}
        self.next_lease = 7000000000000000001
        self.watchers: list[tuple[Request, str, str]] = []
        self.down = False
        self.down_hosts: set[str] = set()
        self.requests: list[str] = []

    # Helpers for tests.

    def set_down(self, down: bool) -> None:
        self.down = down
        if down:
            for request, _start, _end in self.watchers:
                request.finish()
            self.watchers = []

    def put(self, key: str, value: str, lease: str = "0") -> None:
        self.revision += 1
        old = self.kvs.get(key)
        if old is not None and old[1] in self.leases:
            self.leases[old[1]].keys.discard(key)
        self.kvs[key] = (value, lease)
        if lease in self.leases:
            self.leases[lease].keys.add(key)
        self._event(
            {"kv": {"key": b64(key), "value": b64(value), "lease": lease,
                    "mod_revision": str(self.revision)}}
        )

    def delete(self, key: str) -> None:
        if key not in self.kvs:
            return
        _value, lease = self.kvs.pop(key)
        if lease in self.leases:
            self.leases[lease].keys.discard(key)
        self.revision += 1
        self._event({"type": "DELETE", "kv": {"key": b64(key),
                                              "mod_revision": str(self.revision)}})

    def keys(self) -> list[str]:
        return sorted(self.kvs)

    def send_to_watchers(self, document: dict[str, Any]) -> None:
        for request, _start, _end in self.watchers:
            request.write(json.dumps(document).encode() + b"\n")

    # Internals.

    def _header(self) -> dict[str, str]:
        return {"cluster_id": "1", "member_id": "2", "revision": str(self.revision)}

    def _event(self, event: dict[str, Any]) -> None:
        self.history.append((self.revision, event))
        key = unb64(event["kv"]["key"])
        for request, start, end in self.watchers:
            if start <= key < end:
                request.write(
                    json.dumps({"result": {"header": self._header(), "events": [event]}}).encode()
                    + b"\n"
                )

    def _expire(self, lease_id: str) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is not None:
            for key in sorted(lease.keys):
                self.delete(key)

    def _keep(self, lease_id: str) -> None:
        lease = self.leases[lease_id]
        if lease.expiry is not None and lease.expiry.active():
            lease.expiry.cancel()
        lease.expiry = self.clock.callLater(lease.ttl, self._expire, lease_id)

    def render_POST(self, request: Request) -> bytes | int:
        path = request.path.decode()
        self.requests.append(path)
        host = (request.getHeader("host") or "").split(":")[0]
        if self.down or host in self.down_hosts:
            request.setResponseCode(503)
            return b'{"error":"etcdserver: unavailable","code":14}'
        body = json.loads(request.content.read() or b"{}")
        request.setHeader("content-type", "application/json")
        if path == "/v3/lease/grant":
            lease_id = str(self.next_lease)
            self.next_lease += 1
            self.leases[lease_id] = Lease(ttl=int(body["TTL"]))
            self._keep(lease_id)
            return self._json({"header": self._header(), "ID": lease_id, "TTL": str(body["TTL"])})
        if path == "/v3/lease/keepalive":
            lease_id = str(body["ID"])
            result: dict[str, Any] = {"header": self._header(), "ID": lease_id}
            if lease_id in self.leases:
                self._keep(lease_id)
                result["TTL"] = str(self.leases[lease_id].ttl)
            return self._json({"result": result})
        if path == "/v3/lease/revoke":
            lease_id = str(body["ID"])
            if lease_id not in self.leases:
                request.setResponseCode(404)
                return self._json({"error": "etcdserver: requested lease not found",
                                   "message": "etcdserver: requested lease not found",
                                   "code": 5})
            expiry = self.leases[lease_id].expiry
            if expiry is not None and expiry.active():
                expiry.cancel()
            self._expire(lease_id)
            return self._json({"header": self._header()})
        if path == "/v3/kv/put":
            lease = str(body.get("lease", "0"))
            if lease != "0" and lease not in self.leases:
                request.setResponseCode(404)
                return self._json({"error": "etcdserver: requested lease not found",
                                   "message": "etcdserver: requested lease not found",
                                   "code": 5})
            self.put(unb64(body["key"]), unb64(body["value"]), lease)
            return self._json({"header": self._header()})
        if path == "/v3/kv/range":
            start, end = unb64(body["key"]), unb64(body["range_end"])
            kvs = [
                {"key": b64(key), "value": b64(value), "lease": lease}
                for key, (value, lease) in sorted(self.kvs.items())
                if start <= key < end
            ]
            answer: dict[str, Any] = {"header": self._header()}
            if kvs:
                answer.update(kvs=kvs, count=str(len(kvs)))
            return self._json(answer)
        if path == "/v3/watch":
            create = body["create_request"]
            start, end = unb64(create["key"]), unb64(create["range_end"])
            first = int(create.get("start_revision", self.revision + 1))
            request.write(
                json.dumps({"result": {"header": self._header(), "created": True}}).encode()
                + b"\n"
            )
            for revision, event in self.history:
                if revision >= first and start <= unb64(event["kv"]["key"]) < end:
                    request.write(
                        json.dumps({"result": {"header": self._header(), "events": [event]}})
                        .encode()
                        + b"\n"
                    )
            entry = (request, start, end)
            self.watchers.append(entry)
            request.notifyFinish().addBoth(lambda _: self._forget(entry))
            return NOT_DONE_YET
        request.setResponseCode(404)
        return self._json({"error": "Not Found", "code": 5})

    def _forget(self, entry: tuple[Request, str, str]) -> None:
        if entry in self.watchers:
            self.watchers.remove(entry)

    @staticmethod
    def _json(document: dict[str, Any]) -> bytes:
        return json.dumps(document).encode()


class EtcdTestCase(SynchronousTestCase):
    """
    Shared set-up: a clock, a fake etcd, an HTTP stub.
    """

    endpoints = ["http://etcd.test:2379"]

    def setUp(self) -> None:
        self.clock = Clock()
        self.etcd = FakeEtcd(self.clock)
        self.stub = StubTreq(self.etcd)
        self.changes: dict[str, int] = {}
        self.sources: list[EtcdDiscovery] = []

    def source(
        self,
        node_id: str,
        port: int,
        clock: Clock | None = None,
        stub: StubTreq | None = None,
        **options: Any,
    ) -> EtcdDiscovery:
        options.setdefault("endpoints", self.endpoints)
        options.setdefault("ttl", 6)
        config = NodeConfig("demo", node_id, f"127.0.0.1:{port}")
        self.changes[node_id] = 0

        def changed() -> None:
            self.changes[node_id] += 1

        source = EtcdDiscovery(
            clock or self.clock,
            EtcdSettings.from_options(options, "demo"),
            config,
            changed,
            stub or self.stub,
            random.Random(4),
        )
        self.sources.append(source)
        return source

    def settle(self) -> None:
        """
        Move every queued byte between client and server.
        """
        for _ in range(10):
            self.stub.flush()

    def advance(self, seconds: float, step: float = 0.5) -> None:
        """
        Advance the clock in steps, moving bytes after each.
        """
        steps = round(seconds / step)
        for _ in range(steps):
            self.clock.advance(step)
            self.settle()


class RegistrationTests(EtcdTestCase):
    """
    Registering, listing and watching.
    """

    def test_interfaces(self) -> None:
        """
        The source provides L{IDiscovery}.
        """
        self.assertTrue(verifyObject(IDiscovery, self.source("n1", 7101)))

    def test_registers_and_lists(self) -> None:
        """
        start() grants a lease, puts this node's key on it, lists the
        prefix and opens a watch; it fires when that is done.
        """
        source = self.source("n1", 7101)
        started = source.start()
        self.settle()
        self.successResultOf(started)
        self.assertEqual(
            self.etcd.requests,
            ["/v3/lease/grant", "/v3/kv/put", "/v3/kv/range", "/v3/watch"],
        )
        self.assertEqual(self.etcd.keys(), ["/clustron/demo/n1"])
        value, lease = self.etcd.kvs["/clustron/demo/n1"]
        self.assertEqual(
            json.loads(value), {"cluster_id": "demo", "node_id": "n1", "address": "127.0.0.1:7101"}
        )
        self.assertIn(lease, self.etcd.leases)
        self.assertEqual(source.addresses(), {("127.0.0.1", 7101)})
        self.assertEqual(source.last_success, 0)
        self.assertEqual(source.key, "/clustron/demo/n1")

    def test_three_sources_see_each_other(self) -> None:
        """
        Sources on one prefix learn about each other through the watch.
        """
        sources = [self.source(f"n{i}", 7100 + i) for i in (1, 2, 3)]
        for source in sources:
            source.start()
            self.settle()
        expected = {("127.0.0.1", 7101), ("127.0.0.1", 7102), ("127.0.0.1", 7103)}
        for source in sources:
            self.assertEqual(source.addresses(), expected)
        self.assertEqual(self.changes, {"n1": 3, "n2": 2, "n3": 1})

    def test_keepalive_keeps_registration(self) -> None:
        """
        The lease is kept alive every ttl/3 seconds, so the key outlives
        many TTLs.
        """
        source = self.source("n1", 7101, ttl=3)
        source.start()
        self.settle()
        self.advance(30)
        self.assertEqual(self.etcd.keys(), ["/clustron/demo/n1"])
        self.assertEqual(self.etcd.requests.count("/v3/lease/keepalive"), 30)
        self.assertEqual(self.etcd.requests.count("/v3/lease/grant"), 1)
        self.assertEqual(source.last_success, 30)

    def test_dead_node_disappears(self) -> None:
        """
        A node that stops keeping its lease alive (its clock and network
        stand still, as if the process died) loses its key after the TTL,
        and the others see it go.
        """
        live = self.source("n1", 7101)
        dead_network = StubTreq(self.etcd)
        dead = self.source("n2", 7102, clock=Clock(), stub=dead_network)
        live.start()
        dead.start()
        dead_network.flush()
        self.settle()
        self.assertEqual(len(live.addresses()), 2)
        self.advance(5.5)
        self.assertEqual(len(live.addresses()), 2)
        self.advance(1)
        self.assertEqual(live.addresses(), {("127.0.0.1", 7101)})
        self.assertEqual(self.etcd.keys(), ["/clustron/demo/n1"])

    def test_stop_revokes(self) -> None:
        """
        stop() revokes the lease (the key goes at once), closes the watch
        and leaves nothing scheduled.
        """
        first = self.source("n1", 7101)
        second = self.source("n2", 7102)
        first.start()
        second.start()
        self.settle()
        stopped = second.stop()
        self.settle()
        self.successResultOf(stopped)
        self.assertEqual(self.etcd.keys(), ["/clustron/demo/n1"])
        self.assertEqual(first.addresses(), {("127.0.0.1", 7101)})
        self.assertEqual(len(self.etcd.watchers), 1)
        requests = len(self.etcd.requests)
        self.successResultOf(first.stop())
        self.settle()
        self.assertEqual(self.etcd.watchers, [])
        self.assertEqual(len(self.etcd.requests), requests + 1)
        self.advance(60)
        self.assertEqual(len(self.etcd.requests), requests + 1)
        self.assertEqual(self.etcd.keys(), [])

    def test_stop_before_registered(self) -> None:
        """
        stop() while the first attempt waits for etcd cancels it; nothing is
        revoked because no lease was granted.
        """
        self.etcd.down = True
        source = self.source("n1", 7101)
        started = source.start()
        self.settle()
        self.successResultOf(started)
        self.successResultOf(source.stop())
        self.etcd.down = False
        self.advance(120)
        self.assertEqual(self.etcd.keys(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_revoke_failure_logged(self) -> None:
        """
        A revoke that fails is logged and stop() still fires.
        """
        source = self.source("n1", 7101)
        source.start()
        self.settle()
        self.etcd.down = True
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        stopped = source.stop()
        self.settle()
        self.assertIsNone(self.successResultOf(stopped))
        [warning] = [e for e in events if "could not revoke" in e.get("log_format", "")]
        self.assertIn("HTTP 503", warning["reason"])
        self.assertEqual(warning["key"], "/clustron/demo/n1")

    def test_foreign_and_bad_entries_ignored(self) -> None:
        """
        Values of another cluster and unreadable values are ignored.
        """
        self.etcd.put("/clustron/demo/x", json.dumps({"cluster_id": "other", "node_id": "x",
                                                      "address": "10.0.0.9:1"}))
        self.etcd.put("/clustron/demo/y", "not json")
        self.etcd.put("/clustron/demo/z", json.dumps({"cluster_id": "demo", "address": "nope"}))
        self.etcd.put("/clustron/demoX/w", json.dumps({"cluster_id": "demo", "node_id": "w",
                                                       "address": "10.0.0.8:1"}))
        source = self.source("n1", 7101)
        source.start()
        self.settle()
        self.etcd.put("/clustron/demo/v", "{\"cluster_id\": \"demo\"}")
        self.etcd.put("/clustron/demo/u", json.dumps({"cluster_id": "demo", "node_id": "u",
                                                      "address": "10.0.0.7:7"}))
        self.settle()
        self.assertEqual(source.addresses(), {("127.0.0.1", 7101), ("10.0.0.7", 7)})

    def test_entry_moving_to_other_cluster_dropped(self) -> None:
        """
        A key rewritten with another cluster id stops counting.
        """
        source = self.source("n1", 7101)
        source.start()
        self.etcd.put("/clustron/demo/u", json.dumps({"cluster_id": "demo", "address": "h:7"}))
        self.settle()
        self.assertIn(("h", 7), source.addresses())
        self.etcd.put("/clustron/demo/u", json.dumps({"cluster_id": "else", "address": "h:7"}))
        self.settle()
        self.assertEqual(source.addresses(), {("127.0.0.1", 7101)})

    def test_custom_prefix(self) -> None:
        """
        The prefix option places the keys.
        """
        source = self.source("n1", 7101, prefix="/apps/one/")
        source.start()
        self.settle()
        self.assertEqual(self.etcd.keys(), ["/apps/one/n1"])


class FailureTests(EtcdTestCase):
    """
    etcd going away and coming back.
    """

    def test_outage_keeps_addresses_and_retries(self) -> None:
        """
        While etcd is down the addresses stay, the error is recorded and
        attempts back off; when it returns, the same lease is reused if it
        is still alive.
        """
        first = self.source("n1", 7101, ttl=30, retry_initial=0.5, retry_max=4)
        second = self.source("n2", 7102, ttl=30)
        first.start()
        second.start()
        self.settle()
        self.etcd.set_down(True)
        self.settle()
        self.assertEqual(len(first.addresses()), 2)
        self.assertIn("watch stream ended", first.last_error)
        before = len(self.etcd.requests)
        self.advance(12)
        attempts = len(self.etcd.requests) - before
        self.assertTrue(4 <= attempts <= 16, attempts)
        self.assertIn("HTTP 503", first.last_error)
        self.assertIn("http://etcd.test:2379", first.last_error)
        self.assertEqual(len(first.addresses()), 2)
        self.assertEqual(first.last_success, 0)

        self.etcd.set_down(False)
        self.advance(5)
        self.assertIsNone(first.last_error)
        self.assertEqual(len(first.addresses()), 2)
        self.assertEqual(self.etcd.requests.count("/v3/lease/grant"), 2)
        self.assertEqual(self.etcd.keys(), ["/clustron/demo/n1", "/clustron/demo/n2"])

    def test_lease_lost_during_outage(self) -> None:
        """
        When the lease expired during an outage, a new one is granted and
        the key put again.
        """
        source = self.source("n1", 7101, ttl=3)
        source.start()
        self.settle()
        self.etcd.set_down(True)
        self.etcd.down = False
        self.etcd.down_hosts.add("etcd.test")
        self.advance(10)
        self.assertEqual(self.etcd.keys(), [])
        self.etcd.down_hosts.clear()
        self.advance(10)
        self.assertEqual(self.etcd.keys(), ["/clustron/demo/n1"])
        self.assertEqual(self.etcd.requests.count("/v3/lease/grant"), 2)
        self.assertIsNone(source.last_error)

    def test_keepalive_finds_lease_gone(self) -> None:
        """
        A keep-alive answered without a TTL (the lease is gone) registers
        again at once.
        """
        source = self.source("n1", 7101, ttl=3)
        source.start()
        self.settle()
        [lease] = list(self.etcd.leases)
        expiry = self.etcd.leases[lease].expiry
        assert expiry is not None
        expiry.cancel()
        del self.etcd.leases[lease]
        self.advance(1)
        self.assertEqual(self.etcd.requests.count("/v3/lease/grant"), 2)
        self.assertIn(self.etcd.kvs["/clustron/demo/n1"][1], self.etcd.leases)

    def test_own_key_deleted(self) -> None:
        """
        When someone deletes this node's key, it is put back.
        """
        source = self.source("n1", 7101)
        source.start()
        self.settle()
        self.etcd.delete("/clustron/demo/n1")
        self.settle()
        self.assertEqual(self.etcd.keys(), ["/clustron/demo/n1"])
        self.assertEqual(source.addresses(), {("127.0.0.1", 7101)})

    def test_second_endpoint_used(self) -> None:
        """
        After a failure the next endpoint is tried.
        """
        self.etcd.down_hosts.add("one.test")
        source = self.source(
            "n1", 7101, endpoints=["http://one.test:2379", "http://two.test:2379"],
            retry_initial=0.5,
        )
        source.start()
        self.settle()
        self.assertIn("http://one.test:2379", source.last_error)
        self.advance(1)
        self.assertEqual(self.etcd.keys(), ["/clustron/demo/n1"])
        self.assertIsNone(source.last_error)

    def test_watch_canceled_reestablishes(self) -> None:
        """
        A watch that etcd cancels (or that fell behind compaction) is set
        up again, with a fresh listing.
        """
        source = self.source("n1", 7101, retry_initial=0.5)
        source.start()
        self.settle()
        self.etcd.send_to_watchers({"result": {"canceled": True, "cancel_reason": "compacted"}})
        self.settle()
        self.assertIn("watch canceled: compacted", source.last_error)
        self.advance(1)
        self.assertEqual(self.etcd.requests.count("/v3/watch"), 2)
        self.assertIsNone(source.last_error)
        self.etcd.send_to_watchers({"result": {"compact_revision": "5"}})
        self.settle()
        self.assertIn("compaction to 5", source.last_error)
        self.etcd.send_to_watchers({"error": {"message": "boom", "grpc_code": 2}})
        self.advance(1)
        self.etcd.send_to_watchers({"error": {"message": "boom", "grpc_code": 2}})
        self.settle()
        self.assertIn("watch failed: boom", source.last_error)

    def test_watch_events_replayed_from_revision(self) -> None:
        """
        A change between the listing and the watch is not missed: the watch
        starts at the listing's revision plus one.
        """
        source = self.source("n1", 7101)
        original = self.etcd.render_POST

        def render(request: Request) -> bytes | int:
            if request.path == b"/v3/watch":
                self.etcd.put("/clustron/demo/late", json.dumps(
                    {"cluster_id": "demo", "address": "10.0.0.5:5"}))
            return original(request)

        self.etcd.render_POST = render  # type: ignore[method-assign]
        source.start()
        self.settle()
        self.assertIn(("10.0.0.5", 5), source.addresses())


class PluginTests(SynchronousTestCase):
    """
    Tests for L{etcd_discovery}.
    """

    def test_validate(self) -> None:
        """
        The documented options are valid; every bad one is reported.
        """
        self.assertEqual(
            etcd_discovery.validate(
                {"endpoints": ["http://127.0.0.1:2379"], "prefix": "/clustron/demo", "ttl": 10}
            ),
            [],
        )
        problems = dict(
            etcd_discovery.validate(
                {"endpoints": ["127.0.0.1:2379"], "ttl": 1.5, "prefix": "", "endpoint": []}
            )
        )
        self.assertEqual(sorted(problems), ["endpoint", "endpoints[0]", "prefix", "ttl"])
        self.assertIn("did you mean 'endpoints'", problems["endpoint"])
        self.assertEqual(etcd_discovery.validate({}), [("endpoints", "is required")])

    def test_create(self) -> None:
        """
        create() defaults the prefix from the cluster id and builds a real
        treq client when none is given.
        """
        config = NodeConfig("demo", "n1", "127.0.0.1:7101")
        source = etcd_discovery.create(
            Clock(), config, {"endpoints": ["http://127.0.0.1:2379/"]}, lambda: None
        )
        self.assertTrue(verifyObject(IDiscovery, source))
        self.assertEqual(source.key, "/clustron/demo/n1")
        self.assertRaises(ConfigError, etcd_discovery.create, Clock(), config, {}, lambda: None)


class JsonStreamTests(SynchronousTestCase):
    """
    Tests for L{JsonStream}.
    """

    def setUp(self) -> None:
        self.documents: list[Any] = []
        self.stream = JsonStream(self.documents.append, limit=64)
        self.aborted = 0

        class Transport:
            def stopProducing(transport) -> None:
                self.aborted += 1

        self.stream.makeConnection(Transport())

    def test_split_across_chunks(self) -> None:
        """
        Documents split over chunks, several per chunk, are all delivered.
        """
        self.stream.dataReceived(b'{"a": 1}\n{"b"')
        self.stream.dataReceived(b': [1, 2]}\n\n{"c": "\xc3')
        self.stream.dataReceived(b'\xa9"}\n')
        self.assertEqual(self.documents, [{"a": 1}, {"b": [1, 2]}, {"c": "\u00e9"}])
        self.stream.connectionLost(Failure(ResponseDone()))
        self.assertIsNone(self.successResultOf(self.stream.done))

    def test_last_line_without_newline(self) -> None:
        """
        A last document without a newline is delivered when the body ends.
        """
        self.stream.dataReceived(b'{"a": 1}')
        self.assertEqual(self.documents, [])
        self.stream.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.documents, [{"a": 1}])
        self.successResultOf(self.stream.done)

    def test_invalid_json(self) -> None:
        """
        An invalid line fails the stream and drops the connection.
        """
        self.stream.dataReceived(b'{"a": 1}\n{nope}\n{"b": 2}\n')
        self.assertEqual(self.documents, [{"a": 1}])
        self.failureResultOf(self.stream.done, RegistryError)
        self.assertEqual(self.aborted, 1)

    def test_limit(self) -> None:
        """
        A line longer than the limit fails the stream.
        """
        self.stream.dataReceived(b'{"a": "' + b"x" * 100)
        failure = self.failureResultOf(self.stream.done, RegistryError)
        self.assertIn("longer than 64", str(failure.value))

    def test_callback_error(self) -> None:
        """
        An exception from the callback fails the stream with it.
        """

        def broken(document: Any) -> None:
            raise KeyError("x")

        stream = JsonStream(broken)
        stream.dataReceived(b"{}\n")
        self.failureResultOf(stream.done, KeyError)

    def test_connection_error(self) -> None:
        """
        A broken connection fails the stream with its reason.
        """
        self.stream.connectionLost(Failure(ConnectionError("reset")))
        self.failureResultOf(self.stream.done, ConnectionError)

    def test_cancel_aborts(self) -> None:
        """
        Cancelling C{done} drops the connection.
        """
        self.stream.done.cancel()
        self.assertEqual(self.aborted, 1)
        self.failureResultOf(self.stream.done)


class JsonHttpTests(SynchronousTestCase):
    """
    Tests for L{read_body}, L{request_json} and L{describe_failure}.
    """

    def test_describe_timeouts_and_wrapped_errors(self) -> None:
        """
        Timeouts read as such; wrapped connection errors name their reasons.
        """
        timed_out = Failure(ResponseNeverReceived([Failure(CancelledError())]))
        self.assertEqual(describe_failure(timed_out, 2.5), "no answer within 2.5 s")
        self.assertEqual(describe_failure(Failure(CancelledError()), 1), "no answer within 1 s")
        lost = Failure(ResponseFailed([Failure(ConnectionLost("peer reset"))]))
        self.assertEqual(
            describe_failure(lost, 1),
            "ResponseFailed (ConnectionLost: Connection to the other side was lost in a "
            "non-clean fashion: peer reset.)",
        )
        self.assertEqual(describe_failure(Failure(RegistryError("HTTP 503")), 1), "HTTP 503")
        self.assertEqual(describe_failure(Failure(ValueError("x")), 1), "ValueError: x")

    def test_request_json_errors(self) -> None:
        """
        Non-2xx answers and invalid JSON raise L{RegistryError} naming the
        URL and status; empty bodies give C{None}.
        """
        clock = Clock()

        class Answers(Resource):
            isLeaf = True

            def render(self, request: Request) -> bytes:
                if request.path == b"/bad":
                    request.setResponseCode(500)
                    return b"it broke"
                if request.path == b"/empty":
                    return b""
                return b"{not json"

        stub = StubTreq(Answers())
        bad = Deferred.fromCoroutine(request_json(stub, clock, "GET", "http://h.test/bad"))
        failure = self.failureResultOf(bad, RegistryError)
        self.assertEqual(str(failure.value), "GET http://h.test/bad answered HTTP 500: it broke")
        empty = Deferred.fromCoroutine(request_json(stub, clock, "PUT", "http://h.test/empty", {}))
        self.assertIsNone(self.successResultOf(empty)[1])
        garbled = Deferred.fromCoroutine(request_json(stub, clock, "GET", "http://h.test/x"))
        self.assertIn("invalid JSON", str(self.failureResultOf(garbled, RegistryError).value))

    def test_read_body_limit_and_timeout(self) -> None:
        """
        Bodies over the limit fail; bodies that do not end in time are
        cancelled.
        """
        clock = Clock()
        held: list[Request] = []

        class Slow(Resource):
            isLeaf = True

            def render(self, request: Request) -> bytes | int:
                if request.path == b"/big":
                    return b"x" * 100
                request.write(b"partial")
                held.append(request)
                return NOT_DONE_YET

        stub = StubTreq(Slow())
        response = self.successResultOf(stub.request("GET", "http://h.test/big", unbuffered=True))
        big = read_body(response, clock, 5, limit=10)
        self.assertIn("larger than 10", str(self.failureResultOf(big, RegistryError).value))

        response = self.successResultOf(
            stub.request("GET", "http://h.test/slow", unbuffered=True)
        )
        slow = read_body(response, clock, 5)
        stub.flush()
        self.assertNoResult(slow)
        clock.advance(5)
        stub.flush()
        self.failureResultOf(slow, CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])
