"""
The chaos proxy (L{clustron.testkit.proxy}) on the real reactor: plain
Twisted echo servers on loopback behind it, and two real Clustron nodes
where one reaches the other only through it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from clustron.config import NodeConfig
from clustron.node import ClusterNode
from clustron.testkit.proxy import ChaosProxy, LinkFaults

HOST = "127.0.0.1"


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.transport.write(data)


class Client(Protocol):
    """
    Collects what comes back; fires C{waiting} once C{expected} bytes have.
    """

    def __init__(self) -> None:
        self.received = b""
        self.expected = 0
        self.waiting: defer.Deferred[bytes] | None = None
        self.lost: defer.Deferred[list[Failure]] = defer.Deferred()
        self.connected_at = 0.0

    def connectionMade(self) -> None:  # noqa: N802
        self.connected_at = reactor.seconds()

    def expect(self, size: int) -> defer.Deferred[bytes]:
        self.expected = len(self.received) + size
        self.waiting = defer.Deferred()
        self._check()
        return self.waiting

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += data
        self._check()

    def _check(self) -> None:
        if self.waiting is not None and len(self.received) >= self.expected:
            waiting, self.waiting = self.waiting, None
            waiting.callback(self.received)

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        # In a list: a Failure given to callback() would errback.
        self.lost.callback([reason])


def timeout(d: defer.Deferred[Any], seconds: float) -> defer.Deferred[Any]:
    return d.addTimeout(seconds, reactor)


class ProxyTestCase(TestCase):
    """
    An echo server, a chaos proxy in front of it, and a way to connect.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.server = reactor.listenTCP(0, Factory.forProtocol(Echo), interface=HOST)
        self.addCleanup(self.server.stopListening)
        self.proxy = ChaosProxy(reactor, HOST, self.server.getHost().port, seed=3)
        yield self.proxy.listen()
        self.addCleanup(self.proxy.stop)

    @defer.inlineCallbacks
    def connect(self) -> Any:
        connected: defer.Deferred[Client] = defer.Deferred()
        client = Client()

        class OneShot(ClientFactory):
            def buildProtocol(self, addr: Any) -> Client:  # noqa: N802
                reactor.callLater(0, connected.callback, client)
                return client

            def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:  # noqa: N802
                connected.errback(reason)

        connector = reactor.connectTCP(HOST, self.proxy.port, OneShot())
        self.addCleanup(connector.disconnect)
        result = yield timeout(connected, 5)
        return result

    @defer.inlineCallbacks
    def round_trip(self, client: Client, payload: bytes, limit: float = 5.0) -> Any:
        start = reactor.seconds()
        waiting = client.expect(len(payload))
        client.transport.write(payload)
        echoed = yield timeout(waiting, limit)
        return echoed[-len(payload) :], reactor.seconds() - start


class PassThroughTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_relays_both_ways(self) -> Any:
        client = yield self.connect()
        echoed, _ = yield self.round_trip(client, b"hello through the proxy")
        self.assertEqual(echoed, b"hello through the proxy")
        self.assertEqual(self.proxy.connections, 1)

    @defer.inlineCallbacks
    def test_close_propagates(self) -> Any:
        client = yield self.connect()
        yield self.round_trip(client, b"x")
        client.transport.loseConnection()
        (reason,) = yield timeout(client.lost, 5)
        self.assertTrue(reason.check(ConnectionDone))
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(self.proxy.connections, 0)


class LatencyTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_latency_each_way(self) -> Any:
        client = yield self.connect()
        self.proxy.set(latency=0.1)
        _, elapsed = yield self.round_trip(client, b"ping")
        self.assertGreaterEqual(elapsed, 0.19)

    @defer.inlineCallbacks
    def test_jitter_keeps_order(self) -> Any:
        client = yield self.connect()
        self.proxy.set(latency=0.02, jitter=0.02)
        payload = b"".join(b"%04d," % i for i in range(200))
        waiting = client.expect(len(payload))
        for i in range(200):
            client.transport.write(b"%04d," % i)
            if i % 20 == 0:
                yield deferLater(reactor, 0.001, lambda: None)
        echoed = yield timeout(waiting, 5)
        self.assertEqual(echoed, payload)

    @defer.inlineCallbacks
    def test_bandwidth(self) -> Any:
        client = yield self.connect()
        self.proxy.upstream.bandwidth = 40_000
        _, elapsed = yield self.round_trip(client, b"x" * 20_000)
        self.assertGreaterEqual(elapsed, 0.45)


class LossTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_drop_loses_bytes(self) -> Any:
        client = yield self.connect()
        self.proxy.set(loss=1.0)
        client.transport.write(b"gone")
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(client.received, b"")
        self.proxy.set(loss=0.0)
        echoed, _ = yield self.round_trip(client, b"back")
        self.assertEqual(client.received, b"back")
        self.assertEqual(echoed, b"back")

    @defer.inlineCallbacks
    def test_stall_delays_the_stream(self) -> Any:
        client = yield self.connect()
        self.proxy.upstream.loss = 1.0
        self.proxy.upstream.loss_mode = "stall"
        self.proxy.upstream.stall = 0.3
        _, elapsed = yield self.round_trip(client, b"late")
        self.assertGreaterEqual(elapsed, 0.29)
        self.assertEqual(client.received, b"late")

    @defer.inlineCallbacks
    def test_blackhole_then_back(self) -> Any:
        client = yield self.connect()
        self.proxy.set(blackhole=True)
        client.transport.write(b"into the void")
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(client.received, b"")
        self.assertEqual(self.proxy.connections, 1)
        self.proxy.clear()
        echoed, _ = yield self.round_trip(client, b"out again")
        self.assertEqual(echoed, b"out again")


class ResetTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_reset_aborts(self) -> Any:
        client = yield self.connect()
        yield self.round_trip(client, b"x")
        self.assertEqual(self.proxy.reset(), 1)
        (reason,) = yield timeout(client.lost, 5)
        self.assertFalse(reason.check(ConnectionDone), reason)
        self.assertEqual(self.proxy.connections, 0)

    @defer.inlineCallbacks
    def test_reset_probability(self) -> Any:
        client = yield self.connect()
        self.proxy.downstream.reset = 1.0
        client.transport.write(b"boom")
        (reason,) = yield timeout(client.lost, 5)
        self.assertFalse(reason.check(ConnectionDone), reason)


class BackPressureTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_slow_pipe_stops_reading(self) -> Any:
        self.proxy.max_buffer = 64 * 1024
        client = yield self.connect()
        self.proxy.upstream.bandwidth = 200_000
        payload = b"y" * 400_000
        waiting = client.expect(len(payload))
        client.transport.write(payload)
        peak = 0
        while not waiting.called:
            pair = self.proxy._pairs[0]
            peak = max(peak, pair.up._queued_bytes)
            yield deferLater(reactor, 0.05, lambda: None)
        echoed = yield waiting
        self.assertEqual(len(echoed), len(payload))
        # Bounded by max_buffer plus one read.
        self.assertLess(peak, 64 * 1024 + 256 * 1024)


class ControlTests(TestCase):
    def test_bad_settings(self) -> None:
        proxy = ChaosProxy(reactor, HOST, 1)
        self.assertRaises(TypeError, proxy.set, lag=1)
        self.assertRaises(ValueError, proxy.set, loss=2)
        self.assertRaises(ValueError, proxy.set, loss_mode="burn")
        self.assertRaises(ValueError, setattr, proxy.upstream, "bandwidth", 0)
        self.assertEqual(proxy.upstream, LinkFaults())
        self.assertRaises(RuntimeError, lambda: proxy.port)
        self.assertRaises(ValueError, ChaosProxy, reactor, HOST, 0)


class NodesThroughProxyTests(TestCase):
    """
    Two real nodes on loopback, each advertised at the address of its own
    chaos proxy, so every connection between them passes through a proxy:
    they form a cluster under latency and jitter, and a blackhole makes
    each suspect the other.
    """

    @defer.inlineCallbacks
    def free_port(self) -> Any:
        probe = reactor.listenTCP(0, Factory.forProtocol(Echo), interface=HOST)
        port = int(probe.getHost().port)
        yield probe.stopListening()
        return port

    @defer.inlineCallbacks
    def test_cluster_through_proxies(self) -> Any:
        ports = {"n1": (yield self.free_port()), "n2": (yield self.free_port())}
        proxies = {}
        for node_id, port in ports.items():
            proxy = ChaosProxy(reactor, HOST, port, seed=int(node_id[1:]))
            yield proxy.listen()
            self.addCleanup(proxy.stop)
            proxy.set(latency=0.01, jitter=0.005)
            proxies[node_id] = proxy
        seeds = [f"{HOST}:{proxy.port}" for proxy in proxies.values()]
        nodes = {}
        for node_id, port in ports.items():
            config = NodeConfig.from_dict(
                {
                    "cluster_id": "proxy-test",
                    "node_id": node_id,
                    "profile": "local",
                    "listen": f"tcp:{port}:interface={HOST}",
                    "advertise": f"{HOST}:{proxies[node_id].port}",
                    "discovery": {"static": {"seeds": seeds}},
                    "membership": {"bootstrap_expect": 2},
                }
            )
            nodes[node_id] = ClusterNode(config, reactor=reactor)
        for node in nodes.values():
            node.startService()
            self.addCleanup(node.stopService)
        views = yield timeout(
            defer.gatherResults([node.when_joined() for node in nodes.values()]), 15
        )
        self.assertEqual({tuple(v.active_ids()) for v in views}, {("n1", "n2")})
        self.assertGreater(sum(p.connections for p in proxies.values()), 0)
        suspected: defer.Deferred[dict[str, Any]] = defer.Deferred()

        def opinion(kind: str, fields: dict[str, Any]) -> None:
            if (
                kind == "opinion"
                and fields["target"] == "n2"
                and fields["new"] in ("suspect", "dead")
                and not suspected.called
            ):
                suspected.callback(fields)

        nodes["n1"].membership.observers.append(opinion)
        for proxy in proxies.values():
            proxy.set(blackhole=True)
        fields = yield timeout(suspected, 10)
        self.assertIn(fields["new"], ("suspect", "dead"))
