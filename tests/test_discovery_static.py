"""
Tests for L{clustron.discovery.static}, and that every built-in discovery
plugin is found by name.
"""

from __future__ import annotations

from unittest import SkipTest

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from clustron.discovery import consul, dns, etcd, mdns, static
from clustron.errors import ConfigError
from clustron.interfaces import IDiscovery, IDiscoveryPlugin


class StaticDiscoveryTests(SynchronousTestCase):
    """
    Tests for the C{static} plugin.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.changes = 0

    def on_change(self) -> None:
        self.changes += 1

    def test_interfaces(self) -> None:
        """
        The plugin and its sources provide their interfaces.
        """
        self.assertTrue(verifyObject(IDiscoveryPlugin, static.static_discovery))
        source = static.static_discovery.create(self.clock, None, {}, self.on_change)
        self.assertTrue(verifyObject(IDiscovery, source))

    def test_seeds_are_the_addresses(self) -> None:
        """
        After start the addresses are the seeds, parsed; on_change runs once.
        """
        source = static.static_discovery.create(
            self.clock, None, {"seeds": ["10.0.0.1:7101", "[fd00::2]:7102"]}, self.on_change
        )
        self.assertEqual(source.addresses(), set())
        self.clock.advance(3)
        self.assertIsNone(source.start())
        self.assertEqual(source.addresses(), {("10.0.0.1", 7101), ("fd00::2", 7102)})
        self.assertEqual(self.changes, 1)
        self.assertEqual(source.last_success, 3)
        self.assertIsNone(source.last_error)
        self.assertIsNone(source.stop())
        self.assertEqual(source.status()["addresses"], ["10.0.0.1:7101", "[fd00::2]:7102"])

    def test_no_seeds(self) -> None:
        """
        No seeds: no addresses and no change.
        """
        source = static.static_discovery.create(self.clock, None, None, self.on_change)
        source.start()
        self.assertEqual((source.addresses(), self.changes), (set(), 0))

    def test_validate(self) -> None:
        """
        Bad seeds and unknown keys are reported by key.
        """
        plugin = static.static_discovery
        self.assertEqual(plugin.validate({"seeds": ["a:1"]}), [])
        problems = plugin.validate({"seeds": ["a:1", "b"], "seed": []})
        self.assertEqual([key for key, _ in problems], ["seed", "seeds[1]"])
        self.assertIn("did you mean 'seeds'?", problems[0][1])

    def test_create_refuses_bad_options(self) -> None:
        """
        create() raises L{ConfigError} on invalid options.
        """
        self.assertRaises(
            ConfigError,
            static.static_discovery.create,
            self.clock,
            None,
            {"seeds": "a:1"},
            self.on_change,
        )


class DiscoverableTests(SynchronousTestCase):
    """
    Every built-in discovery plugin provides the interface, and Twisted's
    plugin system finds it by name through C{twisted/plugins/}.
    """

    PLUGINS = {
        "static": static.static_discovery,
        "dns": dns.dns_discovery,
        "mdns": mdns.mdns_discovery,
        "etcd": etcd.etcd_discovery,
        "consul": consul.consul_discovery,
    }

    def test_plugin_objects(self) -> None:
        """
        Each module-level plugin provides L{IDiscoveryPlugin} and is named
        as its configuration key.
        """
        for name, plugin in self.PLUGINS.items():
            self.assertTrue(verifyObject(IDiscoveryPlugin, plugin))
            self.assertEqual(plugin.name, name)

    def test_discoverable(self) -> None:
        """
        L{clustron.plugins.find} finds each built-in discovery plugin.
        """
        try:
            import twisted.plugins.clustron_builtins  # noqa: F401
        except ImportError as e:
            raise SkipTest(f"twisted/plugins/clustron_builtins.py not importable: {e}") from e
        from clustron.plugins import find

        for name, plugin in self.PLUGINS.items():
            self.assertEqual(type(find("discovery", name)), type(plugin), name)
