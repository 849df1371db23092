"""
Tests for L{clustron.discovery.dns}, against an in-memory resolver.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.names.common import ResolverBase
from twisted.names.error import DNSNameError, DNSQueryTimeoutError, DNSServerError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from clustron.discovery.dns import (
    DnsDiscovery,
    DnsSettings,
    dns_discovery,
    system_nameservers,
)
from clustron.errors import ConfigError
from clustron.interfaces import IDiscovery

SRV_NAME = "_clustron._tcp.peers.example.test"


def srv(name: str, target: str, port: int, ttl: int = 5) -> dns.RRHeader:
    """
    An SRV answer record.
    """
    return dns.RRHeader(name, dns.SRV, dns.IN, ttl, dns.Record_SRV(0, 0, port, target, ttl))


def a(name: str, address: str, ttl: int = 5) -> dns.RRHeader:
    """
    An A record.
    """
    return dns.RRHeader(name, dns.A, dns.IN, ttl, dns.Record_A(address, ttl))


def aaaa(name: str, address: str, ttl: int = 5) -> dns.RRHeader:
    """
    An AAAA record.
    """
    return dns.RRHeader(name, dns.AAAA, dns.IN, ttl, dns.Record_AAAA(address, ttl))


class MemoryResolver(ResolverBase):
    """
    A resolver answering from records held in memory; also usable as the
    authority of a L{twisted.names.server.DNSServerFactory}.

    @ivar records: answer records by lower-case name.
    @ivar additional: additional-section records by lower-case name of the
        query.
    @ivar queries: every C{(name, type, timeout)} asked.
    @ivar error: when set, every lookup fails with it.
    @ivar hold: when set, lookups wait on Deferreds kept in C{held}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[str, list[dns.RRHeader]] = {}
        self.additional: dict[str, list[dns.RRHeader]] = {}
        self.queries: list[tuple[str, int, object]] = []
        self.error: Exception | None = None
        self.hold = False
        self.held: list[tuple[Deferred[object], Deferred[object]]] = []

    def set(self, records: Iterable[dns.RRHeader]) -> None:
        """
        Replace all answer records.
        """
        self.records = {}
        for record in records:
            self.records.setdefault(str(record.name).lower(), []).append(record)

    def _lookup(self, name: bytes, cls: int, type: int, timeout: object) -> Deferred[object]:
        text = name.decode("ascii").rstrip(".").lower()
        self.queries.append((text, type, timeout))
        if self.error is not None:
            return fail(self.error)
        if text not in self.records:
            result: Deferred[object] = fail(DNSNameError(text))
        else:
            answers = [r for r in self.records[text] if r.type == type]
            result = succeed((answers, [], list(self.additional.get(text, []))))
        if self.hold:
            held: Deferred[object] = Deferred()
            self.held.append((held, result))
            return held
        return result

    def release(self) -> None:
        """
        Let every held lookup answer.
        """
        while self.held:
            held, result = self.held.pop(0)
            result.chainDeferred(held)


class DnsTestCase(SynchronousTestCase):
    """
    Shared set-up: a clock, an in-memory resolver, a change counter.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.resolver = MemoryResolver()
        self.built_for: list[list[tuple[str, int]]] = []
        self.changes = 0
        self.system_servers = [("192.0.2.53", 53)]

    def factory(self, servers: list[tuple[str, int]]) -> MemoryResolver:
        self.built_for.append(servers)
        return self.resolver

    def on_change(self) -> None:
        self.changes += 1

    def source(self, **options: object) -> DnsDiscovery:
        options.setdefault("name", SRV_NAME)
        return DnsDiscovery(
            self.clock,
            DnsSettings.from_options(options),
            self.on_change,
            resolver_factory=self.factory,
            nameservers=lambda: list(self.system_servers),
            rng=random.Random(1),
        )

    def three_peers(self) -> None:
        self.resolver.set(
            [
                srv(SRV_NAME, "n1.example.test", 7101),
                srv(SRV_NAME, "n2.example.test", 7102),
                srv(SRV_NAME, "n3.example.test", 7103),
                a("n1.example.test", "10.0.0.1"),
                a("n2.example.test", "10.0.0.2"),
                aaaa("n3.example.test", "fd00::3"),
            ]
        )


class SrvTests(DnsTestCase):
    """
    SRV mode.
    """

    def test_interfaces(self) -> None:
        """
        The source provides L{IDiscovery}.
        """
        self.assertTrue(verifyObject(IDiscovery, self.source()))

    def test_resolves_targets(self) -> None:
        """
        SRV targets are resolved through A and AAAA lookups; start() fires
        after the first round; on_change runs once.
        """
        self.three_peers()
        source = self.source()
        started = source.start()
        self.assertIsNone(self.successResultOf(started))
        self.assertEqual(
            source.addresses(), {("10.0.0.1", 7101), ("10.0.0.2", 7102), ("fd00::3", 7103)}
        )
        self.assertEqual(self.changes, 1)
        self.assertEqual(source.last_success, 0)
        self.assertEqual(self.built_for, [[("192.0.2.53", 53)]])
        self.assertIn((SRV_NAME.lower(), dns.SRV, (2.0,)), self.resolver.queries)

    def test_glue_records_used(self) -> None:
        """
        Addresses in the additional section spare the A/AAAA lookups.
        """
        self.resolver.set([srv(SRV_NAME, "n1.example.test", 7101)])
        self.resolver.additional[SRV_NAME.lower()] = [
            a("n1.example.test", "10.0.0.9"),
            aaaa("n1.example.test", "fd00::9"),
        ]
        source = self.source()
        source.start()
        self.assertEqual(source.addresses(), {("10.0.0.9", 7101), ("fd00::9", 7101)})
        self.assertEqual([q[1] for q in self.resolver.queries], [dns.SRV])

    def test_target_without_addresses_kept_by_name(self) -> None:
        """
        A target whose name has no address records is kept as a name.
        """
        self.resolver.set([srv(SRV_NAME, "elsewhere.example.test", 7101)])
        source = self.source()
        source.start()
        self.assertEqual(source.addresses(), {("elsewhere.example.test", 7101)})

    def test_dot_target_ignored(self) -> None:
        """
        A target of C{.} means "no service here" and gives no address; with
        no other record that is a failure.
        """
        self.resolver.set([srv(SRV_NAME, "", 7101)])
        source = self.source()
        source.start()
        self.assertEqual(source.addresses(), set())
        self.assertIn("no SRV records with a target", source.last_error)

    def test_reresolves_every_interval(self) -> None:
        """
        The name is looked up again after C{interval}; changes are seen.
        """
        self.three_peers()
        source = self.source(interval=5)
        source.start()
        self.resolver.set(
            [srv(SRV_NAME, "n1.example.test", 7101), a("n1.example.test", "10.0.0.1")]
        )
        self.clock.advance(4.9)
        self.assertEqual(len(source.addresses()), 3)
        self.clock.advance(0.1)
        self.assertEqual(source.addresses(), {("10.0.0.1", 7101)})
        self.assertEqual(self.changes, 2)
        self.assertEqual(source.last_success, 5.0)

    def test_no_change_no_callback(self) -> None:
        """
        Rounds that find the same set do not call on_change.
        """
        self.three_peers()
        source = self.source(interval=1)
        source.start()
        self.clock.pump([1] * 5)
        self.assertEqual(self.changes, 1)
        self.assertEqual(source.last_success, 5)

    def test_error_keeps_addresses_and_backs_off(self) -> None:
        """
        Failures keep the last addresses, record the reason, and are retried
        with growing delays; a success resets the delay to C{interval}.
        """
        self.three_peers()
        source = self.source(interval=5, retry_initial=1, retry_max=4)
        source.start()
        self.resolver.error = DNSQueryTimeoutError(0)
        times = []
        count = len(self.resolver.queries)
        for _ in range(60):
            self.clock.advance(0.25)
            if len(self.resolver.queries) > count:
                count = len(self.resolver.queries)
                times.append(self.clock.seconds())
        gaps = [round(b - a, 2) for a, b in zip(times, times[1:], strict=False)]
        self.assertTrue(times[0] == 5.0, times)
        for gap, base in zip(gaps, [1, 2, 4, 4, 4], strict=False):
            self.assertTrue(base / 2 <= gap <= base + 0.25, (gaps, base))
        self.assertEqual(len(source.addresses()), 3)
        self.assertIn("no answer from 192.0.2.53:53 within 2.0 s", source.last_error)
        self.assertIn(SRV_NAME, source.last_error)
        self.assertEqual(source.last_success, 0)
        self.assertEqual(self.changes, 1)
        self.assertGreaterEqual(source.status()["failures"], 5)

        self.resolver.error = None
        self.clock.advance(4)
        recovered = self.clock.seconds()
        self.assertIsNone(source.last_error)
        count = len(self.resolver.queries)
        self.clock.advance(4.9)
        self.assertEqual(len(self.resolver.queries), count)
        self.clock.advance(0.2)
        self.assertGreater(len(self.resolver.queries), count)
        self.assertGreater(source.last_success, recovered)

    def test_nxdomain_keeps_addresses(self) -> None:
        """
        A name that vanishes (NXDOMAIN) is an error: the last addresses
        stay.
        """
        self.three_peers()
        source = self.source(interval=1)
        source.start()
        self.resolver.set([])
        self.clock.advance(1)
        self.assertEqual(len(source.addresses()), 3)
        self.assertIn("no such name (NXDOMAIN)", source.last_error)

    def test_servfail_reason(self) -> None:
        """
        SERVFAIL is named in the reason.
        """
        self.resolver.error = DNSServerError("x")
        source = self.source()
        source.start()
        self.assertIn("server failure (SERVFAIL) at 192.0.2.53:53", source.last_error)
        self.assertIsNone(source.last_success)

    def test_target_lookup_failure_fails_round(self) -> None:
        """
        A target lookup that fails (other than NXDOMAIN) fails the round.
        """
        self.three_peers()
        source = self.source(interval=1)
        source.start()

        def failing(name: str, timeout: object = None) -> Deferred[object]:
            return fail(DNSServerError(name))

        self.resolver.lookupIPV6Address = failing  # type: ignore[method-assign]
        self.clock.advance(1)
        self.assertIn("SERVFAIL", source.last_error)
        self.assertEqual(len(source.addresses()), 3)

    def test_stop_cancels_timer(self) -> None:
        """
        After stop no lookups happen and no calls are pending.
        """
        self.three_peers()
        source = self.source(interval=1)
        source.start()
        self.assertIsNone(self.successResultOf(source.stop()))
        count = len(self.resolver.queries)
        self.clock.advance(10)
        self.assertEqual(len(self.resolver.queries), count)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_waits_for_lookup_in_progress(self) -> None:
        """
        stop() during a lookup fires once the lookup is over; its answer is
        dropped, and nothing is scheduled after it.
        """
        self.three_peers()
        self.resolver.hold = True
        source = self.source(interval=1)
        started = source.start()
        self.assertNoResult(started)
        stopped = source.stop()
        self.assertNoResult(stopped)
        self.resolver.release()
        self.resolver.release()
        self.successResultOf(started)
        self.successResultOf(stopped)
        self.assertEqual((source.addresses(), self.changes), (set(), 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_configured_nameservers(self) -> None:
        """
        Configured nameservers are used instead of the system's, and the
        resolver is built once.
        """
        self.three_peers()
        source = self.source(nameservers=["127.0.0.1:5353", "[::1]", "10.1.1.1"], interval=1)
        source.start()
        self.clock.advance(1)
        self.assertEqual(self.built_for, [[("127.0.0.1", 5353), ("::1", 53), ("10.1.1.1", 53)]])

    def test_system_nameservers_change(self) -> None:
        """
        The system nameservers are read before every lookup; a new list
        gives a new resolver.
        """
        self.three_peers()
        source = self.source(interval=1)
        source.start()
        self.system_servers = [("192.0.2.54", 53)]
        self.clock.advance(1)
        self.assertEqual(self.built_for, [[("192.0.2.53", 53)], [("192.0.2.54", 53)]])

    def test_nameserver_source_failure(self) -> None:
        """
        A failure to read the system nameservers is a failed round.
        """

        def broken() -> list[tuple[str, int]]:
            raise PermissionError("resolv.conf: permission denied")

        source = DnsDiscovery(
            self.clock,
            DnsSettings(name=SRV_NAME),
            self.on_change,
            resolver_factory=self.factory,
            nameservers=broken,
        )
        self.successResultOf(source.start())
        self.assertIn("PermissionError", source.last_error)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)


class AddressModeTests(DnsTestCase):
    """
    A/AAAA mode (C{port} given).
    """

    def test_a_and_aaaa(self) -> None:
        """
        Every A and AAAA record gives an address on the configured port.
        """
        self.resolver.set(
            [
                a("peers.example.test", "10.0.0.1"),
                a("peers.example.test", "10.0.0.2"),
                aaaa("peers.example.test", "fd00::3"),
            ]
        )
        source = self.source(name="peers.example.test", port=7101)
        source.start()
        self.assertEqual(
            source.addresses(), {("10.0.0.1", 7101), ("10.0.0.2", 7101), ("fd00::3", 7101)}
        )
        self.assertEqual(sorted(q[1] for q in self.resolver.queries), [dns.A, dns.AAAA])

    def test_missing_name(self) -> None:
        """
        A missing name is an error naming the name.
        """
        source = self.source(name="peers.example.test", port=7101)
        source.start()
        self.assertEqual(
            source.last_error, "peers.example.test: peers.example.test has no A or AAAA records"
        )


class PluginTests(SynchronousTestCase):
    """
    Tests for L{dns_discovery}: validation and creation.
    """

    def test_validate_good(self) -> None:
        """
        The documented options are valid.
        """
        self.assertEqual(
            dns_discovery.validate(
                {"name": "_clustron._tcp.example.test", "nameservers": ["127.0.0.1:5353"],
                 "interval": 5}
            ),
            [],
        )

    def test_validate_bad(self) -> None:
        """
        Every bad option is reported by key with a reason.
        """
        problems = dict(
            dns_discovery.validate(
                {
                    "nameserver": ["x"],
                    "nameservers": ["127.0.0.1:99999"],
                    "interval": 0,
                    "port": "80",
                    "timeout": -1,
                    "retry_initial": 10,
                    "retry_max": 1,
                }
            )
        )
        self.assertEqual(
            sorted(problems),
            ["interval", "name", "nameserver", "nameservers[0]", "port", "retry_max", "timeout"],
        )
        self.assertIn("did you mean 'nameservers'", problems["nameserver"])
        self.assertEqual(problems["name"], "is required")

    def test_validate_names(self) -> None:
        """
        Bad DNS names are refused with a reason.
        """
        for bad, words in [
            ("a..b", "empty label"),
            ("x" * 64 + ".test", "longer than 63"),
            ("bad name.test", "characters other than"),
            ("a." * 130 + "b", "at most 253"),
            (5, "must be a DNS name"),
        ]:
            [(key, reason)] = dns_discovery.validate({"name": bad})
            self.assertEqual(key, "name")
            self.assertIn(words, reason)
        self.assertEqual(dns_discovery.validate({"name": "_x._tcp.svc.ns.svc.cluster.local."}), [])

    def test_create(self) -> None:
        """
        create() builds a source (with a real twisted.names resolver built
        lazily) and refuses bad options.
        """
        clock = Clock()
        source = dns_discovery.create(clock, None, {"name": "a.example"}, lambda: None)
        self.assertTrue(verifyObject(IDiscovery, source))
        self.assertRaises(ConfigError, dns_discovery.create, clock, None, {}, lambda: None)


class SystemNameserversTests(SynchronousTestCase):
    """
    Tests for L{system_nameservers}.
    """

    def test_parse(self) -> None:
        """
        C{nameserver} lines give servers on port 53; other lines are ignored.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# comment\nsearch ns.svc.cluster.local\nnameserver 10.96.0.10\n"
                    "options ndots:5\nnameserver fd00::10\n")
        self.assertEqual(system_nameservers(path), [("10.96.0.10", 53), ("fd00::10", 53)])

    def test_missing_or_empty(self) -> None:
        """
        A missing file or one without nameservers means the local host.
        """
        self.assertEqual(system_nameservers(self.mktemp()), [("127.0.0.1", 53)])
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("search example\n")
        self.assertEqual(system_nameservers(path), [("127.0.0.1", 53)])
