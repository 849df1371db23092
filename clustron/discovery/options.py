"""
Checking the options of a discovery plugin (the mapping under its key in
``discovery:``).

Each plugin declares its options as a sequence of L{Option}; L{check_options}
reports every problem as a C{(key, reason)} pair (unknown keys get a
did-you-mean), and L{with_defaults} fills in the defaults once the options
are known to be valid.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs

from clustron.errors import ConfigError

#: Problems found in one option: C{(key, reason)} pairs.
Problems = list[tuple[str, str]]

#: Checks one value; called with the key (for nested problem keys) and the value.
Checker = Callable[[str, object], Problems]


@attrs.frozen
class Option:
    """
    One option a plugin accepts.

    @ivar name: the key under the plugin's own key.
    @ivar check: the L{Checker} of its value (not called for a missing value).
    @ivar required: whether the option must be given.
    @ivar default: the value used when the option is missing (ignored when
        C{required}).
    """

    name: str
    check: Checker
    required: bool = False
    default: Any = None


def check_options(options: object, spec: Sequence[Option]) -> Problems:
    """
    Check a plugin's options against its declaration.

    @param options: the mapping under the plugin's key (C{None} counts as an
        empty mapping).
    @param spec: the options the plugin accepts.
    @return: every problem found; the key C{""} stands for the mapping
        itself.
    """
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        return [("", f"must be a mapping of options, got {_kind(options)}")]
    known = {option.name: option for option in spec}
    problems: Problems = []
    for key in options:
        if key not in known:
            problems.append((str(key), _unknown_reason(str(key), sorted(known))))
    for option in spec:
        if option.name in options and options[option.name] is not None:
            problems.extend(option.check(option.name, options[option.name]))
        elif option.required:
            problems.append((option.name, "is required"))
    return problems


def with_defaults(options: Mapping[str, Any] | None, spec: Sequence[Option]) -> dict[str, Any]:
    """
    The options with defaults filled in.

    @raise ConfigError: when L{check_options} finds problems.
    """
    problems = check_options(options, spec)
    if problems:
        raise ConfigError(problems)
    given = dict(options or {})
    return {
        option.name: given[option.name] if given.get(option.name) is not None else option.default
        for option in spec
    }


def _unknown_reason(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown option{hint} (known: {', '.join(known)})"


def _kind(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_number(key: str, value: object) -> Problems:
    """
    A number (of seconds, usually) greater than 0.
    """
    if not _is_number(value) or not value > 0:  # type: ignore[operator]
        return [(key, f"must be a number greater than 0, got {_kind(value)}")]
    return []


def port_number(key: str, value: object) -> Problems:
    """
    A TCP/UDP port number, 1 to 65535.
    """
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        return [(key, f"must be a port number from 1 to 65535, got {_kind(value)}")]
    return []


def text(key: str, value: object) -> Problems:
    """
    A non-empty string.
    """
    if not isinstance(value, str) or not value:
        return [(key, f"must be a non-empty string, got {_kind(value)}")]
    return []


def one_of(*choices: str) -> Checker:
    """
    @return: a checker accepting exactly one of C{choices}.
    """

    def check(key: str, value: object) -> Problems:
        if value not in choices:
            return [(key, f"must be one of {', '.join(choices)}; got {_kind(value)}")]
        return []

    return check


def list_of(item: Checker, allow_empty: bool = False) -> Checker:
    """
    @return: a checker of a list whose every item passes C{item}; problems
        with items are keyed C{key[index]}.
    """

    def check(key: str, value: object) -> Problems:
        if not isinstance(value, (list, tuple)):
            return [(key, f"must be a list, got {_kind(value)}")]
        if not value and not allow_empty:
            return [(key, "must not be empty")]
        problems: Problems = []
        for index, element in enumerate(value):
            problems.extend(item(f"{key}[{index}]", element))
        return problems

    return check


def host_port(default_port: int | None = None) -> Checker:
    """
    @return: a checker of a C{"host:port"} string (C{"[v6]:port"} for IPv6);
        the port may be left out when C{default_port} is given.
    """

    def check(key: str, value: object) -> Problems:
        if not isinstance(value, str):
            return [(key, f"must be a 'host:port' string, got {_kind(value)}")]
        try:
            parse_host_port(value, default_port)
        except ValueError as e:
            return [(key, str(e))]
        return []

    return check


def ip_address(key: str, value: object) -> Problems:
    """
    An IPv4 or IPv6 address literal.
    """
    if isinstance(value, str):
        try:
            ipaddress.ip_address(value)
        except ValueError:
            pass
        else:
            return []
    return [(key, f"must be an IP address such as '127.0.0.1', got {_kind(value)}")]


def http_url(key: str, value: object) -> Problems:
    """
    An C{http://} or C{https://} URL with a host.
    """
    if isinstance(value, str):
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 (raises ValueError on a bad port)
        except ValueError:
            return [(key, f"has an invalid port: {value!r}")]
        if parts.scheme in ("http", "https") and parts.hostname:
            return []
    return [(key, f"must be an http:// or https:// URL, got {_kind(value)}")]


def parse_host_port(value: str, default_port: int | None = None) -> tuple[str, int]:
    """
    Split C{"host:port"} (or C{"[v6]:port"}, or a bare host when
    C{default_port} is given).

    @return: C{(host, port)}, the host without brackets.
    @raise ValueError: with a reason naming what is wrong.
    """
    host: str
    port_text: str | None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError(f"{value!r} opens '[' without closing ']'")
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{value!r} has text after ']' that is not ':port'")
        port_text = rest[1:] if rest else None
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    elif value.count(":") > 1:
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not 'host:port'") from None
        if default_port is None:
            raise ValueError(f"{value!r} has no port; write IPv6 as '[address]:port'")
        host, port_text = value, None
    else:
        host, port_text = value, None
    if not host:
        raise ValueError(f"{value!r} has no host")
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{value!r} has no port; expected 'host:port'")
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r} has an invalid port {port_text!r} (1 to 65535)")
    return host, int(port_text)


def format_host_port(host: str, port: int) -> str:
    """
    The inverse of L{parse_host_port}: brackets around IPv6 addresses.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


#: The retry options every network discovery plugin accepts: the first and
#: the largest base delay of its capped exponential backoff, in seconds.
RETRY_OPTIONS = (
    Option("retry_initial", positive_number, default=0.5),
    Option("retry_max", positive_number, default=30.0),
)


def check_retry(options: object) -> Problems:
    """
    Check that C{retry_max} is at least C{retry_initial} (each already
    checked on its own by L{RETRY_OPTIONS}).
    """
    if not isinstance(options, Mapping):
        return []
    initial = options.get("retry_initial", RETRY_OPTIONS[0].default)
    maximum = options.get("retry_max", RETRY_OPTIONS[1].default)
    if _is_number(initial) and _is_number(maximum) and maximum < initial:
        return [("retry_max", f"must be at least retry_initial ({initial}), got {maximum}")]
    return []
