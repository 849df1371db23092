"""
Tests for L{clustron.discovery.options} and L{clustron.discovery.status}.
"""

from __future__ import annotations

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from clustron.discovery.options import (
    RETRY_OPTIONS,
    Option,
    check_options,
    check_retry,
    format_host_port,
    host_port,
    http_url,
    ip_address,
    list_of,
    one_of,
    parse_host_port,
    port_number,
    positive_number,
    text,
    with_defaults,
)
from clustron.discovery.status import SourceStatus
from clustron.errors import ConfigError

SPEC = (
    Option("interval", positive_number, default=5.0),
    Option("name", text, required=True),
    Option("mode", one_of("a", "b"), default="a"),
    *RETRY_OPTIONS,
)


class CheckOptionsTests(SynchronousTestCase):
    """
    Tests for L{check_options} and L{with_defaults}.
    """

    def test_valid(self) -> None:
        """
        Valid options have no problems and get their defaults.
        """
        self.assertEqual(check_options({"name": "x"}, SPEC), [])
        self.assertEqual(
            with_defaults({"name": "x", "interval": 2}, SPEC),
            {"interval": 2, "name": "x", "mode": "a", "retry_initial": 0.5, "retry_max": 30.0},
        )

    def test_unknown_key_did_you_mean(self) -> None:
        """
        An unknown key is reported with the closest known key.
        """
        problems = check_options({"name": "x", "intervall": 3}, SPEC)
        self.assertEqual(len(problems), 1)
        key, reason = problems[0]
        self.assertEqual(key, "intervall")
        self.assertIn("did you mean 'interval'?", reason)
        self.assertIn("known: interval, mode, name", reason)

    def test_unknown_key_without_match(self) -> None:
        """
        An unknown key unlike any known key lists the known keys only.
        """
        [(key, reason)] = check_options({"name": "x", "zzzzzz": 1}, SPEC)
        self.assertEqual(key, "zzzzzz")
        self.assertNotIn("did you mean", reason)

    def test_every_problem_reported(self) -> None:
        """
        All problems are reported, not only the first.
        """
        problems = dict(check_options({"interval": -1, "mode": "c", "typo": 1}, SPEC))
        self.assertEqual(sorted(problems), ["interval", "mode", "name", "typo"])
        self.assertIn("greater than 0", problems["interval"])
        self.assertIn("-1", problems["interval"])
        self.assertIn("one of a, b", problems["mode"])
        self.assertEqual(problems["name"], "is required")

    def test_not_a_mapping(self) -> None:
        """
        Options that are not a mapping are one problem on the empty key.
        """
        [(key, reason)] = check_options(["x"], SPEC)
        self.assertEqual(key, "")
        self.assertIn("mapping", reason)

    def test_none_is_empty(self) -> None:
        """
        C{None} options count as an empty mapping.
        """
        self.assertEqual(check_options(None, SPEC), [("name", "is required")])

    def test_with_defaults_raises(self) -> None:
        """
        L{with_defaults} raises L{ConfigError} carrying every problem.
        """
        error = self.assertRaises(ConfigError, with_defaults, {"interval": 0}, SPEC)
        self.assertEqual([key for key, _ in error.errors], ["interval", "name"])

    def test_check_retry(self) -> None:
        """
        C{retry_max} below C{retry_initial} is a problem on C{retry_max}.
        """
        [(key, reason)] = check_retry({"retry_initial": 5, "retry_max": 1})
        self.assertEqual(key, "retry_max")
        self.assertIn("at least retry_initial (5)", reason)
        self.assertEqual(check_retry({"retry_initial": 1, "retry_max": 1}), [])
        [(key, reason)] = check_retry({"retry_max": 0.1})
        self.assertIn("at least retry_initial (0.5)", reason)
        self.assertEqual(check_retry("nonsense"), [])


class CheckerTests(SynchronousTestCase):
    """
    Tests for the value checkers.
    """

    def test_positive_number(self) -> None:
        """
        Booleans, zero, negatives and strings are not positive numbers.
        """
        for bad in (True, 0, -2, "5", None):
            self.assertEqual(len(positive_number("k", bad)), 1, bad)
        self.assertEqual(positive_number("k", 0.01), [])

    def test_port_number(self) -> None:
        """
        Ports are integers from 1 to 65535.
        """
        for bad in (0, 65536, 1.5, "80", False):
            self.assertEqual(len(port_number("p", bad)), 1, bad)
        self.assertEqual(port_number("p", 65535), [])

    def test_list_of(self) -> None:
        """
        List problems are keyed by index; empty lists are refused unless
        allowed.
        """
        check = list_of(host_port())
        self.assertEqual(check("seeds", "a:1"), [("seeds", "must be a list, got str 'a:1'")])
        self.assertEqual(check("seeds", []), [("seeds", "must not be empty")])
        self.assertEqual(list_of(host_port(), allow_empty=True)("seeds", []), [])
        problems = check("seeds", ["a:1", "b", 7])
        self.assertEqual([key for key, _ in problems], ["seeds[1]", "seeds[2]"])
        self.assertIn("has no port", problems[0][1])

    def test_ip_address(self) -> None:
        """
        Only IP literals pass.
        """
        self.assertEqual(ip_address("i", "127.0.0.1"), [])
        self.assertEqual(ip_address("i", "::1"), [])
        self.assertEqual(len(ip_address("i", "localhost")), 1)

    def test_http_url(self) -> None:
        """
        Only http and https URLs with a host and a valid port pass.
        """
        self.assertEqual(http_url("u", "http://127.0.0.1:2379"), [])
        self.assertEqual(http_url("u", "https://etcd.example"), [])
        for bad in ("127.0.0.1:2379", "ftp://x", "http://", 5):
            self.assertEqual(len(http_url("u", bad)), 1, bad)
        self.assertIn("invalid port", http_url("u", "http://x:99999")[0][1])


class HostPortTests(SynchronousTestCase):
    """
    Tests for L{parse_host_port} and L{format_host_port}.
    """

    def test_forms(self) -> None:
        """
        Names, IPv4 and bracketed IPv6 with ports; bare hosts with a default.
        """
        self.assertEqual(parse_host_port("a.example:7101"), ("a.example", 7101))
        self.assertEqual(parse_host_port("[::1]:7101"), ("::1", 7101))
        self.assertEqual(parse_host_port("10.0.0.1", 53), ("10.0.0.1", 53))
        self.assertEqual(parse_host_port("fd00::1", 53), ("fd00::1", 53))
        self.assertEqual(parse_host_port("[fd00::1]", 53), ("fd00::1", 53))

    def test_bad(self) -> None:
        """
        Each malformed form is refused with a reason.
        """
        for bad, words in [
            ("a.example", "has no port"),
            (":80", "has no host"),
            ("a:0", "invalid port"),
            ("a:http", "invalid port"),
            ("[::1", "without closing"),
            ("[::1]x", "not ':port'"),
            ("fd00::1", "write IPv6 as"),
            ("a:b:c", "is not 'host:port'"),
        ]:
            error = self.assertRaises(ValueError, parse_host_port, bad)
            self.assertIn(words, str(error), bad)

    def test_format(self) -> None:
        """
        IPv6 hosts are bracketed.
        """
        self.assertEqual(format_host_port("::1", 5), "[::1]:5")
        self.assertEqual(format_host_port("h", 5), "h:5")


class SourceStatusTests(SynchronousTestCase):
    """
    Tests for L{SourceStatus}.
    """

    def setUp(self) -> None:
        self.changes: list[frozenset[tuple[str, int]]] = []
        self.status = SourceStatus("test", lambda: self.changes.append(self.status.addresses))
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_change_only_on_difference(self) -> None:
        """
        C{on_change} runs when the set differs, not when it is the same.
        """
        self.status.succeeded(1.0, [("a", 1)])
        self.status.succeeded(2.0, {("a", 1)})
        self.assertEqual(self.changes, [frozenset({("a", 1)})])
        self.assertEqual(self.status.last_success, 2.0)

    def test_failure_keeps_addresses(self) -> None:
        """
        A failure records the reason and time and keeps the addresses; a
        success clears the error.
        """
        self.status.succeeded(1.0, [("a", 1)])
        self.status.failed(3.0, "server down", 0.5)
        self.status.failed(4.0, "server still down", 1.0)
        self.assertEqual(self.status.addresses, {("a", 1)})
        self.assertEqual(
            (self.status.last_error, self.status.last_error_at, self.status.failures),
            ("server still down", 4.0, 2),
        )
        self.status.succeeded(5.0)
        self.assertEqual((self.status.last_error, self.status.failures), (None, 0))
        self.assertEqual(self.status.last_error_at, 4.0)

    def test_failure_logged(self) -> None:
        """
        A failure is logged as a warning with its reason and source.
        """
        self.status.failed(3.0, "server down", 0.5)
        [event] = [e for e in self.events if e.get("reason") == "server down"]
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(event["source"], "test")
        self.assertEqual(event["retry_in"], 0.5)

    def test_snapshot(self) -> None:
        """
        The snapshot is JSON-friendly, with IPv6 addresses bracketed.
        """
        self.status.succeeded(1.0, [("::1", 7), ("a", 1)])
        self.assertEqual(
            self.status.snapshot(),
            {
                "source": "test",
                "addresses": ["[::1]:7", "a:1"],
                "last_error": None,
                "last_error_at": None,
                "last_success": 1.0,
                "failures": 0,
            },
        )
