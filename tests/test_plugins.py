"""
Every shipped plugin is discoverable through Twisted's plugin system and
provides its interface; a third party's plugin is found with no change to
Clustron; an unknown name fails with the list of installed ones.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from clustron import plugins
from clustron.election.bully import BullyStrategy
from clustron.errors import MissingPlugin
from clustron.interfaces import (
    IDiscoveryPlugin,
    IElectionPlugin,
    IElectionStrategy,
    ISerializerPlugin,
    ITransportPlugin,
)

SHIPPED = {
    "transport": {"tcp", "tls", "sim"},
    "serializer": {"json", "msgpack", "protobuf"},
    "discovery": {"static", "dns", "mdns", "etcd", "consul"},
    "election": {"bully"},
}

INTERFACES = {
    "transport": ITransportPlugin,
    "serializer": ISerializerPlugin,
    "discovery": IDiscoveryPlugin,
    "election": IElectionPlugin,
}

HERE = os.path.dirname(os.path.abspath(__file__))


class ShippedPluginTests(SynchronousTestCase):
    """
    The built-in plugins.
    """

    def test_builtins_module_imports(self) -> None:
        """
        The registration module imports (a failing plugin module vanishes
        silently from Twisted's lookup, so import it directly).
        """
        from twisted.plugins import clustron_builtins, clustron_twistd

        self.assertEqual(clustron_twistd.clustron.tapname, "clustron")
        self.assertTrue(clustron_builtins.__all__)

    def test_every_shipped_plugin_discoverable(self) -> None:
        for kind, names in SHIPPED.items():
            installed = plugins.installed(kind)
            self.assertTrue(names <= set(installed), f"{kind}: {sorted(installed)}")
            for name in names:
                plugin = plugins.find(kind, name)
                self.assertTrue(verifyObject(INTERFACES[kind], plugin))
                self.assertEqual(plugin.name, name)

    def test_serializer_wire_ids_unique(self) -> None:
        ids = [p.wire_id for p in plugins.installed("serializer").values()]
        self.assertEqual(len(ids), len(set(ids)))

    def test_bully_strategy(self) -> None:
        strategy = plugins.find("election", "bully").create(None)
        self.assertTrue(verifyObject(IElectionStrategy, strategy))
        self.assertIsInstance(strategy, BullyStrategy)

    def test_missing_plugin_lists_installed(self) -> None:
        with self.assertRaises(MissingPlugin) as raised:
            plugins.find("transport", "carrier-pigeon")
        message = str(raised.exception)
        self.assertIn("carrier-pigeon", message)
        for name in ("sim", "tcp", "tls"):
            self.assertIn(name, message)
        self.assertEqual(raised.exception.kind, "transport")


class ThirdPartyPluginTests(SynchronousTestCase):
    """
    A plugin shipped by another project, in its own twisted/plugins/.
    """

    def test_found_without_changing_clustron(self) -> None:
        env = dict(os.environ)
        root = os.path.dirname(HERE)
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.join(HERE, "plugin_fixture"), root, env.get("PYTHONPATH", "")]
        )
        code = (
            "from clustron import plugins\n"
            "p = plugins.find('serializer', 'acme-reversed-json')\n"
            "print(p.loads(p.dumps({'ok': [1, 2]})))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "{'ok': [1, 2]}")
