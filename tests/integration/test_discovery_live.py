"""
Discovery plugins against real servers on loopback: dnsmasq and a
twisted.names server for C{dns}, etcd (Debian package C{etcd-server}) for
C{etcd}, zeroconf on 127.0.0.1 for C{mdns}, and the fake Consul agent of
L{tests.test_discovery_consul} on a real port for C{consul} (no Consul
package exists here).

Each test skips with a reason when what it needs is missing. Waits are
driven by the sources' C{on_change} callbacks, with deadlines.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Callable, Generator
from typing import Any
from unittest import SkipTest

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.names import dns
from twisted.names.server import DNSServerFactory
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from clustron.discovery.consul import consul_discovery
from clustron.discovery.dns import dns_discovery
from clustron.discovery.etcd import etcd_discovery
from clustron.discovery.mdns import mdns_discovery
from tests.test_discovery_consul import FakeConsul
from tests.test_discovery_dns import MemoryResolver, a, srv

REPOSITORY = FilePath(__file__).parent().parent().parent().path


@attrs.frozen
class NodeConfig:
    """
    The part of L{clustron.config.NodeConfig} discovery reads.
    """

    cluster_id: str
    node_id: str
    host: str
    port: int

    @property
    def advertise_address(self) -> tuple[str, int]:
        return self.host, self.port


def find_binary(name: str, package: str) -> str:
    """
    The path of a program, also looking in the sbin directories.

    @raise SkipTest: naming the Debian package when it is missing.
    """
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        raise SkipTest(f"{name} is not installed (Debian package {package})")
    return path


def free_port() -> int:
    """
    A port free for both TCP and UDP on 127.0.0.1 right now (a server
    started on it may still lose a race; callers retry).
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port found")


def multicast_on_loopback() -> str | None:
    """
    @return: why multicast on 127.0.0.1 does not work here, or C{None}
        when it does.
    """
    group = "224.0.0.251"
    try:
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as e:
        return f"cannot open UDP sockets: {e}"
    with receiver, sender:
        try:
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            receiver.bind(("", 0))
            port = receiver.getsockname()[1]
            receiver.setsockopt(
                socket.IPPROTO_IP,
                socket.IP_ADD_MEMBERSHIP,
                socket.inet_aton(group) + socket.inet_aton("127.0.0.1"),
            )
            sender.setsockopt(
                socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1")
            )
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            receiver.settimeout(1.0)
            sender.sendto(b"clustron-probe", (group, port))
            data, _ = receiver.recvfrom(64)
        except OSError as e:
            return f"multicast on the loopback interface does not work here: {e}"
    return None if data == b"clustron-probe" else "multicast probe returned other data"


class Changes:
    """
    Waits for conditions on discovery sources, checked whenever one of
    them reports a change.
    """

    def __init__(self) -> None:
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []

    def __call__(self) -> None:
        """
        The C{on_change} callback to give sources.
        """
        for waiter in list(self._waiters):
            condition, done = waiter
            if condition():
                self._waiters.remove(waiter)
                done.callback(None)

    def until(self, condition: Callable[[], bool], timeout: float, what: str) -> Deferred[None]:
        """
        @return: a Deferred firing once C{condition()} is true, or failing
            after C{timeout} seconds with C{what} in the message.
        """
        done: Deferred[None] = Deferred()
        if condition():
            done.callback(None)
            return done
        waiter = (condition, done)
        self._waiters.append(waiter)

        def expired() -> None:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                done.errback(Failure(AssertionError(f"timed out after {timeout} s: {what}")))

        timer = reactor.callLater(timeout, expired)
        done.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        return done


class Server(ProcessProtocol):
    """
    A server process started by a test: its output is kept, C{ready} fires
    when a marker appears in it, C{ended} when it exits.
    """

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.output = b""
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.exited = False

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self._seen(data)

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self._seen(data)

    def _seen(self, data: bytes) -> None:
        self.output = (self.output + data)[-20000:]
        if not self.ready.called and self.marker in self.output:
            self.ready.callback(None)

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        self.exited = True
        if not self.ready.called:
            self.ready.errback(
                Failure(RuntimeError(f"exited before ready: {self.output[-2000:]!r}"))
            )
        self.ended.callback(None)

    def stop(self) -> Deferred[None]:
        """
        Terminate the process and wait until it has exited.
        """
        if not self.exited:
            try:
                self.transport.signalProcess("TERM")
            except Exception:
                pass
        return self.ended


class LiveTestCase(TestCase):
    """
    Shared helpers: starting processes, stopping sources at cleanup.
    """

    timeout = 20

    @inlineCallbacks
    def start_server(
        self, args: Callable[[], list[str]], marker: bytes, attempts: int = 3
    ) -> Generator[Any, Any, Server]:
        """
        Start a server process whose arguments name a free port, retrying
        with another port when it exits before being ready (a lost race).
        """
        last = None
        for _ in range(attempts):
            argv = args()
            server = Server(marker)
            reactor.spawnProcess(server, argv[0], argv, env=dict(os.environ))
            self.addCleanup(server.stop)
            try:
                yield server.ready.addTimeout(5, reactor)
            except Exception as e:
                last = e
                yield server.stop()
                continue
            return server
        raise AssertionError(f"{args()[0]} did not start: {last}")

    def stop_at_cleanup(self, source: Any) -> None:
        """
        Stop C{source} after the test, then give closing sockets a moment.
        """

        @inlineCallbacks
        def stop() -> Generator[Any, Any, None]:
            yield source.stop()
            yield deferLater(reactor, 0.1, lambda: None)

        self.addCleanup(stop)


class DnsLiveTests(LiveTestCase):
    """
    The C{dns} plugin against real nameservers.
    """

    @inlineCallbacks
    def test_dnsmasq_srv_records(self) -> Generator[Any, Any, None]:
        """
        SRV records served by dnsmasq resolve to three addresses; A/AAAA
        mode reads the host records.
        """
        dnsmasq = find_binary("dnsmasq", "dnsmasq-base")
        ports: list[int] = []

        def argv() -> list[str]:
            ports.append(free_port())
            args = [
                dnsmasq, "-k", "--conf-file=/dev/null", f"--port={ports[-1]}",
                "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
                "--pid-file", "--log-facility=-",
            ]
            if os.geteuid() == 0:
                args += ["--user=root", "--group=root"]
            for i in (1, 2, 3):
                args += [
                    f"--srv-host=_clustron._tcp.example.test,n{i}.example.test,{7100 + i}",
                    f"--host-record=n{i}.example.test,127.0.0.{i}",
                    f"--host-record=peers.example.test,127.0.0.{i}",
                ]
            return args + ["--host-record=peers.example.test,::1"]

        yield self.start_server(argv, b"started")
        nameserver = f"127.0.0.1:{ports[-1]}"
        changes = Changes()
        source = dns_discovery.create(
            reactor, None,
            {"name": "_clustron._tcp.example.test", "nameservers": [nameserver],
             "interval": 0.5, "timeout": 1, "retry_initial": 0.1, "retry_max": 0.5},
            changes,
        )
        self.stop_at_cleanup(source)
        yield source.start()
        expected = {("127.0.0.1", 7101), ("127.0.0.2", 7102), ("127.0.0.3", 7103)}
        yield changes.until(lambda: source.addresses() == expected, 5, "three SRV addresses")
        self.assertIsNone(source.last_error)

        plain = dns_discovery.create(
            reactor, None,
            {"name": "peers.example.test", "port": 7200, "nameservers": [nameserver],
             "timeout": 1},
            changes,
        )
        self.stop_at_cleanup(plain)
        yield plain.start()
        self.assertEqual(
            plain.addresses(),
            {("127.0.0.1", 7200), ("127.0.0.2", 7200), ("127.0.0.3", 7200), ("::1", 7200)},
        )

    @inlineCallbacks
    def test_twisted_names_server(self) -> Generator[Any, Any, None]:
        """
        Against a twisted.names server on port 0: records are resolved,
        changes are seen, and when the server goes away the addresses stay
        and the error is recorded.
        """
        records = MemoryResolver()
        records.set(
            [srv("_clustron._tcp.live.test", f"n{i}.live.test", 7100 + i) for i in (1, 2, 3)]
            + [a(f"n{i}.live.test", f"127.0.0.{i}") for i in (1, 2, 3)]
        )
        factory = DNSServerFactory(authorities=[records])
        port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        listening = [port]

        def close() -> Any:
            return listening[0].stopListening() if listening else None

        self.addCleanup(close)
        changes = Changes()
        source = dns_discovery.create(
            reactor, None,
            {"name": "_clustron._tcp.live.test",
             "nameservers": [f"127.0.0.1:{port.getHost().port}"],
             "interval": 0.2, "timeout": 0.3, "retry_initial": 0.1, "retry_max": 0.3},
            changes,
        )
        self.stop_at_cleanup(source)
        yield source.start()
        self.assertEqual(
            source.addresses(), {("127.0.0.1", 7101), ("127.0.0.2", 7102), ("127.0.0.3", 7103)}
        )
        records.set(
            [srv("_clustron._tcp.live.test", "n1.live.test", 7101), a("n1.live.test", "127.0.0.1")]
        )
        yield changes.until(lambda: source.addresses() == {("127.0.0.1", 7101)}, 5, "one left")

        yield port.stopListening()
        listening.clear()
        deadline = reactor.seconds() + 5
        while source.last_error is None and reactor.seconds() < deadline:
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertIn("no answer from 127.0.0.1", source.last_error or "")
        self.assertEqual(source.addresses(), {("127.0.0.1", 7101)})


class EtcdLiveTests(LiveTestCase):
    """
    The C{etcd} plugin against a real etcd.
    """

    @inlineCallbacks
    def start_etcd(self) -> Generator[Any, Any, str]:
        etcd = find_binary("etcd", "etcd-server")
        urls: list[str] = []

        def argv() -> list[str]:
            data = self.mktemp()
            client, peer = free_port(), free_port()
            urls.append(f"http://127.0.0.1:{client}")
            return [
                etcd, "--name", "live", "--data-dir", data,
                "--listen-client-urls", urls[-1], "--advertise-client-urls", urls[-1],
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", f"live=http://127.0.0.1:{peer}",
                "--logger=zap", "--log-outputs=stderr",
            ]

        yield self.start_server(argv, b"serving client traffic")
        return urls[-1]

    def source(self, url: str, node: int, changes: Changes, prefix: str) -> Any:
        config = NodeConfig("live", f"n{node}", f"127.0.0.{node}", 7100 + node)
        return etcd_discovery.create(
            reactor, config,
            {"endpoints": [url], "prefix": prefix, "ttl": 2, "timeout": 2,
             "retry_initial": 0.1, "retry_max": 0.5},
            changes,
        )

    @inlineCallbacks
    def test_three_nodes_and_a_clean_stop(self) -> Generator[Any, Any, None]:
        """
        Three sources see each other's registrations; a stopped source's
        key goes at once (its lease is revoked).
        """
        url = yield self.start_etcd()
        changes = Changes()
        prefix = f"/clustron/{uuid.uuid4().hex}"
        sources = [self.source(url, i, changes, prefix) for i in (1, 2, 3)]
        for source in sources:
            self.stop_at_cleanup(source)
            yield source.start()
        everyone = {("127.0.0.1", 7101), ("127.0.0.2", 7102), ("127.0.0.3", 7103)}
        yield changes.until(
            lambda: all(s.addresses() == everyone for s in sources), 5, "all see three"
        )
        yield sources[2].stop()
        yield changes.until(
            lambda: all(s.addresses() == everyone - {("127.0.0.3", 7103)} for s in sources[:2]),
            1.5,
            "n3 gone at once after its stop",
        )

    @inlineCallbacks
    def test_dead_node_expires_with_its_lease(self) -> Generator[Any, Any, None]:
        """
        A node process killed with SIGKILL (no revoke) disappears when its
        lease expires.
        """
        url = yield self.start_etcd()
        changes = Changes()
        prefix = f"/clustron/{uuid.uuid4().hex}"
        watcher = self.source(url, 1, changes, prefix)
        self.stop_at_cleanup(watcher)
        yield watcher.start()
        script = (
            "import sys\n"
            f"sys.path.insert(0, {REPOSITORY!r})\n"
            "from twisted.internet import reactor\n"
            "from clustron.discovery.etcd import etcd_discovery\n"
            "class Config:\n"
            "    cluster_id = 'live'\n"
            "    node_id = 'n9'\n"
            "    advertise_address = ('127.0.0.9', 7109)\n"
            f"source = etcd_discovery.create(reactor, Config(), {{'endpoints': [{url!r}],"
            f" 'prefix': {prefix!r}, 'ttl': 2}}, lambda: None)\n"
            "source.start().addCallback(lambda _: print('registered', flush=True))\n"
            "reactor.run()\n"
        )
        node = Server(b"registered")
        reactor.spawnProcess(node, sys.executable, [sys.executable, "-c", script],
                             env=dict(os.environ))
        self.addCleanup(node.stop)
        yield node.ready.addTimeout(10, reactor)
        yield changes.until(
            lambda: ("127.0.0.9", 7109) in watcher.addresses(), 3, "the watcher sees n9"
        )
        killed_at = reactor.seconds()
        node.transport.signalProcess("KILL")
        yield changes.until(
            lambda: ("127.0.0.9", 7109) not in watcher.addresses(), 8, "n9's lease expires"
        )
        self.assertGreater(reactor.seconds() - killed_at, 0.5)
        self.assertEqual(watcher.addresses(), {("127.0.0.1", 7101)})


class ConsulLiveTests(LiveTestCase):
    """
    The C{consul} plugin over real HTTP against the fake Consul agent.
    """

    @inlineCallbacks
    def test_three_nodes_and_a_dead_one(self) -> Generator[Any, Any, None]:
        """
        Three sources see each other through blocking queries; a clean stop
        deregisters at once; a killed node process turns critical after its
        TTL and disappears.
        """
        agent = FakeConsul(reactor)
        port = reactor.listenTCP(0, Site(agent), interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        self.addCleanup(agent.close)

        url = f"http://127.0.0.1:{port.getHost().port}"
        changes = Changes()
        options = {"url": url, "ttl": 2, "wait": 5, "timeout": 2, "retry_initial": 0.1,
                   "retry_max": 0.5}
        sources = []
        for i in (1, 2, 3):
            config = NodeConfig("live", f"n{i}", f"127.0.0.{i}", 7100 + i)
            sources.append(consul_discovery.create(reactor, config, options, changes))
        for source in sources:
            self.stop_at_cleanup(source)
            yield source.start()
        everyone = {("127.0.0.1", 7101), ("127.0.0.2", 7102), ("127.0.0.3", 7103)}
        yield changes.until(
            lambda: all(s.addresses() == everyone for s in sources), 5, "all see three"
        )
        yield sources[2].stop()
        two = everyone - {("127.0.0.3", 7103)}
        yield changes.until(
            lambda: all(s.addresses() == two for s in sources[:2]), 2, "n3 deregistered"
        )

        script = (
            "import sys\n"
            f"sys.path.insert(0, {REPOSITORY!r})\n"
            "from twisted.internet import reactor\n"
            "from clustron.discovery.consul import consul_discovery\n"
            "class Config:\n"
            "    cluster_id = 'live'\n"
            "    node_id = 'n9'\n"
            "    advertise_address = ('127.0.0.9', 7109)\n"
            f"source = consul_discovery.create(reactor, Config(), {json.dumps(options)},"
            " lambda: None)\n"
            "source.start().addCallback(lambda _: print('registered', flush=True))\n"
            "reactor.run()\n"
        )
        node = Server(b"registered")
        reactor.spawnProcess(node, sys.executable, [sys.executable, "-c", script],
                             env=dict(os.environ))
        self.addCleanup(node.stop)
        yield node.ready.addTimeout(10, reactor)
        yield changes.until(
            lambda: ("127.0.0.9", 7109) in sources[0].addresses(), 3, "n9 seen"
        )
        node.transport.signalProcess("KILL")
        yield changes.until(
            lambda: ("127.0.0.9", 7109) not in sources[0].addresses(), 5, "n9 critical"
        )
        self.assertEqual(sources[0].addresses(), two)


class MdnsLiveTests(LiveTestCase):
    """
    The C{mdns} plugin with zeroconf on the loopback interface.
    """

    @inlineCallbacks
    def test_two_nodes_on_loopback(self) -> Generator[Any, Any, None]:
        """
        Two sources announce on 127.0.0.1 and find each other; a node of
        another cluster is ignored; a stopped node says goodbye.
        """
        try:
            import zeroconf  # noqa: F401
        except ImportError:
            raise SkipTest("zeroconf is not installed (pip install clustron[mdns])") from None
        reason = multicast_on_loopback()
        if reason is not None:
            raise SkipTest(reason)
        cluster = f"live{uuid.uuid4().hex[:8]}"
        changes = Changes()
        options = {"interfaces": ["127.0.0.1"], "resolve_timeout": 2}
        sources = [
            mdns_discovery.create(
                reactor, NodeConfig(cluster, f"n{i}", "127.0.0.1", 7100 + i), options, changes
            )
            for i in (1, 2)
        ]
        stranger = mdns_discovery.create(
            reactor, NodeConfig(cluster + "x", "n3", "127.0.0.1", 7103), options, changes
        )
        for source in [*sources, stranger]:
            self.stop_at_cleanup(source)
        yield stranger.start()
        for source in sources:
            yield source.start()
        both = {("127.0.0.1", 7101), ("127.0.0.1", 7102)}
        yield changes.until(
            lambda: all(s.addresses() == both for s in sources), 8, "both see both"
        )
        self.assertEqual(stranger.addresses(), {("127.0.0.1", 7103)})
        yield sources[1].stop()
        yield changes.until(
            lambda: sources[0].addresses() == {("127.0.0.1", 7101)}, 5, "n2's goodbye seen"
        )
