"""
Tests for L{clustron.discovery.consul}, against a fake of the Consul agent
HTTP API served through L{treq.testing.StubTreq}.

L{FakeConsul} implements the documented behaviour of the endpoints the
plugin uses (no Consul package exists for this machine): service
registration with a TTL check (critical when not passed in time, removed
after C{DeregisterCriticalServiceAfter}), check pass, deregistration, and
the health query with C{passing} and blocking C{index}/C{wait} parameters
answered with an C{X-Consul-Index} header.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any
from urllib.parse import unquote

import attrs
from treq.testing import StubTreq
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface.verify import verifyObject

from clustron.discovery.consul import ConsulDiscovery, ConsulSettings, consul_discovery
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


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(ms|s|m|h)", duration)
    if match is None:
        raise ValueError(f"bad duration {duration!r}")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    return float(match.group(1)) * scale


@attrs.define
class Instance:
    registration: dict[str, Any]
    status: str = "passing"
    ttl_timer: IDelayedCall | None = None
    reap_timer: IDelayedCall | None = None


class FakeConsul(Resource):
    """
    A Consul agent's HTTP API for one node, on an injected reactor.

    @ivar index: the Raft-like index, bumped on every change.
    @ivar instances: registered service instances by ID.
    @ivar down: when true every request answers 500 and waiting queries end.
    @ivar requests: C{(method, path)} of every request, in order.
    @ivar tokens: the C{X-Consul-Token} of every request.
    """

    isLeaf = True

    def __init__(self, reactor: IReactorTime, node_address: str = "127.0.0.1") -> None:
        super().__init__()
        self.reactor = reactor
        self.node_address = node_address
        self.index = 10
        self.instances: dict[str, Instance] = {}
        self.waiting: list[tuple[Request, IDelayedCall]] = []
        self.down = False
        self.requests: list[tuple[str, str]] = []
        self.tokens: list[str | None] = []

    # Test helpers.

    def set_down(self, down: bool) -> None:
        self.down = down
        if down:
            for request, timer in self.waiting:
                if timer.active():
                    timer.cancel()
                request.setResponseCode(500)
                request.write(b"agent unavailable")
                request.finish()
            self.waiting = []

    def add_foreign(self, service_id: str, name: str, meta: dict[str, str], address: str,
                    port: Any) -> None:
        self.instances[service_id] = Instance(
            {"ID": service_id, "Name": name, "Address": address, "Port": port, "Meta": meta}
        )
        self._changed()

    def close(self) -> None:
        """
        Answer waiting queries with an error and cancel every timer.
        """
        self.set_down(True)
        for instance in self.instances.values():
            for timer in (instance.ttl_timer, instance.reap_timer):
                if timer is not None and timer.active():
                    timer.cancel()

    def healthy(self, name: str) -> list[str]:
        return sorted(
            sid for sid, i in self.instances.items()
            if i.registration["Name"] == name and i.status == "passing"
        )

    # Internals.

    def _changed(self) -> None:
        self.index += 1
        waiting, self.waiting = self.waiting, []
        for request, timer in waiting:
            if timer.active():
                timer.cancel()
            self._answer_health(request)

    def _set_status(self, instance: Instance, status: str) -> None:
        if instance.status != status:
            instance.status = status
            self._changed()

    def _arm_ttl(self, service_id: str) -> None:
        instance = self.instances[service_id]
        check = instance.registration.get("Check") or {}
        for timer in (instance.ttl_timer, instance.reap_timer):
            if timer is not None and timer.active():
                timer.cancel()
        instance.reap_timer = None
        if "TTL" in check:
            instance.ttl_timer = self.reactor.callLater(
                _seconds(check["TTL"]), self._ttl_expired, service_id
            )

    def _ttl_expired(self, service_id: str) -> None:
        instance = self.instances.get(service_id)
        if instance is None:
            return
        self._set_status(instance, "critical")
        after = (instance.registration.get("Check") or {}).get("DeregisterCriticalServiceAfter")
        if after:
            instance.reap_timer = self.reactor.callLater(
                _seconds(after), self._remove, service_id
            )

    def _remove(self, service_id: str) -> bool:
        instance = self.instances.pop(service_id, None)
        if instance is None:
            return False
        for timer in (instance.ttl_timer, instance.reap_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._changed()
        return True

    def _answer_health(self, request: Request) -> None:
        name = unquote(request.path.decode()).rsplit("/", 1)[1]
        passing = request.args.get(b"passing", [b"false"])[0] in (b"true", b"1", b"")
        entries = []
        for service_id, instance in sorted(self.instances.items()):
            registration = instance.registration
            if registration["Name"] != name or (passing and instance.status != "passing"):
                continue
            entries.append(
                {
                    "Node": {"Node": "agent-1", "Address": self.node_address},
                    "Service": {
                        "ID": service_id,
                        "Service": name,
                        "Tags": registration.get("Tags", []),
                        "Address": registration.get("Address", ""),
                        "Port": registration.get("Port", 0),
                        "Meta": registration.get("Meta"),
                    },
                    "Checks": [{"CheckID": "serfHealth", "Status": "passing"},
                               {"CheckID": f"service:{service_id}", "Status": instance.status}],
                }
            )
        request.setHeader("X-Consul-Index", str(self.index))
        request.setHeader("Content-Type", "application/json")
        request.write(json.dumps(entries).encode())
        request.finish()

    def render(self, request: Request) -> bytes | int:
        method = request.method.decode()
        path = unquote(request.path.decode())
        self.requests.append((method, path))
        token = request.getHeader("x-consul-token")
        self.tokens.append(token)
        if self.down:
            request.setResponseCode(500)
            return b"agent unavailable"
        if method == "PUT" and path == "/v1/agent/service/register":
            registration = json.loads(request.content.read())
            service_id = registration.get("ID") or registration["Name"]
            check = registration.get("Check") or {}
            old = self.instances.get(service_id)
            self.instances[service_id] = Instance(
                registration, status=check.get("Status", "critical") if "TTL" in check
                else "passing"
            )
            if old is not None:
                for timer in (old.ttl_timer, old.reap_timer):
                    if timer is not None and timer.active():
                        timer.cancel()
            self._arm_ttl(service_id)
            self._changed()
            return b""
        match = re.fullmatch(r"/v1/agent/check/pass/service:(.+)", path)
        if method == "PUT" and match:
            instance = self.instances.get(match.group(1))
            if instance is None or "TTL" not in (instance.registration.get("Check") or {}):
                request.setResponseCode(404)
                return f'Unknown check ID "service:{match.group(1)}"'.encode()
            self._arm_ttl(match.group(1))
            self._set_status(instance, "passing")
            return b""
        match = re.fullmatch(r"/v1/agent/service/deregister/(.+)", path)
        if method == "PUT" and match:
            if not self._remove(match.group(1)):
                request.setResponseCode(404)
                return f'Unknown service ID "{match.group(1)}"'.encode()
            return b""
        if method == "GET" and path.startswith("/v1/health/service/"):
            index = int(request.args.get(b"index", [b"0"])[0])
            if index and index >= self.index:
                wait = _seconds(request.args.get(b"wait", [b"300s"])[0].decode())
                entry: list[Any] = []
                timer = self.reactor.callLater(wait, self._wait_over, entry)
                entry.extend([request, timer])
                self.waiting.append((request, timer))
                request.notifyFinish().addErrback(lambda _: self._forget(request))
                return NOT_DONE_YET
            self._answer_health(request)
            return NOT_DONE_YET
        request.setResponseCode(404)
        return b"no such endpoint"

    def _wait_over(self, entry: list[Any]) -> None:
        request, timer = entry
        if (request, timer) in self.waiting:
            self.waiting.remove((request, timer))
            self._answer_health(request)

    def _forget(self, request: Request) -> None:
        for waiting in list(self.waiting):
            if waiting[0] is request:
                self.waiting.remove(waiting)
                if waiting[1].active():
                    waiting[1].cancel()


class ConsulTestCase(SynchronousTestCase):
    """
    Shared set-up: a clock, a fake Consul agent, an HTTP stub.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.consul = FakeConsul(self.clock)
        self.stub = StubTreq(self.consul)
        self.changes: dict[str, int] = {}

    def source(
        self, node_id: str, port: int, cluster_id: str = "demo", clock: Clock | None = None,
        stub: StubTreq | None = None, **options: Any
    ) -> ConsulDiscovery:
        options.setdefault("url", "http://consul.test:8500")
        self.changes[node_id] = 0

        def changed() -> None:
            self.changes[node_id] += 1

        return ConsulDiscovery(
            clock or self.clock,
            ConsulSettings.from_options(options),
            NodeConfig(cluster_id, node_id, f"127.0.0.{port - 7100}:{port}"),
            changed,
            stub or self.stub,
            random.Random(5),
        )

    def settle(self) -> None:
        """
        Move queued bytes and run what is due now, until nothing moves.
        """
        for _ in range(10):
            self.stub.flush()
            self.clock.advance(0)

    def advance(self, seconds: float, step: float = 0.5) -> None:
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            self.settle()


class ConsulTests(ConsulTestCase):
    """
    Registration, health checks and blocking queries.
    """

    def test_interfaces(self) -> None:
        """
        The source provides L{IDiscovery}.
        """
        self.assertTrue(verifyObject(IDiscovery, self.source("n1", 7101)))

    def test_registers_with_ttl_check(self) -> None:
        """
        start() registers the instance with its address, meta and a passing
        TTL check, passes the check and reads the healthy instances.
        """
        source = self.source("n1", 7101, ttl=9, deregister_after=90)
        started = source.start()
        self.settle()
        self.successResultOf(started)
        registration = self.consul.instances["clustron-demo-n1"].registration
        self.assertEqual(
            registration,
            {
                "ID": "clustron-demo-n1",
                "Name": "clustron",
                "Address": "127.0.0.1",
                "Port": 7101,
                "Tags": ["clustron", "cluster-demo"],
                "Meta": {"cluster_id": "demo", "node_id": "n1"},
                "Check": {
                    "CheckID": "service:clustron-demo-n1",
                    "Name": "clustron node n1",
                    "DeregisterCriticalServiceAfter": "90s",
                    "TTL": "9s",
                    "Status": "passing",
                },
            },
        )
        self.assertEqual(
            self.consul.requests[:3],
            [
                ("PUT", "/v1/agent/service/register"),
                ("PUT", "/v1/agent/check/pass/service:clustron-demo-n1"),
                ("GET", "/v1/health/service/clustron"),
            ],
        )
        self.assertEqual(source.addresses(), {("127.0.0.1", 7101)})
        self.assertEqual(source.last_success, 0)

    def test_three_see_each_other_through_blocking_queries(self) -> None:
        """
        Blocking queries answer as soon as the healthy set changes.
        """
        sources = [self.source(f"n{i}", 7100 + i) for i in (1, 2, 3)]
        for source in sources:
            source.start()
            self.settle()
        expected = {("127.0.0.1", 7101), ("127.0.0.2", 7102), ("127.0.0.3", 7103)}
        for source in sources:
            self.assertEqual(source.addresses(), expected)
        self.assertEqual(len(self.consul.waiting), 3)
        queries = [r for r in self.consul.requests if r[0] == "GET"]
        self.assertLess(len(queries), 20)

    def test_ttl_kept_passing(self) -> None:
        """
        The check is passed every ttl/3 seconds, so it never goes critical.
        """
        source = self.source("n1", 7101, ttl=3)
        source.start()
        self.settle()
        self.advance(30)
        self.assertEqual(self.consul.healthy("clustron"), ["clustron-demo-n1"])
        passes = [r for r in self.consul.requests if "/check/pass/" in r[1]]
        self.assertEqual(len(passes), 31)
        self.assertEqual(source.last_success, 30)

    def test_dead_node_goes_critical(self) -> None:
        """
        A node that stops passing its check (its clock and network stand
        still) turns critical after the TTL and the others drop it.
        """
        live = self.source("n1", 7101, ttl=3)
        dead_network = StubTreq(self.consul)
        dead = self.source("n2", 7102, ttl=3, clock=Clock(), stub=dead_network)
        live.start()
        dead.start()
        dead_network.flush()
        self.settle()
        self.assertEqual(len(live.addresses()), 2)
        self.advance(2.5)
        self.assertEqual(len(live.addresses()), 2)
        self.advance(1)
        self.assertEqual(live.addresses(), {("127.0.0.1", 7101)})
        self.advance(60)
        self.assertNotIn("clustron-demo-n2", self.consul.instances)

    def test_stop_deregisters(self) -> None:
        """
        stop() deregisters at once; the others see it; nothing stays
        scheduled.
        """
        first = self.source("n1", 7101)
        second = self.source("n2", 7102)
        first.start()
        second.start()
        self.settle()
        stopped = second.stop()
        self.settle()
        self.successResultOf(stopped)
        self.assertEqual(list(self.consul.instances), ["clustron-demo-n1"])
        self.assertEqual(first.addresses(), {("127.0.0.1", 7101)})
        self.successResultOf(first.stop())
        self.settle()
        self.assertEqual(self.consul.instances, {})
        self.assertEqual(self.consul.waiting, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_other_clusters_and_bad_entries_ignored(self) -> None:
        """
        Instances of another cluster id, without meta, or with a bad port
        are ignored; an empty service address means the node's address.
        """
        self.consul.add_foreign("x", "clustron", {"cluster_id": "other"}, "10.0.0.9", 1)
        self.consul.add_foreign("y", "clustron", {}, "10.0.0.8", 1)
        self.consul.add_foreign("z", "clustron", {"cluster_id": "demo"}, "10.0.0.7", "http")
        self.consul.add_foreign("w", "clustron", {"cluster_id": "demo"}, "", 7200)
        self.consul.add_foreign("v", "other-service", {"cluster_id": "demo"}, "10.0.0.6", 1)
        source = self.source("n1", 7101)
        source.start()
        self.settle()
        self.assertEqual(source.addresses(), {("127.0.0.1", 7101), ("127.0.0.1", 7200)})

    def test_outage_keeps_addresses(self) -> None:
        """
        While the agent is down the addresses stay and attempts back off;
        afterwards everything resumes (re-registering when needed).
        """
        first = self.source("n1", 7101, ttl=3, retry_initial=0.5, retry_max=4)
        second = self.source("n2", 7102, ttl=3)
        first.start()
        second.start()
        self.settle()
        self.consul.set_down(True)
        self.settle()
        self.assertEqual(len(first.addresses()), 2)
        self.assertIn("HTTP 500", first.last_error)
        before = len(self.consul.requests)
        self.advance(20)
        attempts = len(self.consul.requests) - before
        self.assertTrue(10 <= attempts <= 40, attempts)
        self.assertEqual(len(first.addresses()), 2)
        self.assertEqual(first.last_success, 0)
        self.consul.set_down(False)
        self.consul.instances.clear()
        self.advance(10)
        self.assertIsNone(first.last_error)
        self.assertEqual(sorted(self.consul.instances), ["clustron-demo-n1", "clustron-demo-n2"])
        self.assertEqual(len(first.addresses()), 2)

    def test_check_lost_registers_again(self) -> None:
        """
        A pass refused because the agent forgot the check re-registers.
        """
        source = self.source("n1", 7101, ttl=3)
        source.start()
        self.settle()
        del self.consul.instances["clustron-demo-n1"]
        self.advance(1)
        self.assertIn("clustron-demo-n1", self.consul.instances)
        registers = [r for r in self.consul.requests if r[1].endswith("/register")]
        self.assertEqual(len(registers), 2)

    def test_index_going_backwards_resets(self) -> None:
        """
        An X-Consul-Index lower than the one asked for starts over from 0.
        """
        source = self.source("n1", 7101)
        source.start()
        self.settle()
        self.consul.index = 3
        self.consul._changed()
        self.settle()
        self.advance(2)
        gets = [r for r in self.consul.requests if r[0] == "GET"]
        self.assertGreaterEqual(len(gets), 3)
        self.assertEqual(source.addresses(), {("127.0.0.1", 7101)})
        self.assertEqual(len(self.consul.waiting), 1)

    def test_wait_expiry_requeries(self) -> None:
        """
        A blocking query that times out on the server (same index) is asked
        again, no sooner than the minimum spacing.
        """
        source = self.source("n1", 7101, wait=5, check="tcp")
        source.start()
        self.settle()
        gets = len([r for r in self.consul.requests if r[0] == "GET"])
        self.advance(5)
        self.assertEqual(len([r for r in self.consul.requests if r[0] == "GET"]), gets)
        self.advance(1)
        self.assertEqual(len([r for r in self.consul.requests if r[0] == "GET"]), gets + 1)

    def test_tcp_and_http_checks(self) -> None:
        """
        tcp checks name the advertised address, http checks the URL; no
        TTL passes are sent.
        """
        tcp = self.source("n1", 7101, check="tcp", check_interval=2)
        http = self.source("n2", 7102, check="http", check_url="http://10.0.0.2:8101/v1/health")
        tcp.start()
        http.start()
        self.settle()
        self.advance(10)
        check = self.consul.instances["clustron-demo-n1"].registration["Check"]
        self.assertEqual((check["TCP"], check["Interval"]), ("127.0.0.1:7101", "2s"))
        check = self.consul.instances["clustron-demo-n2"].registration["Check"]
        self.assertEqual(check["HTTP"], "http://10.0.0.2:8101/v1/health")
        self.assertEqual([r for r in self.consul.requests if "/check/pass/" in r[1]], [])

    def test_token_sent(self) -> None:
        """
        The ACL token goes in X-Consul-Token on every request.
        """
        source = self.source("n1", 7101, token="s3cret")
        source.start()
        self.settle()
        self.assertEqual(set(self.consul.tokens), {"s3cret"})

    def test_no_healthy_instances_keeps_addresses(self) -> None:
        """
        An answer with no instance of this cluster is an error; the last
        addresses stay.
        """
        source = self.source("n1", 7101, check="tcp")
        source.start()
        self.settle()
        self.consul.instances["clustron-demo-n1"].status = "critical"
        self.consul._changed()
        self.settle()
        self.assertEqual(source.addresses(), {("127.0.0.1", 7101)})
        self.assertIn("no healthy instances of clustron in cluster demo", source.last_error)


class PluginTests(SynchronousTestCase):
    """
    Tests for L{consul_discovery}.
    """

    def test_validate(self) -> None:
        """
        The documented options are valid; every bad one is reported.
        """
        self.assertEqual(
            consul_discovery.validate({"url": "http://127.0.0.1:8500", "service": "clustron"}), []
        )
        self.assertEqual(consul_discovery.validate(None), [])
        problems = dict(
            consul_discovery.validate(
                {"url": "127.0.0.1:8500", "service": "bad name", "check": "http", "ttl": 0,
                 "servce": "x"}
            )
        )
        self.assertEqual(sorted(problems), ["check_url", "servce", "service", "ttl", "url"])
        self.assertIn("did you mean 'service'", problems["servce"])
        self.assertIn("required when check is http", problems["check_url"])
        self.assertEqual(
            consul_discovery.validate({"check_url": "http://x/"}),
            [("check_url", "is only used when check is http")],
        )

    def test_create(self) -> None:
        """
        create() builds a source with a real treq client by default and
        refuses bad options.
        """
        config = NodeConfig("demo", "n1", "127.0.0.1:7101")
        source = consul_discovery.create(Clock(), config, {}, lambda: None)
        self.assertTrue(verifyObject(IDiscovery, source))
        self.assertEqual(source.service_id, "clustron-demo-n1")
        self.assertRaises(
            ConfigError, consul_discovery.create, Clock(), config, {"check": "x"}, lambda: None
        )
        self.assertRaises(
            ConfigError, ConsulSettings.from_options, {"check": "http"}
        )
