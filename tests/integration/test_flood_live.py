"""
A live node on real loopback TCP under a flood of hostile connections: its
view stays, its admin API keeps answering, and its connections drain once
the flood ends.
"""

from __future__ import annotations

import json
import random
from collections.abc import Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from clustron.config import NodeConfig
from clustron.node import ClusterNode

TOKEN = "flood-test-token-" + "x" * 24
CONNECTIONS = 50
FLOOD_SECONDS = 2.0


class Garbage(Protocol):
    """
    Writes random bytes every 10 ms until the node closes the connection
    (a third of the connections write nothing: half-open).
    """

    def __init__(self, factory: GarbageFactory, silent: bool) -> None:
        self.factory = factory
        self.silent = silent
        self.loop: LoopingCall | None = None

    def connectionMade(self) -> None:  # noqa: N802
        self.factory.open += 1
        self.factory.opened += 1
        if not self.silent:
            self.loop = LoopingCall(self.spray)
            self.loop.start(0.01)

    def spray(self) -> None:
        self.transport.write(bytes(self.factory.rng.getrandbits(8) for _ in range(256)))
        self.factory.bytes_sent += 256

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        self.factory.open -= 1
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.factory.again(self.silent)


class GarbageFactory(ClientFactory):
    """
    Keeps C{CONNECTIONS} connections to the node busy until stopped,
    dialling again as soon as one is closed or refused.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.rng = random.Random(5)
        self.running = True
        self.open = 0
        self.opened = 0
        self.bytes_sent = 0
        self.protocols: list[Garbage] = []
        for index in range(CONNECTIONS):
            self.dial(silent=index % 3 == 0)

    def dial(self, silent: bool) -> None:
        if self.running:
            reactor.connectTCP("127.0.0.1", self.port, _Dialled(self, silent), timeout=5)

    def again(self, silent: bool) -> None:
        if self.running:
            reactor.callLater(0, self.dial, silent)

    def stop(self) -> None:
        self.running = False
        for protocol in self.protocols:
            if protocol.transport is not None:
                protocol.transport.abortConnection()


class _Dialled(ClientFactory):
    def __init__(self, flood: GarbageFactory, silent: bool) -> None:
        self.flood = flood
        self.silent = silent

    def buildProtocol(self, addr: Any) -> Garbage:  # noqa: N802
        protocol = Garbage(self.flood, self.silent)
        self.flood.protocols.append(protocol)
        return protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:  # noqa: N802
        self.flood.again(self.silent)


class FloodLiveTests(TestCase):
    """
    One node, bootstrapped alone, flooded by 50 garbage connections.
    """

    timeout = 60

    @inlineCallbacks
    def start_node(self) -> Generator[Any, Any, ClusterNode]:
        config = NodeConfig.from_dict(
            {
                "cluster_id": "flood",
                "node_id": "n1",
                "listen": "tcp:0:interface=127.0.0.1",
                "advertise": "127.0.0.1:7999",
                "profile": "local",
                "admin": {
                    "listen": "tcp:0:interface=127.0.0.1",
                    "tokens": [{"name": "ops", "role": "viewer", "token": TOKEN}],
                },
            }
        )
        node = ClusterNode(config, reactor=reactor)
        yield node.startService()
        self.addCleanup(node.stopService)
        yield node.when_joined()
        assert node.admin is not None
        yield node.admin.when_listening()
        return node

    @inlineCallbacks
    def health(self, node: ClusterNode) -> Generator[Any, Any, tuple[int, dict[str, Any], float]]:
        assert node.admin is not None and node.admin.port is not None
        url = f"http://127.0.0.1:{node.admin.port.getHost().port}/v1/health".encode()
        started = reactor.seconds()
        response = yield Agent(reactor).request(
            b"GET", url, Headers({b"Authorization": [f"Bearer {TOKEN}".encode()]})
        )
        body = yield readBody(response)
        return response.code, json.loads(body), reactor.seconds() - started

    @inlineCallbacks
    def test_garbage_flood(self) -> Generator[Any, Any, None]:
        """
        While 50 connections spray garbage (and some say nothing), the node
        answers C{GET /v1/health} with 200 and keeps its view; afterwards
        every hostile connection is gone and nothing was left pending.
        """
        node = yield self.start_node()
        view = node.view
        assert view is not None
        port = node.mesh.listening_port.getHost().port  # type: ignore[union-attr]
        flood = GarbageFactory(port)
        self.addCleanup(flood.stop)
        answers = []
        deadline = reactor.seconds() + FLOOD_SECONDS
        while reactor.seconds() < deadline:
            code, health, took = yield self.health(node)
            answers.append((code, health["status"], took))
            yield deferLater(reactor, 0.2, lambda: None)
        flood.stop()
        self.assertGreater(flood.opened, CONNECTIONS)
        self.assertGreater(flood.bytes_sent, 0)
        self.assertTrue(answers)
        self.assertEqual({(code, status) for code, status, _ in answers}, {(200, "ok")})
        self.assertLess(max(took for _, _, took in answers), 1.0)
        self.assertEqual(node.view, view)
        self.assertTrue(node.membership.joined)
        registry = node.metrics.registry
        self.assertGreater(
            sum(
                sample.value
                for metric in registry.collect()
                if metric.name == "clustron_frame_errors"
                for sample in metric.samples
                if sample.name.endswith("_total")
            ),
            0,
        )
        # Half-open connections were refused beyond the limit per address.
        self.assertGreater(
            registry.get_sample_value(
                "clustron_protocol_violations_total", {"reason": "too_many_connections"}
            )
            or 0,
            0,
        )
        # Once the attacker is gone, so are its connections (the silent
        # ones after the handshake timeout at the latest).
        settled: Deferred[None] = deferLater(
            reactor, node.config.wire.handshake_timeout + 0.5, lambda: None
        )
        yield settled
        self.assertEqual(node.mesh.peers, {})
        self.assertEqual(node.mesh._pending_inbound, {})
        self.assertEqual(list(node.mesh._protocols), [])
        code, health, _ = yield self.health(node)
        self.assertEqual((code, health["status"]), (200, "ok"))
