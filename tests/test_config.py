"""
Tests for L{clustron.config}.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import attrs
import yaml
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from clustron import plugins
from clustron.config import (
    PROFILES,
    REDACTED,
    AdminConfig,
    FailureDetectorConfig,
    LoggingConfig,
    MembershipConfig,
    NodeConfig,
    ReloadPlan,
    SecurityConfig,
    TokenConfig,
    derive_advertise,
    diff_for_reload,
    endpoint_problem,
    parse_host_port,
)
from clustron.errors import ConfigError

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")

INSTALLED = {
    "transport": ["tcp", "tls", "sim"],
    "serializer": ["json", "msgpack"],
    "election": ["bully"],
}


def plugin_names(kind: str) -> list[str]:
    """
    A fixed set of installed plugin names, by kind.
    """
    return INSTALLED[kind]


def validate_static(options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """
    A stand-in for the static discovery plugin's validation.
    """
    problems: list[tuple[str, str]] = []
    for key in options:
        if key != "seeds":
            problems.append((key, "unknown key"))
    seeds = options.get("seeds", [])
    if not isinstance(seeds, list):
        return problems + [("seeds", "must be a list")]
    for index, seed in enumerate(seeds):
        try:
            parse_host_port(seed)
        except ValueError as e:
            problems.append((f"seeds[{index}]", str(e)))
    return problems


def validate_dns(options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """
    A stand-in for a second discovery plugin that needs C{name}.
    """
    return [] if isinstance(options.get("name"), str) else [("name", "required")]


VALIDATORS = {"static": validate_static, "dns": validate_dns}

MINIMAL: dict[str, Any] = {"cluster_id": "demo", "node_id": "n1"}


def load(d: Any, **kwargs: Any) -> NodeConfig:
    """
    L{NodeConfig.from_dict} with the fake plugins.
    """
    kwargs.setdefault("discovery_validators", VALIDATORS)
    kwargs.setdefault("plugin_names", plugin_names)
    kwargs.setdefault("environ", {})
    return NodeConfig.from_dict(d, **kwargs)


def with_(**sections: Any) -> dict[str, Any]:
    """
    @return: L{MINIMAL} plus C{sections}.
    """
    return {**MINIMAL, **sections}


class ConfigTestCase(SynchronousTestCase):
    """
    Helpers to assert on validation errors.
    """

    def errors(self, d: Any, **kwargs: Any) -> list[tuple[str, str]]:
        """
        @return: the errors that loading C{d} raises (failing if none).
        """
        e = self.assertRaises(ConfigError, load, d, **kwargs)
        return e.errors

    def assertError(self, d: Any, key: str, reason: str, **kwargs: Any) -> None:
        """
        Loading C{d} fails with exactly one error, C{(key, reason)}.
        """
        self.assertEqual(self.errors(d, **kwargs), [(key, reason)])

    def assertErrorStarts(self, d: Any, key: str, start: str, **kwargs: Any) -> None:
        """
        Loading C{d} fails with exactly one error, at C{key}, whose reason
        starts with C{start}.
        """
        errors = self.errors(d, **kwargs)
        self.assertEqual(len(errors), 1, errors)
        self.assertEqual(errors[0][0], key)
        self.assertTrue(errors[0][1].startswith(start), errors[0][1])

    def write(self, name: str, content: str | bytes, directory: str | None = None) -> str:
        """
        Write a file in a fresh (or the given) directory.

        @return: its path.
        """
        if directory is None:
            directory = os.path.abspath(self.mktemp())
            os.makedirs(directory)
        path = os.path.join(os.path.abspath(directory), name)
        with open(path, "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
        return path


class DefaultsTests(ConfigTestCase):
    """
    What a minimal configuration gets.
    """

    def test_minimal(self) -> None:
        """
        Only C{cluster_id} and C{node_id} are required; the rest defaults.
        """
        c = load(MINIMAL)
        self.assertEqual(c.cluster_id, "demo")
        self.assertEqual(c.node_id, "n1")
        self.assertEqual(c.priority, 0)
        self.assertEqual(c.listen, "tcp:7101:interface=127.0.0.1")
        self.assertEqual(c.advertise, "127.0.0.1:7101")
        self.assertEqual(c.profile, "lan")
        self.assertEqual((c.transport, c.serializer, c.app_version), ("tcp", "json", ""))
        self.assertEqual(c.discovery, {"static": {"seeds": []}})
        self.assertEqual(c.membership, MembershipConfig())
        self.assertEqual(c.membership.quorum, "majority")
        self.assertEqual(c.membership.bootstrap_expect, 1)
        self.assertIsNone(c.membership.expected_members)
        self.assertEqual(c.election.plugin, "bully")
        self.assertEqual(c.wire.max_frame_bytes, 1048576)
        self.assertEqual(c.wire.send_queue_frames, 4096)
        self.assertEqual(c.messaging.max_message_bytes, 16777216)
        self.assertEqual(c.messaging.max_in_flight, 1024)
        self.assertEqual(c.admin, AdminConfig())
        self.assertIsNone(c.admin.listen)
        self.assertEqual(c.logging, LoggingConfig(level="info", format="text"))
        self.assertEqual(c.security.signing, "crc32")
        self.assertEqual(c.security.keys, ())
        self.assertIsNone(c.security.primary_key)
        self.assertIsNone(c.tls)
        self.assertFalse(c.tracing.enabled)
        self.assertEqual(c.tracing.exporter, "none")
        self.assertIsNone(c.source_path)

    def test_directConstructionMatches(self) -> None:
        """
        Building L{NodeConfig} directly gives the same defaults as loading.
        """
        self.assertEqual(NodeConfig(cluster_id="demo", node_id="n1"), load(MINIMAL))

    def test_directConstructionProfile(self) -> None:
        """
        Built directly, the profile still chooses the timing defaults.
        """
        c = NodeConfig(cluster_id="demo", node_id="n1", profile="wan")
        self.assertEqual(c.failure_detector, FailureDetectorConfig.for_profile("wan"))
        self.assertEqual(c.membership.join_timeout, 10.0)

    def test_directConstructionAdvertise(self) -> None:
        """
        Built directly, C{advertise} is derived from C{listen}, and an
        underivable one raises L{ValueError}.
        """
        c = NodeConfig(cluster_id="a", node_id="b", listen="tcp:7200:interface=10.1.2.3")
        self.assertEqual(c.advertise, "10.1.2.3:7200")
        self.assertRaises(ValueError, NodeConfig, cluster_id="a", node_id="b", listen="tcp:7200")

    def test_nullSectionsAreDefaults(self) -> None:
        """
        A section or key given as null (an empty YAML key) is its default.
        """
        c = load(with_(wire=None, admin=None, discovery=None, tls=None, advertise=None))
        self.assertEqual(c, load(MINIMAL))

    def test_advertiseAddress(self) -> None:
        """
        C{advertise_address} splits C{advertise}, unbracketing IPv6.
        """
        self.assertEqual(load(MINIMAL).advertise_address, ("127.0.0.1", 7101))
        c = load(with_(advertise="[::1]:7102"))
        self.assertEqual(c.advertise_address, ("::1", 7102))

    def test_frozen(self) -> None:
        """
        Configurations cannot be changed in place.
        """
        c = load(MINIMAL)
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, c, "node_id", "x")

    def test_discoveryIsCopied(self) -> None:
        """
        The configuration keeps its own copy of the discovery options.
        """
        seeds = ["127.0.0.1:7101"]
        data = with_(discovery={"static": {"seeds": seeds}})
        c = load(data)
        seeds.append("127.0.0.1:7102")
        self.assertEqual(c.discovery, {"static": {"seeds": ["127.0.0.1:7101"]}})


class ProfileTests(ConfigTestCase):
    """
    Profiles choose timing defaults; explicit keys override them.
    """

    def test_profiles(self) -> None:
        """
        Each profile sets the failure detector and membership timings of
        the table.
        """
        table = {
            "local": (0.1, 0.5, 1.0, 0.2, 1.0, 1.0),
            "lan": (0.2, 0.8, 1.6, 0.3, 2.0, 2.0),
            "wan": (1.0, 5.0, 15.0, 2.0, 10.0, 10.0),
        }
        self.assertEqual(set(PROFILES), set(table))
        for profile, expected in table.items():
            c = load(with_(profile=profile))
            fd, m = c.failure_detector, c.membership
            self.assertEqual(
                (
                    fd.heartbeat_interval,
                    fd.suspect_after,
                    fd.dead_after,
                    fd.probe_timeout,
                    m.join_timeout,
                    m.merge_interval,
                ),
                expected,
                profile,
            )

    def test_overrides(self) -> None:
        """
        Keys given explicitly win over the profile; the others keep it.
        """
        c = load(
            with_(
                profile="wan",
                failure_detector={"dead_after": 30, "indirect_probes": 5},
                membership={"merge_interval": 3},
            )
        )
        self.assertEqual(
            c.failure_detector,
            FailureDetectorConfig(
                heartbeat_interval=1.0,
                suspect_after=5.0,
                dead_after=30.0,
                indirect_probes=5,
                probe_timeout=2.0,
            ),
        )
        self.assertEqual((c.membership.join_timeout, c.membership.merge_interval), (10.0, 3.0))
        self.assertIsInstance(c.failure_detector.dead_after, float)

    def test_unknownProfile(self) -> None:
        """
        An unknown profile is named, with a suggestion, and the rest of
        the file is still checked (against the lan defaults).
        """
        errors = self.errors(with_(profile="lam", failure_detector={"dead_after": 0.7}))
        self.assertEqual(
            errors,
            [
                ("profile", "must be one of: lan, wan, local, got 'lam'; did you mean 'lan'?"),
                (
                    "failure_detector.dead_after",
                    "must be greater than suspect_after (0.8, the lan profile's default)",
                ),
            ],
        )

    def test_deadAfterNotAfterSuspect(self) -> None:
        """
        C{dead_after} must be greater than C{suspect_after}.
        """
        self.assertError(
            with_(failure_detector={"suspect_after": 0.8, "dead_after": 0.8}),
            "failure_detector.dead_after",
            "must be greater than suspect_after (0.8)",
        )

    def test_suspectNotAfterHeartbeat(self) -> None:
        """
        C{suspect_after} must be greater than C{heartbeat_interval}.
        """
        self.assertError(
            with_(failure_detector={"heartbeat_interval": 0.5, "suspect_after": 0.4}),
            "failure_detector.suspect_after",
            "must be greater than heartbeat_interval (0.5)",
        )

    def test_overrideAgainstProfile(self) -> None:
        """
        When only one key of a broken pair was given, the error is on that
        key and says where the other value came from.
        """
        self.assertError(
            with_(failure_detector={"heartbeat_interval": 1}),
            "failure_detector.heartbeat_interval",
            "must be less than suspect_after (0.8, the lan profile's default)",
        )
        self.assertError(
            with_(profile="wan", failure_detector={"suspect_after": 20}),
            "failure_detector.suspect_after",
            "must be less than dead_after (15.0, the wan profile's default)",
        )

    def test_probeTimeout(self) -> None:
        """
        C{probe_timeout} must be less than C{suspect_after}.
        """
        self.assertError(
            with_(failure_detector={"probe_timeout": 1.0, "suspect_after": 0.9}),
            "failure_detector.probe_timeout",
            "must be less than suspect_after (0.9)",
        )
        self.assertError(
            with_(profile="local", failure_detector={"probe_timeout": 0.5}),
            "failure_detector.probe_timeout",
            "must be less than suspect_after (0.5, the local profile's default)",
        )

    def test_indirectProbes(self) -> None:
        """
        C{indirect_probes} is an integer of at least 0.
        """
        self.assertEqual(load(with_(failure_detector={"indirect_probes": 0})).failure_detector
                         .indirect_probes, 0)
        self.assertError(
            with_(failure_detector={"indirect_probes": -1}),
            "failure_detector.indirect_probes",
            "must be at least 0, got -1",
        )


class TypeTests(ConfigTestCase):
    """
    Every key has a type, checked with a message that shows the value.
    """

    def test_boolIsNotAnInteger(self) -> None:
        """
        C{true} is not an integer, though Python's bool is an int.
        """
        self.assertError(with_(priority=True), "priority", "must be an integer, got True")
        self.assertError(
            with_(wire={"max_frame_bytes": False}),
            "wire.max_frame_bytes",
            "must be an integer, got False",
        )

    def test_floatIsNotAnInteger(self) -> None:
        """
        Counts and sizes must be integers.
        """
        self.assertError(
            with_(messaging={"dedup_window": 1.5}),
            "messaging.dedup_window",
            "must be an integer, got 1.5",
        )

    def test_notANumber(self) -> None:
        """
        A timing given as a string is named with its value.
        """
        self.assertError(
            with_(failure_detector={"dead_after": "abc"}),
            "failure_detector.dead_after",
            "must be a number, got 'abc'",
        )
        self.assertError(
            with_(wire={"handshake_timeout": True}),
            "wire.handshake_timeout",
            "must be a number, got True",
        )

    def test_timingsPositive(self) -> None:
        """
        Timings must be greater than 0 and finite.
        """
        self.assertError(
            with_(messaging={"request_timeout": 0}),
            "messaging.request_timeout",
            "must be greater than 0, got 0",
        )
        self.assertError(
            with_(membership={"join_timeout": -2.5}),
            "membership.join_timeout",
            "must be greater than 0, got -2.5",
        )
        self.assertError(
            with_(wire={"reconnect_max": float("inf")}),
            "wire.reconnect_max",
            "must be a finite number, got inf",
        )

    def test_intAcceptedAsNumber(self) -> None:
        """
        An integer is a valid number, and is stored as a float.
        """
        c = load(with_(messaging={"request_timeout": 7}))
        self.assertEqual(c.messaging.request_timeout, 7.0)
        self.assertIsInstance(c.messaging.request_timeout, float)

    def test_sizesPositive(self) -> None:
        """
        Sizes and counts must be at least 1.
        """
        self.assertError(
            with_(wire={"send_queue_frames": 0}),
            "wire.send_queue_frames",
            "must be at least 1, got 0",
        )

    def test_notAString(self) -> None:
        """
        A number where a string belongs suggests quoting it.
        """
        self.assertError(
            with_(app_version=1.0),
            "app_version",
            "must be a string, got 1.0 (quote it in YAML)",
        )
        self.assertError(with_(listen=["x"]), "listen", "must be a string, got ['x']")

    def test_emptyString(self) -> None:
        """
        Strings must not be empty, except C{app_version}.
        """
        self.assertError(with_(serializer=""), "serializer", "must not be empty")
        self.assertEqual(load(with_(app_version="")).app_version, "")

    def test_notAMapping(self) -> None:
        """
        A section that is not a mapping is reported once.
        """
        self.assertError(with_(wire=[1, 2]), "wire", "must be a mapping, got a list")
        self.assertError(with_(admin="on"), "admin", "must be a mapping, got a string")

    def test_topLevelNotAMapping(self) -> None:
        """
        The configuration itself must be a mapping.
        """
        self.assertError(["a"], "", "the configuration must be a mapping, got a list")

    def test_required(self) -> None:
        """
        C{cluster_id} and C{node_id} are required; null does not count.
        """
        self.assertEqual(
            self.errors({"node_id": None}),
            [("cluster_id", "required"), ("node_id", "required")],
        )

    def test_identifiers(self) -> None:
        """
        Identifiers are 1-64 letters, digits, '_', '.', '-', starting with a
        letter or digit.
        """
        for good in ("a", "n1", "N-1_x.y", "9" * 64):
            self.assertEqual(load(with_(node_id=good)).node_id, good)
        for bad in ("-n1", "_x", "a" * 65, "a b", "n1/", "é"):
            errors = self.errors(with_(cluster_id=bad))
            self.assertEqual(len(errors), 1, bad)
            self.assertEqual(errors[0][0], "cluster_id")
            self.assertTrue(errors[0][1].startswith("must be 1 to 64 letters"), errors[0][1])
            self.assertIn(repr(bad), errors[0][1])

    def test_longValuesShortened(self) -> None:
        """
        A long value is shortened in the message.
        """
        (error,) = self.errors(with_(priority="x" * 200))
        self.assertLess(len(error[1]), 100)
        self.assertTrue(error[1].endswith("..."), error[1])


class UnknownKeyTests(ConfigTestCase):
    """
    Unknown keys are rejected at every level, with a suggestion.
    """

    def test_topLevel(self) -> None:
        """
        A misspelt top-level key suggests the right one.
        """
        self.assertError(
            with_(proflie="wan"), "proflie", "unknown key; did you mean 'profile'?"
        )

    def test_nested(self) -> None:
        """
        A misspelt key in a section names its full path.
        """
        self.assertError(
            with_(failure_detector={"heartbeat_intervall": 0.1}),
            "failure_detector.heartbeat_intervall",
            "unknown key; did you mean 'heartbeat_interval'?",
        )

    def test_inList(self) -> None:
        """
        A misspelt key in a list item names the item's index.
        """
        d = with_(
            admin={
                "tokens": [
                    {"name": "a", "role": "admin", "token": "x" * 20},
                    {"name": "b", "rol": "viewer", "token": "y" * 20},
                ]
            }
        )
        self.assertEqual(
            self.errors(d),
            [
                ("admin.tokens[1].rol", "unknown key; did you mean 'role'?"),
                ("admin.tokens[1].role", "required"),
            ],
        )

    def test_noSuggestion(self) -> None:
        """
        With nothing close, the valid keys are listed.
        """
        self.assertError(
            with_(logging={"colour": True}),
            "logging.colour",
            "unknown key; valid keys: level, format",
        )

    def test_sourcePathIsNotAKey(self) -> None:
        """
        C{source_path} is set by loading, never read from the file.
        """
        (error,) = self.errors(with_(source_path="/x"))
        self.assertEqual(error[0], "source_path")

    def test_nonStringKey(self) -> None:
        """
        A non-string key (YAML reads C{1:} as an integer) is reported.
        """
        (error,) = self.errors(with_(wire={1: 2}))
        self.assertEqual(error[0], "wire.1")
        self.assertTrue(error[1].startswith("unknown key; valid keys: max_frame_bytes"))


class AllErrorsTests(ConfigTestCase):
    """
    Every problem is reported at once, in the order of the keys.
    """

    def test_everything(self) -> None:
        """
        One load reports problems across every section.
        """
        d = {
            "cluster_id": "demo cluster",
            "priority": "high",
            "listen": "tcp:7101",
            "transport": "udp",
            "profile": "lan",
            "wire": {"max_frame_bytes": -1},
            "discovery": {"static": {"seeds": ["nohost"]}},
            "membership": {"quorum": 0, "bootstrap_expect": 0},
            "failure_detector": {"dead_after": 0.1},
            "election": {"plugin": "raft"},
            "messaging": {"retry_max": 0.1},
            "admin": {"listen": "tcp:8101:interface=127.0.0.1"},
            "logging": {"level": "loud"},
            "security": {"signing": "hmac-sha256"},
            "tracing": {"enabled": "yes"},
            "extra": 1,
        }
        keys = [key for key, _ in self.errors(d)]
        self.assertEqual(
            keys,
            [
                "extra",
                "cluster_id",
                "node_id",
                "priority",
                "transport",
                "advertise",
                "wire.max_frame_bytes",
                "discovery.static.seeds[0]",
                "membership.quorum",
                "membership.bootstrap_expect",
                "failure_detector.dead_after",
                "election.plugin",
                "messaging.retry_max",
                "admin.tokens",
                "logging.level",
                "security.keys",
                "tracing.enabled",
            ],
        )

    def test_rendered(self) -> None:
        """
        The exception's message has one C{key: reason} line per problem.
        """
        e = self.assertRaises(ConfigError, load, {"priority": 1})
        self.assertEqual(str(e), "cluster_id: required\nnode_id: required")


class ListenAdvertiseTests(ConfigTestCase):
    """
    C{listen} is a Twisted server endpoint; C{advertise} is derived from it
    or given.
    """

    def test_unknownEndpointType(self) -> None:
        """
        An endpoint type Twisted does not know is reported once (advertise
        is not reported as well).
        """
        (error,) = self.errors(with_(listen="foo:7101"))
        self.assertEqual(error[0], "listen")
        self.assertIn("not a valid Twisted server endpoint description", error[1])
        self.assertIn("foo", error[1])

    def test_badPort(self) -> None:
        """
        A tcp port must be an integer from 0 to 65535.
        """
        self.assertError(
            with_(listen="tcp:abc:interface=127.0.0.1"),
            "listen",
            "port must be an integer from 0 to 65535, got 'abc'",
        )
        self.assertError(
            with_(listen="tcp:port=70000:interface=127.0.0.1"),
            "listen",
            "port must be an integer from 0 to 65535, got '70000'",
        )
        self.assertErrorStarts(with_(listen="tcp:"), "listen", "tcp endpoint has no port")

    def test_badArgument(self) -> None:
        """
        Arguments the endpoint does not take are reported.
        """
        self.assertErrorStarts(
            with_(listen="tcp:7101:colour=red"),
            "listen",
            "not a valid Twisted server endpoint description",
        )

    def test_empty(self) -> None:
        """
        An empty listen is reported.
        """
        self.assertErrorStarts(with_(listen=" "), "listen", "must not be empty")

    def test_derived(self) -> None:
        """
        C{advertise} is derived from tcp descriptions naming an interface.
        """
        for listen, advertise in [
            ("tcp:7102:interface=127.0.0.1", "127.0.0.1:7102"),
            ("tcp:port=7103:interface=10.0.0.5", "10.0.0.5:7103"),
            ("tcp:interface=10.0.0.5:port=7104", "10.0.0.5:7104"),
            ("tcp6:7105:interface=\\:\\:1", "[::1]:7105"),
        ]:
            self.assertEqual(load(with_(listen=listen)).advertise, advertise)
            self.assertEqual(derive_advertise(listen), advertise)

    def test_notDerivable(self) -> None:
        """
        Without an interface, with a wildcard or port 0, or for another
        endpoint type, C{advertise} must be given.
        """
        for listen in (
            "tcp:7101",
            "tcp:7101:interface=0.0.0.0",
            "tcp6:7101:interface=\\:\\:",
            "tcp:0:interface=127.0.0.1",
            "unix:/tmp/clustron.sock",
        ):
            errors = self.errors(with_(listen=listen))
            self.assertEqual(len(errors), 1, (listen, errors))
            self.assertEqual(errors[0][0], "advertise")
            self.assertTrue(errors[0][1].startswith("required: "), errors[0][1])
            self.assertIn("set advertise", errors[0][1])
            c = load(with_(listen=listen, advertise="node1.example.com:7101"))
            self.assertEqual(c.advertise_address, ("node1.example.com", 7101))

    def test_badAdvertise(self) -> None:
        """
        C{advertise} must be host:port with a port from 1 to 65535 and a
        host peers can dial.
        """
        for advertise, start in [
            ("localhost", "must be 'host:port'"),
            (":7101", "must be 'host:port'"),
            ("h:0", "port must be an integer from 1 to 65535, got '0'"),
            ("h:65536", "port must be an integer from 1 to 65535"),
            ("h:http", "port must be an integer from 1 to 65535"),
            ("::1:7101", "an IPv6 host must be in brackets ('[::1]:7101')"),
            ("[::1]7101", "must be 'host:port' ('[address]:port' for IPv6)"),
            ("my host:7101", "'my host' is not a host name or address"),
            ("0.0.0.0:7101", "must be an address peers can dial, not the wildcard 0.0.0.0"),
            ("[::]:7101", "must be an address peers can dial, not the wildcard ::"),
        ]:
            self.assertErrorStarts(with_(advertise=advertise), "advertise", start)
        self.assertError(with_(advertise=7101), "advertise",
                         "must be a string, got 7101 (quote it in YAML)")

    def test_parseHostPort(self) -> None:
        """
        L{parse_host_port} accepts names, IPv4 and bracketed IPv6.
        """
        self.assertEqual(parse_host_port("a.example:1"), ("a.example", 1))
        self.assertEqual(parse_host_port("10.0.0.1:65535"), ("10.0.0.1", 65535))
        self.assertEqual(parse_host_port("[fe80::1]:7101"), ("fe80::1", 7101))
        self.assertRaises(ValueError, parse_host_port, 5)

    def test_endpointProblem(self) -> None:
        """
        L{endpoint_problem} returns None for valid descriptions.
        """
        self.assertIsNone(endpoint_problem("tcp:7101:interface=127.0.0.1"))
        self.assertIsNone(endpoint_problem("unix:/tmp/x.sock"))
        self.assertIsNotNone(endpoint_problem("sim:1"))

    def test_sim(self) -> None:
        """
        With the sim transport, C{listen} is not a Twisted endpoint and
        C{advertise} is required.
        """
        c = load(with_(transport="sim", listen="sim:7101", advertise="n1:7101"))
        self.assertEqual((c.listen, c.advertise), ("sim:7101", "n1:7101"))
        self.assertError(
            with_(transport="sim", listen="sim:7101"),
            "advertise",
            "required when transport is sim",
        )

    def test_adminSamePort(self) -> None:
        """
        The admin API cannot listen on the cluster port.
        """
        tokens = [{"name": "a", "role": "admin", "token": "t" * 20}]
        self.assertError(
            with_(admin={"listen": "tcp:7101", "tokens": tokens}),
            "admin.listen",
            "uses the same port as listen (7101)",
        )
        c = load(with_(admin={"listen": "tcp:7101:interface=127.0.0.2", "tokens": tokens}))
        self.assertEqual(c.admin.listen, "tcp:7101:interface=127.0.0.2")

    def test_adminListenInvalid(self) -> None:
        """
        C{admin.listen} must be a valid endpoint description.
        """
        tokens = [{"name": "a", "role": "admin", "token": "t" * 20}]
        self.assertErrorStarts(
            with_(admin={"listen": "htp:8101", "tokens": tokens}),
            "admin.listen",
            "not a valid Twisted server endpoint description",
        )


class FakePlugin:
    """
    A discovery plugin that records the options it validated.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.validated: list[Mapping[str, Any]] = []

    def validate(self, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        self.validated.append(options)
        return [("port", "must be given")] if "port" not in options else []


class PluginTests(ConfigTestCase):
    """
    Plugin names (transport, serializer, election, discovery keys) must be
    installed.
    """

    def test_unknownTransport(self) -> None:
        """
        An unknown transport lists the installed ones and suggests one.
        """
        self.assertError(
            with_(transport="tpc"),
            "transport",
            "unknown transport plugin 'tpc'; installed: sim, tcp, tls; did you mean 'tcp'?",
        )

    def test_unknownSerializer(self) -> None:
        """
        An unknown serializer lists the installed ones.
        """
        self.assertError(
            with_(serializer="cbor"),
            "serializer",
            "unknown serializer plugin 'cbor'; installed: json, msgpack",
        )

    def test_unknownElection(self) -> None:
        """
        An unknown election plugin lists the installed ones.
        """
        self.assertError(
            with_(election={"plugin": "bull"}),
            "election.plugin",
            "unknown election plugin 'bull'; installed: bully; did you mean 'bully'?",
        )

    def test_noneInstalled(self) -> None:
        """
        When no plugin of a kind is installed, the message says so.
        """
        self.assertError(
            with_(election={"plugin": "bully"}),
            "election.plugin",
            "unknown election plugin 'bully'; installed: (none)",
            plugin_names=lambda kind: [] if kind == "election" else INSTALLED[kind],
        )

    def test_installedPlugins(self) -> None:
        """
        By default the names come from L{clustron.plugins.installed}, asked
        once per kind.
        """
        asked: list[str] = []

        def installed(kind: str) -> dict[str, Any]:
            asked.append(kind)
            return {name: object() for name in INSTALLED[kind]}

        self.patch(plugins, "installed", installed)
        c = NodeConfig.from_dict(
            with_(transport="sim", advertise="n1:1", serializer="msgpack"),
            discovery_validators=VALIDATORS,
        )
        self.assertEqual((c.transport, c.serializer), ("sim", "msgpack"))
        self.assertEqual(sorted(asked), ["election", "serializer", "transport"])

    def test_discoveryDefaultLookup(self) -> None:
        """
        By default discovery options are checked by the installed discovery
        plugin of that name.
        """
        fake = FakePlugin("fake")

        def installed(kind: str) -> dict[str, Any]:
            if kind == "discovery":
                return {"fake": fake}
            return {name: object() for name in INSTALLED[kind]}

        self.patch(plugins, "installed", installed)
        e = self.assertRaises(
            ConfigError,
            NodeConfig.from_dict,
            with_(discovery={"fake": {"host": "x"}, "fak": {}}),
        )
        self.assertEqual(
            e.errors,
            [
                ("discovery.fake.port", "must be given"),
                (
                    "discovery.fak",
                    "unknown discovery plugin; installed: fake; did you mean 'fake'?",
                ),
            ],
        )
        self.assertEqual(fake.validated, [{"host": "x"}])

    def test_realStaticPlugin(self) -> None:
        """
        With the real static discovery plugin installed, its validation is
        used.
        """
        if "static" not in plugins.installed("discovery"):
            raise SkipTest("the static discovery plugin is not installed")
        e = self.assertRaises(
            ConfigError,
            NodeConfig.from_dict,
            with_(discovery={"static": {"seeds": ["127.0.0.1:7101", 5]}}),
            plugin_names=plugin_names,
        )
        self.assertEqual([key for key, _ in e.errors], ["discovery.static.seeds[1]"])
        c = NodeConfig.from_dict(
            with_(discovery={"static": {"seeds": ["127.0.0.1:7101"]}}),
            plugin_names=plugin_names,
        )
        self.assertEqual(c.discovery, {"static": {"seeds": ["127.0.0.1:7101"]}})


class DiscoveryTests(ConfigTestCase):
    """
    The C{discovery} section: plugin name to options.
    """

    def test_seeds(self) -> None:
        """
        Valid options are kept as given.
        """
        discovery = {"static": {"seeds": ["127.0.0.1:7101"]}, "dns": {"name": "x"}}
        self.assertEqual(load(with_(discovery=discovery)).discovery, discovery)

    def test_pluginErrorsAreRelative(self) -> None:
        """
        A plugin's errors are placed under its key.
        """
        errors = self.errors(
            with_(discovery={"static": {"seeds": ["127.0.0.1:7101", "x"], "sed": 1}})
        )
        self.assertEqual(
            errors,
            [
                ("discovery.static.sed", "unknown key"),
                ("discovery.static.seeds[1]", "must be 'host:port', got 'x'"),
            ],
        )

    def test_unknownPlugin(self) -> None:
        """
        An unknown discovery key lists the installed plugins.
        """
        self.assertError(
            with_(discovery={"statc": {}}),
            "discovery.statc",
            "unknown discovery plugin; installed: dns, static; did you mean 'static'?",
        )
        self.assertError(
            with_(discovery={"consul": {}}),
            "discovery.consul",
            "unknown discovery plugin; installed: dns, static",
        )

    def test_optionsNotMapping(self) -> None:
        """
        A plugin's options must be a mapping; null is an empty one.
        """
        self.assertError(
            with_(discovery={"static": ["127.0.0.1:1"]}),
            "discovery.static",
            "must be a mapping of the plugin's options, got a list",
        )
        self.assertError(with_(discovery={"dns": None}), "discovery.dns.name", "required")

    def test_notMapping(self) -> None:
        """
        The section must be a mapping.
        """
        self.assertError(
            with_(discovery=["static"]),
            "discovery",
            "must be a mapping of plugin name to options, got a list",
        )

    def test_empty(self) -> None:
        """
        An empty section means no discovery.
        """
        self.assertEqual(load(with_(discovery={})).discovery, {})

    def test_validatorRaises(self) -> None:
        """
        A plugin whose validation raises is reported, not propagated.
        """

        def broken(options: Mapping[str, Any]) -> list[tuple[str, str]]:
            raise RuntimeError("oops")

        self.assertError(
            with_(discovery={"static": {}}),
            "discovery.static",
            "the static plugin failed to check its options: RuntimeError('oops')",
            discovery_validators={"static": broken},
        )

    def test_validatorGetsCopy(self) -> None:
        """
        A validator that changes the options it gets does not change the
        input.
        """

        def meddle(options: dict[str, Any]) -> list[tuple[str, str]]:
            options["seeds"].append("x:1")
            return []

        data = with_(discovery={"static": {"seeds": []}})
        load(data, discovery_validators={"static": meddle})
        self.assertEqual(data["discovery"], {"static": {"seeds": []}})


class MembershipTests(ConfigTestCase):
    """
    The C{membership} section.
    """

    def test_quorum(self) -> None:
        """
        Quorum is majority, none or a positive number of members.
        """
        for quorum in ("majority", "none", 1, 3):
            self.assertEqual(load(with_(membership={"quorum": quorum})).membership.quorum, quorum)
        for quorum in (0, -1, True, "most", 2.5):
            self.assertError(
                with_(membership={"quorum": quorum}),
                "membership.quorum",
                "must be majority, none or a number of members (at least 1), "
                f"got {quorum!r}",
            )

    def test_counts(self) -> None:
        """
        C{bootstrap_expect} and C{expected_members} are at least 1.
        """
        self.assertEqual(
            self.errors(with_(membership={"bootstrap_expect": 0, "expected_members": 0})),
            [
                ("membership.bootstrap_expect", "must be at least 1, got 0"),
                ("membership.expected_members", "must be at least 1, got 0"),
            ],
        )
        c = load(with_(membership={"bootstrap_expect": 3, "expected_members": 5}))
        self.assertEqual((c.membership.bootstrap_expect, c.membership.expected_members), (3, 5))

    def test_exceedsExpected(self) -> None:
        """
        Neither C{bootstrap_expect} nor a fixed quorum may exceed
        C{expected_members}.
        """
        self.assertEqual(
            self.errors(
                with_(membership={"bootstrap_expect": 4, "quorum": 4, "expected_members": 3})
            ),
            [
                ("membership.bootstrap_expect", "must not exceed expected_members (3)"),
                ("membership.quorum", "must not exceed expected_members (3)"),
            ],
        )


class WireMessagingTests(ConfigTestCase):
    """
    Cross-field rules of C{wire} and C{messaging}.
    """

    def test_overrides(self) -> None:
        """
        Given values replace the defaults.
        """
        c = load(with_(wire={"max_frame_bytes": 65536 * 4}, messaging={"fragment_bytes": 1024}))
        self.assertEqual(c.wire.max_frame_bytes, 262144)
        self.assertEqual(c.messaging.fragment_bytes, 1024)

    def test_reconnect(self) -> None:
        """
        C{reconnect_max} must be at least C{reconnect_initial}.
        """
        self.assertError(
            with_(wire={"reconnect_initial": 3}),
            "wire.reconnect_max",
            "must be at least reconnect_initial (3.0)",
        )

    def test_queueBytes(self) -> None:
        """
        A send queue must hold at least one largest frame.
        """
        self.assertError(
            with_(wire={"send_queue_bytes": 1000}),
            "wire.send_queue_bytes",
            "must be at least max_frame_bytes (1048576)",
        )

    def test_retry(self) -> None:
        """
        C{retry_max} must be at least C{retry_initial}.
        """
        self.assertError(
            with_(messaging={"retry_initial": 1, "retry_max": 0.5}),
            "messaging.retry_max",
            "must be at least retry_initial (1.0)",
        )

    def test_fragment(self) -> None:
        """
        A fragment must fit in a frame.
        """
        self.assertError(
            with_(wire={"max_frame_bytes": 65536, "send_queue_bytes": 65536}),
            "messaging.fragment_bytes",
            "must be less than wire.max_frame_bytes (65536)",
        )


class AdminTests(ConfigTestCase):
    """
    The C{admin} section and its tokens.
    """

    def admin(self, *tokens: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """
        @return: a configuration whose admin API listens, with C{tokens}.
        """
        admin = {"listen": "tcp:8101:interface=127.0.0.1", "tokens": list(tokens), **kwargs}
        return with_(admin=admin)

    def test_disabledByDefault(self) -> None:
        """
        Without C{listen}, no token is needed.
        """
        self.assertEqual(load(with_(admin={})).admin, AdminConfig())

    def test_listenNeedsToken(self) -> None:
        """
        A listening admin API needs at least one token.
        """
        self.assertError(
            self.admin(),
            "admin.tokens",
            "at least one token is required when admin.listen is set",
        )

    def test_inlineToken(self) -> None:
        """
        An inline token is its own secret.
        """
        c = load(self.admin({"name": "dev", "role": "admin", "token": "dev-token-change-me"}))
        self.assertEqual(
            c.admin.tokens, (TokenConfig(name="dev", role="admin", secret="dev-token-change-me"),)
        )
        self.assertEqual(c.admin.listen, "tcp:8101:interface=127.0.0.1")

    def test_tokenFile(self) -> None:
        """
        A token file is read, relative to the base directory, without
        surrounding whitespace.
        """
        path = self.write("ops.token", "  s3cret-ops\n")
        c = load(
            self.admin({"name": "ops", "role": "operator", "token_file": "ops.token"}),
            base_dir=os.path.dirname(path),
        )
        (token,) = c.admin.tokens
        self.assertEqual((token.secret, token.token_file), ("s3cret-ops", os.path.abspath(path)))

    def test_tokenFileMissing(self) -> None:
        """
        A missing token file is named with its absolute path.
        """
        directory = os.path.abspath(self.mktemp())
        self.assertError(
            self.admin({"name": "ops", "role": "admin", "token_file": "y.token"}),
            "admin.tokens[0].token_file",
            f"file not found: {os.path.join(directory, 'y.token')}",
            base_dir=directory,
        )

    def test_tokenFileEmpty(self) -> None:
        """
        An empty token file is an error.
        """
        path = self.write("empty.token", "\n")
        self.assertError(
            self.admin({"name": "ops", "role": "admin", "token_file": path}),
            "admin.tokens[0].token_file",
            f"file is empty: {path}",
        )

    def test_tokenFileIsDirectory(self) -> None:
        """
        A token file must be a regular file.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.assertError(
            self.admin({"name": "ops", "role": "admin", "token_file": directory}),
            "admin.tokens[0].token_file",
            f"not a regular file: {directory}",
        )

    def test_tokenEnv(self) -> None:
        """
        A token can come from an environment variable.
        """
        c = load(
            self.admin({"name": "ci", "role": "viewer", "token_env": "CLUSTRON_TOKEN"}),
            environ={"CLUSTRON_TOKEN": "from-env\n"},
        )
        (token,) = c.admin.tokens
        self.assertEqual((token.secret, token.token_env), ("from-env", "CLUSTRON_TOKEN"))

    def test_tokenEnvMissing(self) -> None:
        """
        An unset or empty variable is an error naming it.
        """
        d = self.admin({"name": "ci", "role": "viewer", "token_env": "CLUSTRON_TOKEN"})
        self.assertError(
            d, "admin.tokens[0].token_env", "environment variable CLUSTRON_TOKEN is not set"
        )
        self.assertError(
            d,
            "admin.tokens[0].token_env",
            "environment variable CLUSTRON_TOKEN is empty",
            environ={"CLUSTRON_TOKEN": " "},
        )

    def test_osEnviron(self) -> None:
        """
        Without C{environ}, C{os.environ} is used.
        """
        self.patch(os, "environ", {"CLUSTRON_TEST_TOKEN": "abc"})
        c = NodeConfig.from_dict(
            self.admin({"name": "ci", "role": "viewer", "token_env": "CLUSTRON_TEST_TOKEN"}),
            discovery_validators=VALIDATORS,
            plugin_names=plugin_names,
        )
        self.assertEqual(c.admin.tokens[0].secret, "abc")

    def test_exactlyOneSource(self) -> None:
        """
        A token has exactly one of token, token_file, token_env.
        """
        self.assertError(
            self.admin({"name": "a", "role": "admin"}),
            "admin.tokens[0]",
            "exactly one of token, token_file, token_env is required",
        )
        self.assertError(
            self.admin({"name": "a", "role": "admin", "token": "x", "token_env": "X"}),
            "admin.tokens[0]",
            "only one of token, token_file, token_env may be given, got token, token_env",
        )

    def test_role(self) -> None:
        """
        Roles are viewer, operator or admin.
        """
        self.assertError(
            self.admin(
                {"name": "a", "role": "admin", "token": "1" * 20},
                {"name": "b", "role": "root", "token": "2" * 20},
            ),
            "admin.tokens[1].role",
            "must be one of: viewer, operator, admin, got 'root'",
        )

    def test_duplicateName(self) -> None:
        """
        Token names are unique.
        """
        self.assertError(
            self.admin(
                {"name": "ops", "role": "admin", "token": "1" * 20},
                {"name": "ops", "role": "viewer", "token": "2" * 20},
            ),
            "admin.tokens[1].name",
            "duplicate token name 'ops' (also at admin.tokens[0])",
        )

    def test_duplicateNameAmongBroken(self) -> None:
        """
        Duplicate names are found even when an entry has other errors.
        """
        self.assertEqual(
            self.errors(
                self.admin(
                    {"name": "ops", "role": "root", "token": "1" * 20},
                    {"name": "ops", "role": "admin"},
                )
            ),
            [
                ("admin.tokens[0].role", "must be one of: viewer, operator, admin, got 'root'"),
                ("admin.tokens[1]", "exactly one of token, token_file, token_env is required"),
                ("admin.tokens[1].name", "duplicate token name 'ops' (also at admin.tokens[0])"),
            ],
        )

    def test_duplicateSecret(self) -> None:
        """
        Two tokens cannot share a secret (which role would it have?).
        """
        self.assertError(
            self.admin(
                {"name": "a", "role": "admin", "token": "same"},
                {"name": "b", "role": "viewer", "token_env": "T"},
            ),
            "admin.tokens[1]",
            "same secret as admin.tokens[0]; each token must differ",
            environ={"T": "same"},
        )

    def test_secretNotShown(self) -> None:
        """
        A mistyped secret's value is not echoed in the error.
        """
        self.assertError(
            self.admin({"name": "a", "role": "admin", "token": 123456}),
            "admin.tokens[0].token",
            "must be a string, got an integer (quote it in YAML)",
        )

    def test_secretWhitespace(self) -> None:
        """
        An inline token with surrounding whitespace is refused (it would
        never match what a client sends).
        """
        self.assertError(
            self.admin({"name": "a", "role": "admin", "token": "abc "}),
            "admin.tokens[0].token",
            "must not start or end with whitespace",
        )

    def test_tokensNotList(self) -> None:
        """
        C{tokens} is a list of mappings.
        """
        self.assertError(
            with_(admin={"tokens": {"name": "a"}}),
            "admin.tokens",
            "must be a list, got a mapping",
        )
        self.assertError(
            with_(admin={"tokens": ["abc"]}),
            "admin.tokens[0]",
            "must be a mapping, got a string",
        )

    def test_tls(self) -> None:
        """
        Admin TLS needs an existing certificate and key.
        """
        cert = self.write("admin.pem", "cert")
        directory = os.path.dirname(cert)
        self.write("admin.key", "key", directory)
        token = {"name": "a", "role": "admin", "token": "t"}
        c = load(
            self.admin(token, tls={"cert": "admin.pem", "key": "admin.key"}),
            base_dir=directory,
        )
        assert c.admin.tls is not None
        self.assertEqual(c.admin.tls.cert, cert)
        self.assertEqual(c.admin.tls.key, os.path.join(directory, "admin.key"))
        self.assertEqual(
            self.errors(self.admin(token, tls={"cert": "admin.pem"}), base_dir=directory),
            [("admin.tls.key", "required")],
        )

    def test_auditLog(self) -> None:
        """
        The audit log is resolved; its directory must exist.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        c = load(with_(admin={"audit_log": "audit.log"}), base_dir=directory)
        self.assertEqual(c.admin.audit_log, os.path.join(directory, "audit.log"))
        self.assertError(
            with_(admin={"audit_log": "logs/audit.log"}),
            "admin.audit_log",
            f"directory not found: {os.path.join(directory, 'logs')}",
            base_dir=directory,
        )

    def test_reprHidesSecrets(self) -> None:
        """
        The repr of a configuration does not contain token secrets.
        """
        c = load(self.admin({"name": "a", "role": "admin", "token": "very-secret-token"}))
        self.assertNotIn("very-secret-token", repr(c))


class SecurityTests(ConfigTestCase):
    """
    Frame signing and cluster keys.
    """

    def test_hmacNeedsKey(self) -> None:
        """
        hmac-sha256 needs at least one key.
        """
        self.assertError(
            with_(security={"signing": "hmac-sha256"}),
            "security.keys",
            "at least one key is required when signing is hmac-sha256",
        )

    def test_keysFromFileAndEnv(self) -> None:
        """
        Keys are read from files (relative, trailing newline dropped) and
        environment variables; the first is the primary.
        """
        path = self.write("cluster.key", b"0123456789abcdef0123\n")
        c = load(
            with_(
                security={
                    "signing": "hmac-sha256",
                    "keys": [{"file": "cluster.key"}, {"env": "OLD_KEY"}],
                }
            ),
            base_dir=os.path.dirname(path),
            environ={"OLD_KEY": "the-old-cluster-key"},
        )
        self.assertEqual(c.security.keys, (b"0123456789abcdef0123", b"the-old-cluster-key"))
        self.assertEqual(c.security.primary_key, b"0123456789abcdef0123")
        self.assertEqual(c.security.key_sources, (("file", path), ("env", "OLD_KEY")))
        self.assertNotIn("0123456789abcdef0123", repr(c))

    def test_shortKey(self) -> None:
        """
        An hmac-sha256 key has at least 16 bytes.
        """
        self.assertError(
            with_(security={"signing": "hmac-sha256", "keys": [{"env": "K"}]}),
            "security.keys[0]",
            "must be at least 16 bytes, got 5",
            environ={"K": "short"},
        )

    def test_keyErrors(self) -> None:
        """
        Each key has exactly one of file or env, which must resolve.
        """
        missing = os.path.abspath(os.path.join(self.mktemp(), "k"))
        self.assertEqual(
            self.errors(
                with_(
                    security={
                        "signing": "hmac-sha256",
                        "keys": [{}, {"file": missing, "env": "K"}, {"file": missing}, "k"],
                    }
                )
            ),
            [
                ("security.keys[0]", "exactly one of file, env is required"),
                ("security.keys[1]", "only one of file, env may be given, got file, env"),
                ("security.keys[2].file", f"file not found: {missing}"),
                ("security.keys[3]", "must be a mapping, got a string"),
            ],
        )

    def test_signing(self) -> None:
        """
        Signing is crc32, hmac-sha256 or none.
        """
        self.assertEqual(load(with_(security={"signing": "none"})).security.signing, "none")
        self.assertError(
            with_(security={"signing": "hmac-sha1"}),
            "security.signing",
            "must be one of: crc32, hmac-sha256, none, got 'hmac-sha1'; "
            "did you mean 'hmac-sha256'?",
        )


class TlsTests(ConfigTestCase):
    """
    The peer C{tls} section.
    """

    def test_requiredForTls(self) -> None:
        """
        The tls transport needs the tls section.
        """
        self.assertError(
            with_(transport="tls"), "tls", "required when transport is tls (ca, cert and key)"
        )

    def test_paths(self) -> None:
        """
        The paths are resolved and must exist.
        """
        ca = self.write("ca.pem", "x")
        directory = os.path.dirname(ca)
        self.write("n1.pem", "x", directory)
        self.write("n1.key", "x", directory)
        c = load(
            with_(transport="tls", tls={"ca": "ca.pem", "cert": "n1.pem", "key": "n1.key"}),
            base_dir=directory,
        )
        assert c.tls is not None
        self.assertEqual(
            (c.tls.ca, c.tls.cert, c.tls.key),
            tuple(os.path.join(directory, name) for name in ("ca.pem", "n1.pem", "n1.key")),
        )
        self.assertEqual(
            self.errors(
                with_(transport="tls", tls={"ca": "ca.pem", "cert": "nope.pem"}),
                base_dir=directory,
            ),
            [
                ("tls.cert", f"file not found: {os.path.join(directory, 'nope.pem')}"),
                ("tls.key", "required"),
            ],
        )


class LoggingTracingTests(ConfigTestCase):
    """
    The C{logging} and C{tracing} sections.
    """

    def test_logging(self) -> None:
        """
        Levels and formats are checked.
        """
        c = load(with_(logging={"level": "debug", "format": "json"}))
        self.assertEqual(c.logging, LoggingConfig(level="debug", format="json"))
        self.assertEqual(
            self.errors(with_(logging={"level": "warning", "format": "xml"})),
            [
                (
                    "logging.level",
                    "must be one of: debug, info, warn, error, critical, got 'warning'; "
                    "did you mean 'warn'?",
                ),
                ("logging.format", "must be one of: text, json, got 'xml'"),
            ],
        )

    def test_tracing(self) -> None:
        """
        Tracing needs a boolean C{enabled} and an http(s) endpoint only for
        otlp.
        """
        c = load(
            with_(
                tracing={"enabled": True, "exporter": "otlp", "endpoint": "http://otel:4318"}
            )
        )
        self.assertEqual(
            (c.tracing.enabled, c.tracing.exporter, c.tracing.endpoint),
            (True, "otlp", "http://otel:4318"),
        )
        self.assertError(
            with_(tracing={"enabled": "yes"}), "tracing.enabled", "must be true or false, got 'yes'"
        )
        self.assertError(
            with_(tracing={"exporter": "console", "endpoint": "http://x"}),
            "tracing.endpoint",
            "only used when exporter is otlp",
        )
        self.assertError(
            with_(tracing={"exporter": "otlp", "endpoint": "otel:4318"}),
            "tracing.endpoint",
            "must be an http:// or https:// URL, got 'otel:4318'",
        )


class FileTests(ConfigTestCase):
    """
    L{NodeConfig.from_file}.
    """

    def from_file(self, path: str, **kwargs: Any) -> NodeConfig:
        kwargs.setdefault("discovery_validators", VALIDATORS)
        kwargs.setdefault("plugin_names", plugin_names)
        kwargs.setdefault("environ", {})
        return NodeConfig.from_file(path, **kwargs)

    def fileErrors(self, path: str, **kwargs: Any) -> list[tuple[str, str]]:
        return self.assertRaises(ConfigError, self.from_file, path, **kwargs).errors

    def test_yaml(self) -> None:
        """
        A YAML file is loaded and remembered in C{source_path}.
        """
        path = self.write("node.yaml", "cluster_id: demo\nnode_id: n2\npriority: 3\n")
        c = self.from_file(path)
        self.assertEqual((c.node_id, c.priority), ("n2", 3))
        self.assertEqual(c.source_path, os.path.abspath(path))

    def test_yml(self) -> None:
        """
        C{.yml} is YAML too.
        """
        path = self.write("n.yml", "cluster_id: a\nnode_id: b\n")
        self.assertEqual(self.from_file(path).node_id, "b")

    def test_json(self) -> None:
        """
        A C{.json} file is read as JSON.
        """
        path = self.write("node.json", json.dumps({**MINIMAL, "profile": "wan"}))
        self.assertEqual(self.from_file(path).profile, "wan")

    def test_otherExtension(self) -> None:
        """
        Any other extension is read as YAML, which reads JSON as well.
        """
        path = self.write("node.conf", json.dumps(MINIMAL))
        self.assertEqual(self.from_file(path).cluster_id, "demo")

    def test_relativePaths(self) -> None:
        """
        Relative paths in a file are relative to the file's directory, not
        the current directory.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(directory, "secrets"))
        self.write("ops.token", "ops-token\n", os.path.join(directory, "secrets"))
        path = self.write(
            "node.yaml",
            "cluster_id: demo\nnode_id: n1\n"
            "admin:\n  listen: 'tcp:8101:interface=127.0.0.1'\n"
            "  audit_log: audit.log\n"
            "  tokens: [{name: ops, role: admin, token_file: secrets/ops.token}]\n",
            directory,
        )
        c = self.from_file(path)
        self.assertEqual(c.admin.tokens[0].secret, "ops-token")
        self.assertEqual(
            c.admin.tokens[0].token_file, os.path.join(directory, "secrets", "ops.token")
        )
        self.assertEqual(c.admin.audit_log, os.path.join(directory, "audit.log"))

    def test_envToken(self) -> None:
        """
        C{environ} is passed through.
        """
        path = self.write(
            "node.yaml",
            "cluster_id: demo\nnode_id: n1\n"
            "admin: {listen: 'tcp:8101:interface=127.0.0.1',"
            " tokens: [{name: ci, role: viewer, token_env: CLUSTRON_TOKEN}]}\n",
        )
        c = self.from_file(path, environ={"CLUSTRON_TOKEN": "t0k"})
        self.assertEqual(c.admin.tokens[0].secret, "t0k")

    def test_validationErrors(self) -> None:
        """
        Errors in the content are reported by key.
        """
        path = self.write("node.yaml", "cluster_id: demo\nnode_id: n1\nprofile: lna\n")
        self.assertEqual(
            self.fileErrors(path),
            [("profile", "must be one of: lan, wan, local, got 'lna'; did you mean 'lan'?")],
        )

    def test_missing(self) -> None:
        """
        A missing file is one error about the whole file.
        """
        path = os.path.abspath(os.path.join(self.mktemp(), "node.yaml"))
        self.assertEqual(self.fileErrors(path), [("", f"file not found: {path}")])

    def test_badYaml(self) -> None:
        """
        A YAML syntax error gives its line and column.
        """
        path = self.write("node.yaml", "cluster_id: demo\nnode_id: [n1\n")
        (error,) = self.fileErrors(path)
        self.assertEqual(error[0], "")
        self.assertTrue(error[1].startswith("invalid YAML at line 3, column 1: "), error[1])

    def test_badJson(self) -> None:
        """
        A JSON syntax error gives its line and column.
        """
        path = self.write("node.json", '{"cluster_id": "demo",\n "node_id": }')
        self.assertEqual(
            self.fileErrors(path), [("", "invalid JSON at line 2, column 13: Expecting value")]
        )

    def test_duplicateKeys(self) -> None:
        """
        Duplicate keys are errors in YAML and in JSON.
        """
        path = self.write("node.yaml", "cluster_id: demo\nnode_id: n1\nnode_id: n2\n")
        self.assertEqual(
            self.fileErrors(path),
            [("", "invalid YAML at line 3, column 1: found duplicate key 'node_id'")],
        )
        path = self.write("node.json", '{"cluster_id": "a", "node_id": "b", "node_id": "c"}')
        self.assertEqual(
            self.fileErrors(path), [("", "invalid JSON: found duplicate key 'node_id'")]
        )

    def test_yamlMergeKeys(self) -> None:
        """
        YAML merge keys still work with the duplicate check.
        """
        path = self.write(
            "node.yaml",
            "cluster_id: demo\nnode_id: n1\n"
            "wire: &w {max_frame_bytes: 2097152}\n"
            "messaging: {<<: {fragment_bytes: 1024}, dedup_window: 10}\n",
        )
        c = self.from_file(path)
        self.assertEqual((c.messaging.fragment_bytes, c.messaging.dedup_window), (1024, 10))

    def test_empty(self) -> None:
        """
        An empty file is an error.
        """
        path = self.write("node.yaml", "# nothing\n")
        self.assertEqual(
            self.fileErrors(path),
            [("", "the file is empty; expected a mapping of configuration keys")],
        )

    def test_notMapping(self) -> None:
        """
        A file holding a list is an error.
        """
        path = self.write("node.yaml", "- a\n- b\n")
        self.assertEqual(
            self.fileErrors(path), [("", "the configuration must be a mapping, got a list")]
        )

    def test_notUtf8(self) -> None:
        """
        A file that is not UTF-8 is an error.
        """
        path = self.write("node.yaml", b"cluster_id: \xff\n")
        self.assertEqual(self.fileErrors(path), [("", f"{path} is not UTF-8 text")])

    def test_directory(self) -> None:
        """
        A directory cannot be read as a configuration.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        (error,) = self.fileErrors(directory)
        self.assertTrue(error[1].startswith(f"cannot read {directory}: "), error)


class DumpTests(ConfigTestCase):
    """
    L{NodeConfig.to_dict} and L{NodeConfig.to_yaml}.
    """

    def config(self) -> NodeConfig:
        path = self.write("ops.token", "ops-secret\n")
        self.write("cluster.key", "k" * 32, os.path.dirname(path))
        return load(
            with_(
                admin={
                    "listen": "tcp:8101:interface=127.0.0.1",
                    "tokens": [
                        {"name": "dev", "role": "admin", "token": "inline-secret"},
                        {"name": "ops", "role": "operator", "token_file": "ops.token"},
                        {"name": "ci", "role": "viewer", "token_env": "CI_TOKEN"},
                    ],
                },
                security={"signing": "hmac-sha256", "keys": [{"file": "cluster.key"}]},
                discovery={"static": {"seeds": ["127.0.0.1:7101"]}, "dns": {"name": "x"}},
            ),
            base_dir=os.path.dirname(path),
            environ={"CI_TOKEN": "env-secret"},
        )

    def test_redacted(self) -> None:
        """
        Inline tokens are redacted; file and env tokens and keys are shown
        by where they come from; no secret appears.
        """
        c = self.config()
        d = c.to_dict()
        directory = os.path.dirname(c.admin.tokens[1].token_file or "")
        self.assertEqual(
            d["admin"]["tokens"],
            [
                {"name": "dev", "role": "admin", "token": REDACTED},
                {"name": "ops", "role": "operator", "token_file": c.admin.tokens[1].token_file},
                {"name": "ci", "role": "viewer", "token_env": "CI_TOKEN"},
            ],
        )
        self.assertEqual(
            d["security"],
            {"signing": "hmac-sha256", "keys": [{"file": os.path.join(directory, "cluster.key")}]},
        )
        text = c.to_yaml()
        for secret in ("inline-secret", "ops-secret", "env-secret", "k" * 32):
            self.assertNotIn(secret, text)
            self.assertNotIn(secret, json.dumps(d))
        self.assertNotIn("source_path", d)

    def test_unredacted(self) -> None:
        """
        With C{redact=False} inline tokens are shown, so the output loads
        back to an equal configuration.
        """
        c = self.config()
        d = c.to_dict(redact=False)
        self.assertEqual(d["admin"]["tokens"][0]["token"], "inline-secret")
        self.assertEqual(load(d, environ={"CI_TOKEN": "env-secret"}), c)

    def test_yamlRoundTrip(self) -> None:
        """
        L{NodeConfig.to_yaml} is L{NodeConfig.to_dict} as YAML, and loads
        back.
        """
        c = load(with_(profile="wan", failure_detector={"dead_after": 20}))
        self.assertEqual(yaml.safe_load(c.to_yaml()), c.to_dict())
        self.assertEqual(load(yaml.safe_load(c.to_yaml())), c)

    def test_keysWithoutSource(self) -> None:
        """
        Keys built directly, with no recorded source, are only ever shown
        redacted.
        """
        security = SecurityConfig(signing="hmac-sha256", keys=(b"x" * 16,))
        c = NodeConfig(cluster_id="a", node_id="b", security=security)
        self.assertEqual(c.to_dict(redact=False)["security"]["keys"], [REDACTED])

    def test_discoverySecrets(self) -> None:
        """
        Discovery options whose names look secret are redacted.
        """
        c = NodeConfig(
            cluster_id="a",
            node_id="b",
            discovery={
                "consul": {"address": "http://c:8500", "token": "t", "acl_token": "u"},
                "etcd": {"password": "p", "tls": {"client_key": "k", "ca": "ca.pem"}},
            },
        )
        self.assertEqual(
            c.to_dict()["discovery"],
            {
                "consul": {"address": "http://c:8500", "token": REDACTED, "acl_token": REDACTED},
                "etcd": {"password": REDACTED, "tls": {"client_key": "k", "ca": "ca.pem"}},
            },
        )
        self.assertEqual(c.to_dict(redact=False)["discovery"]["consul"]["token"], "t")


class ReloadTests(ConfigTestCase):
    """
    L{diff_for_reload}.
    """

    def test_reloadableMetadata(self) -> None:
        """
        The reloadable keys are marked in the fields' metadata.
        """
        marked = {
            f"{cls.__name__}.{field.name}"
            for cls in (NodeConfig, FailureDetectorConfig, LoggingConfig, AdminConfig)
            for field in attrs.fields(cls)
            if field.metadata.get("reloadable")
        }
        self.assertEqual(
            marked,
            {
                "NodeConfig.discovery",
                "NodeConfig.failure_detector",
                "FailureDetectorConfig.heartbeat_interval",
                "FailureDetectorConfig.suspect_after",
                "FailureDetectorConfig.dead_after",
                "FailureDetectorConfig.indirect_probes",
                "FailureDetectorConfig.probe_timeout",
                "LoggingConfig.level",
                "AdminConfig.tokens",
            },
        )

    def test_same(self) -> None:
        """
        Equal configurations (even from different files) need nothing.
        """
        old = load(MINIMAL)
        new = attrs.evolve(load(MINIMAL), source_path="/elsewhere.yaml")
        plan = diff_for_reload(old, new)
        self.assertEqual(plan, ReloadPlan(reloadable=[], fixed=[]))
        self.assertFalse(plan.changed)
        self.assertFalse(plan.needs_restart)

    def test_reloadable(self) -> None:
        """
        Failure detector timings, log level, tokens and discovery apply
        live.
        """
        old = load(with_(discovery={"static": {"seeds": ["a:1"]}}))
        new = load(
            with_(
                failure_detector={"dead_after": 3, "indirect_probes": 1},
                logging={"level": "debug"},
                admin={"tokens": [{"name": "a", "role": "admin", "token": "x"}]},
                discovery={"static": {"seeds": ["a:1", "b:2"]}, "dns": {"name": "n"}},
            )
        )
        plan = diff_for_reload(old, new)
        self.assertEqual(
            plan.reloadable,
            [
                "discovery.static.seeds",
                "discovery.dns",
                "failure_detector.dead_after",
                "failure_detector.indirect_probes",
                "admin.tokens",
                "logging.level",
            ],
        )
        self.assertEqual(plan.fixed, [])
        self.assertTrue(plan.changed)
        self.assertFalse(plan.needs_restart)

    def test_fixed(self) -> None:
        """
        Other keys need a restart.
        """
        old = load(MINIMAL)
        new = load(
            with_(
                priority=5,
                listen="tcp:7201:interface=127.0.0.1",
                logging={"format": "json"},
                wire={"handshake_timeout": 1},
                admin={"listen": "tcp:8101:interface=127.0.0.1",
                       "tokens": [{"name": "a", "role": "admin", "token": "x"}]},
            )
        )
        plan = diff_for_reload(old, new)
        self.assertEqual(plan.reloadable, ["admin.tokens"])
        self.assertEqual(
            plan.fixed,
            [
                "priority",
                "listen",
                "advertise",
                "wire.handshake_timeout",
                "admin.listen",
                "logging.format",
            ],
        )
        self.assertTrue(plan.needs_restart)

    def test_profile(self) -> None:
        """
        Changing the profile is a restart; its failure detector timings
        alone would reload.
        """
        plan = diff_for_reload(load(MINIMAL), load(with_(profile="wan")))
        self.assertEqual(
            plan.fixed, ["profile", "membership.join_timeout", "membership.merge_interval"]
        )
        self.assertEqual(
            plan.reloadable,
            [
                "failure_detector.heartbeat_interval",
                "failure_detector.suspect_after",
                "failure_detector.dead_after",
                "failure_detector.probe_timeout",
            ],
        )

    def test_optionalSection(self) -> None:
        """
        A section appearing or disappearing is one change at its key.
        """
        cert = self.write("c.pem", "x")
        directory = os.path.dirname(cert)
        self.write("k.pem", "x", directory)
        self.write("ca.pem", "x", directory)
        new = load(
            with_(transport="tls", tls={"ca": "ca.pem", "cert": "c.pem", "key": "k.pem"}),
            base_dir=directory,
        )
        self.assertEqual(diff_for_reload(load(MINIMAL), new).fixed, ["transport", "tls"])

    def test_keyChanged(self) -> None:
        """
        A new cluster key needs a restart, reported once.
        """
        d = with_(security={"signing": "hmac-sha256", "keys": [{"env": "K"}]})
        old = load(d, environ={"K": "a" * 16})
        new = load(d, environ={"K": "b" * 16})
        plan = diff_for_reload(old, new)
        self.assertEqual(plan, ReloadPlan(reloadable=[], fixed=["security.keys"]))

    def test_tokenFileChanged(self) -> None:
        """
        A token file's new content is a (reloadable) change of the tokens.
        """
        path = self.write("t", "one")
        d = with_(admin={"tokens": [{"name": "a", "role": "admin", "token_file": path}]})
        old = load(d)
        with open(path, "w") as f:
            f.write("two")
        self.assertEqual(diff_for_reload(old, load(d)).reloadable, ["admin.tokens"])


class ExampleTests(ConfigTestCase):
    """
    The example configurations in C{examples/} are valid.
    """

    def example(self, name: str) -> NodeConfig:
        return NodeConfig.from_file(
            os.path.join(EXAMPLES, name),
            discovery_validators={"static": validate_static},
            plugin_names=plugin_names,
            environ={},
        )

    def test_node(self) -> None:
        """
        C{node.yaml} is valid and shows every key.
        """
        c = self.example("node.yaml")
        self.assertEqual(c.node_id, "n1")
        with open(os.path.join(EXAMPLES, "node.yaml"), encoding="utf-8") as f:
            raw = yaml.safe_load(f)
        top = {f.name for f in attrs.fields(NodeConfig) if f.name != "source_path"}
        self.assertEqual(set(raw), top)
        for name in ("wire", "membership", "failure_detector", "election", "messaging",
                     "admin", "logging", "security", "tracing"):
            section = getattr(c, name)
            expected = {f.name for f in attrs.fields(type(section))} - {"key_sources"}
            self.assertEqual(set(raw[name]), expected, name)
        self.assertEqual(set(raw["admin"]["tokens"][0]), {"name", "role", "token"})

    def test_node_matches_profile(self) -> None:
        """
        The timings written in C{node.yaml} are the lan profile's.
        """
        c = self.example("node.yaml")
        self.assertEqual(c.failure_detector, FailureDetectorConfig.for_profile("lan"))
        self.assertEqual(c.membership.join_timeout, PROFILES["lan"]["membership"]["join_timeout"])

    def test_cluster(self) -> None:
        """
        C{n1.yaml}..C{n3.yaml} describe one three-node loopback cluster.
        """
        seeds = ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]
        for i in (1, 2, 3):
            c = self.example(f"n{i}.yaml")
            self.assertEqual((c.cluster_id, c.node_id), ("demo", f"n{i}"))
            self.assertEqual(c.listen, f"tcp:710{i}:interface=127.0.0.1")
            self.assertEqual(c.advertise_address, ("127.0.0.1", 7100 + i))
            self.assertEqual(c.discovery, {"static": {"seeds": seeds}})
            self.assertEqual(c.membership.bootstrap_expect, 3)
            self.assertEqual(c.admin.listen, f"tcp:810{i}:interface=127.0.0.1")
            self.assertEqual(
                c.admin.tokens,
                (TokenConfig(name="dev", role="admin", secret="dev-token-change-me"),),
            )

    def test_real_plugins(self) -> None:
        """
        With the built-in plugins installed, the examples validate without
        injected lookups.
        """
        missing = [
            f"{kind} {name}"
            for kind, name in [
                ("transport", "tcp"),
                ("serializer", "json"),
                ("election", "bully"),
                ("discovery", "static"),
            ]
            if name not in plugins.installed(kind)
        ]
        if missing:
            raise SkipTest(f"plugins not installed: {', '.join(missing)}")
        for name in ("node.yaml", "n1.yaml", "n2.yaml", "n3.yaml"):
            NodeConfig.from_file(os.path.join(EXAMPLES, name), environ={})

