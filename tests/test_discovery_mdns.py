"""
Tests for L{clustron.discovery.mdns} with a fake backend (no network, no
threads); the zeroconf backend is exercised in
C{tests.integration.test_discovery_live}.
"""

from __future__ import annotations

import builtins
import random
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from clustron.discovery import mdns
from clustron.discovery.mdns import (
    PROTOCOL_VERSION,
    SERVICE_TYPE,
    Announcement,
    MdnsDiscovery,
    MdnsSettings,
    announcement_for,
    instance_label,
    mdns_discovery,
)
from clustron.errors import ConfigError
from clustron.interfaces import IDiscovery
from clustron.wire.framing import PROTOCOL_MAJOR, PROTOCOL_MINOR


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
        return host.strip("[]"), int(port)


class FakeBackend:
    """
    An L{mdns.MdnsBackend} driven by the test.

    @ivar opened: announcements passed to C{open}, in order.
    @ivar closes: how many times C{close} was called.
    @ivar results: what the next C{open} calls answer (default success).
    """

    def __init__(self) -> None:
        self.opened: list[Announcement] = []
        self.closes = 0
        self.results: list[Deferred[None]] = []
        self.seen: Any = None
        self.gone: Any = None

    def open(self, announcement: Announcement, seen: Any, gone: Any) -> Deferred[None]:
        self.opened.append(announcement)
        self.seen, self.gone = seen, gone
        return self.results.pop(0) if self.results else succeed(None)

    def close(self) -> Deferred[None]:
        self.closes += 1
        return succeed(None)

    def announce(self, name: str, cluster: str = "demo", addr: str | None = "10.0.0.2:7101",
                 proto: str = PROTOCOL_VERSION, addresses: tuple[str, ...] = ("10.0.0.2",),
                 port: int = 7101, **extra: bytes | None) -> None:
        properties: dict[bytes, bytes | None] = {b"cluster": cluster.encode(),
                                                 b"proto": proto.encode()}
        if addr is not None:
            properties[b"addr"] = addr.encode()
        properties.update({k.encode(): v for k, v in extra.items()})
        self.seen(f"{name}.{SERVICE_TYPE}", properties, list(addresses), port)


class MdnsTests(SynchronousTestCase):
    """
    Tests for L{MdnsDiscovery}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.backend = FakeBackend()
        self.changes = 0
        config = NodeConfig("demo", "n1", "10.0.0.1:7101")
        self.source = MdnsDiscovery(
            self.clock,
            MdnsSettings(retry_initial=1, retry_max=4),
            announcement_for(config, None),
            "demo",
            self.on_change,
            self.backend,
            random.Random(2),
        )

    def on_change(self) -> None:
        self.changes += 1

    def test_interfaces(self) -> None:
        """
        The source provides L{IDiscovery}.
        """
        self.assertTrue(verifyObject(IDiscovery, self.source))

    def test_announces(self) -> None:
        """
        start() opens the backend with this node's announcement.
        """
        self.successResultOf(self.source.start())
        [announcement] = self.backend.opened
        self.assertEqual(announcement.name, f"demo-n1.{SERVICE_TYPE}")
        self.assertEqual(
            dict(announcement.properties),
            {"cluster": "demo", "node": "n1", "proto": f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}",
             "addr": "10.0.0.1:7101"},
        )
        self.assertEqual(announcement.addresses, ("10.0.0.1",))
        self.assertEqual(self.source.last_success, 0)

    def test_instances_come_and_go(self) -> None:
        """
        Instances of this cluster are addresses until they say goodbye.
        """
        self.source.start()
        self.backend.announce("demo-n1", addr="10.0.0.1:7101")
        self.backend.announce("demo-n2", addr="10.0.0.2:7102")
        self.backend.announce("demo-n2", addr="10.0.0.2:7102")
        self.assertEqual(self.source.addresses(), {("10.0.0.1", 7101), ("10.0.0.2", 7102)})
        self.assertEqual(self.changes, 2)
        self.backend.gone(f"demo-n2.{SERVICE_TYPE}")
        self.assertEqual(self.source.addresses(), {("10.0.0.1", 7101)})
        self.backend.gone(f"unknown.{SERVICE_TYPE}")
        self.assertEqual(self.changes, 3)

    def test_last_instance_gone_keeps_it(self) -> None:
        """
        When every instance is gone (this node's own included) the last
        addresses stay.
        """
        self.source.start()
        self.backend.announce("demo-n2")
        self.backend.gone(f"demo-n2.{SERVICE_TYPE}")
        self.assertEqual(self.source.addresses(), {("10.0.0.2", 7101)})

    def test_other_cluster_ignored(self) -> None:
        """
        Instances of another cluster are ignored; one that moves to another
        cluster is dropped.
        """
        self.source.start()
        self.backend.announce("other-n9", cluster="other", addr="10.0.0.9:1")
        self.assertEqual(self.source.addresses(), set())
        self.backend.announce("demo-n1", addr="10.0.0.1:7101")
        self.backend.announce("demo-n2", addr="10.0.0.2:7102")
        self.backend.announce("demo-n2", cluster="other", addr="10.0.0.2:7102")
        self.assertEqual(self.source.addresses(), {("10.0.0.1", 7101)})

    def test_other_protocol_ignored(self) -> None:
        """
        Instances of another protocol major version are ignored; minor
        versions are fine.
        """
        self.source.start()
        self.backend.announce("demo-n2", proto=f"{PROTOCOL_MAJOR + 1}.0")
        self.backend.announce("demo-n3", proto="", addr="10.0.0.3:1")
        self.assertEqual(self.source.addresses(), set())
        self.backend.announce("demo-n4", proto=f"{PROTOCOL_MAJOR}.99", addr="10.0.0.4:1")
        self.assertEqual(self.source.addresses(), {("10.0.0.4", 1)})

    def test_address_fallback_and_bad_records(self) -> None:
        """
        Without an C{addr} record the first address and the port are used;
        unreadable records are ignored.
        """
        self.source.start()
        self.backend.announce("demo-n2", addr=None, addresses=("10.0.0.2", "fd00::2"), port=7102)
        self.backend.announce("demo-n3", addr="garbage")
        self.backend.announce("demo-n4", addr=None, addresses=())
        self.assertEqual(self.source.addresses(), {("10.0.0.2", 7102)})

    def test_open_failure_retried(self) -> None:
        """
        A failed announcement is recorded, the backend closed, and the
        announcement retried with backoff.
        """
        self.backend.results = [fail(OSError("no such interface")), fail(OSError("again"))]
        self.successResultOf(self.source.start())
        self.assertIn("OSError: no such interface", self.source.last_error)
        self.assertEqual(self.backend.closes, 1)
        self.clock.advance(1)
        self.assertEqual(len(self.backend.opened), 2)
        self.assertEqual(self.backend.closes, 2)
        self.clock.advance(2)
        self.assertEqual(len(self.backend.opened), 3)
        self.assertIsNone(self.source.last_error)
        self.assertEqual(self.source.last_success, 3)

    def test_stop(self) -> None:
        """
        stop() closes the backend once; later events are ignored.
        """
        self.source.start()
        self.backend.announce("demo-n2")
        self.successResultOf(self.source.stop())
        self.successResultOf(self.source.stop())
        self.assertEqual(self.backend.closes, 1)
        self.backend.announce("demo-n3", addr="10.0.0.3:1")
        self.backend.gone(f"demo-n2.{SERVICE_TYPE}")
        self.assertEqual(self.source.addresses(), {("10.0.0.2", 7101)})

    def test_stop_during_retry_wait(self) -> None:
        """
        stop() while waiting to retry cancels the retry.
        """
        self.backend.results = [fail(OSError("down"))]
        self.source.start()
        self.successResultOf(self.source.stop())
        self.clock.advance(100)
        self.assertEqual(len(self.backend.opened), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class AnnouncementTests(SynchronousTestCase):
    """
    Tests for L{announcement_for} and L{instance_label}.
    """

    def test_label(self) -> None:
        """
        Labels keep letters, digits, '-' and '_' and fit in 63 bytes.
        """
        self.assertEqual(instance_label("demo", "n1.example"), "demo-n1-example")
        self.assertEqual(len(instance_label("c" * 40, "n" * 40)), 63)
        self.assertEqual(instance_label("d", "nœud"), "d-n-ud")

    def test_ipv6(self) -> None:
        """
        IPv6 hosts are bracketed in C{addr}.
        """
        announcement = announcement_for(NodeConfig("demo", "n1", "[fd00::1]:7101"), None)
        self.assertEqual(announcement.properties["addr"], "[fd00::1]:7101")
        self.assertEqual(announcement.addresses, ("fd00::1",))

    def test_host_name_needs_interfaces(self) -> None:
        """
        A host name is announced with the interface addresses; without them
        it is a configuration error.
        """
        config = NodeConfig("demo", "n1", "node1.example:7101")
        announcement = announcement_for(config, ("192.0.2.1",))
        self.assertEqual(announcement.addresses, ("192.0.2.1",))
        self.assertEqual(announcement.properties["addr"], "node1.example:7101")
        error = self.assertRaises(ConfigError, announcement_for, config, None)
        self.assertEqual(error.errors[0][0], "interfaces")


class PluginTests(SynchronousTestCase):
    """
    Tests for L{mdns_discovery}.
    """

    def test_validate(self) -> None:
        """
        The documented options are valid; bad ones are reported.
        """
        self.assertEqual(mdns_discovery.validate({"interfaces": ["127.0.0.1"]}), [])
        self.assertEqual(mdns_discovery.validate(None), [])
        problems = dict(mdns_discovery.validate({"interfaces": ["eth0"], "interface": []}))
        self.assertEqual(sorted(problems), ["interface", "interfaces[0]"])
        self.assertIn("did you mean 'interfaces'", problems["interface"])

    def test_create_with_backend(self) -> None:
        """
        create() builds a source around the given backend.
        """
        backend = FakeBackend()
        source = mdns_discovery.create(
            Clock(), NodeConfig("demo", "n1", "127.0.0.1:7101"), {}, lambda: None, backend
        )
        self.assertTrue(verifyObject(IDiscovery, source))
        source.start()
        self.assertEqual(backend.opened[0].instance, "demo-n1")
        self.assertRaises(
            ConfigError, mdns_discovery.create, Clock(), None, {"interfaces": "x"}, lambda: None
        )

    def test_missing_zeroconf(self) -> None:
        """
        Without zeroconf, validate() and create() name the extra to install.
        """
        real_import = builtins.__import__

        def no_zeroconf(name: str, *args: Any, **kwargs: Any) -> Any:
            if name == "zeroconf" or name.startswith("zeroconf."):
                raise ImportError(name)
            return real_import(name, *args, **kwargs)

        self.patch(builtins, "__import__", no_zeroconf)
        [(key, reason)] = mdns_discovery.validate({})
        self.assertEqual(key, "")
        self.assertIn("pip install clustron[mdns]", reason)
        error = self.assertRaises(
            ConfigError,
            mdns_discovery.create,
            Clock(),
            NodeConfig("demo", "n1", "127.0.0.1:7101"),
            {},
            lambda: None,
        )
        self.assertIn("pip install clustron[mdns]", str(error))
        self.assertEqual(error.errors, [("", mdns.MISSING_ZEROCONF)])
