"""
A node's configuration: typed (attrs, frozen), loaded from YAML or JSON,
validated all at once.

L{NodeConfig.from_file} and L{NodeConfig.from_dict} check every key and
raise one L{clustron.errors.ConfigError} that lists every problem, each as a
C{(key_path, reason)} pair such as C{("failure_detector.dead_after", "must
be greater than suspect_after (0.8)")}.  Building the classes directly (for
tests and embedding) applies the same defaults but does not validate.

A profile (C{lan}, the default, C{wan} or C{local}) chooses the timing
defaults of the failure detector and of membership; keys given explicitly
override it.

Fields whose attrs metadata holds C{{"reloadable": True}} (and everything
below them) can change while a node runs; L{diff_for_reload} sorts the
changes between two configurations into those that apply live and those
that need a restart.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import attrs
import yaml
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor

from clustron.errors import ConfigError

#: The text that replaces secrets in L{NodeConfig.to_dict} output.
REDACTED = "<redacted>"

#: Admin token roles, weakest first.
ROLES = ("viewer", "operator", "admin")

#: Values of C{logging.level}.
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")

#: Timing defaults of each profile, by section and key.
PROFILES: Mapping[str, Mapping[str, Mapping[str, float]]] = {
    "lan": {
        "failure_detector": {
            "heartbeat_interval": 0.2,
            "suspect_after": 0.8,
            "dead_after": 1.6,
            "probe_timeout": 0.3,
        },
        "membership": {"join_timeout": 2.0, "merge_interval": 2.0},
    },
    "wan": {
        "failure_detector": {
            "heartbeat_interval": 1.0,
            "suspect_after": 5.0,
            "dead_after": 15.0,
            "probe_timeout": 2.0,
        },
        "membership": {"join_timeout": 10.0, "merge_interval": 10.0},
    },
    "local": {
        "failure_detector": {
            "heartbeat_interval": 0.1,
            "suspect_after": 0.5,
            "dead_after": 1.0,
            "probe_timeout": 0.2,
        },
        "membership": {"join_timeout": 1.0, "merge_interval": 1.0},
    },
}

#: The default server endpoint description of the cluster port.
DEFAULT_LISTEN = "tcp:7101:interface=127.0.0.1"

_RELOADABLE = {"reloadable": True}
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ID_RULE = (
    "must be 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
)
_WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})
_TCP_LIKE = frozenset({"tcp", "tcp6", "ssl"})
_SECRET_OPTION = re.compile(r"password|passwd|secret|credential|(^|_)token$", re.I)
_MIN_KEY_BYTES = 16

DiscoveryValidator = Callable[[Mapping[str, Any]], Iterable[tuple[str, str]]]
PluginNames = Callable[[str], Collection[str]]


def _lan(section: str, key: str) -> float:
    return PROFILES["lan"][section][key]


def _dump(value: bool = True) -> dict[str, bool]:
    return {"dump": value}


@attrs.frozen
class WireConfig:
    """
    Framing, handshake, send queues and reconnection (C{wire:}).
    """

    max_frame_bytes: int = 1048576
    handshake_timeout: float = 5.0
    send_queue_frames: int = 4096
    send_queue_bytes: int = 8388608
    reconnect_initial: float = 0.05
    reconnect_max: float = 2.0
    max_connections_per_address: int = 8


@attrs.frozen
class MembershipConfig:
    """
    Quorum, cluster formation and merging (C{membership:}).

    @ivar quorum: C{"majority"}, C{"none"} or a fixed number of members.
    """

    quorum: str | int = "majority"
    bootstrap_expect: int = 1
    expected_members: int | None = None
    join_timeout: float = _lan("membership", "join_timeout")
    merge_interval: float = _lan("membership", "merge_interval")

    @classmethod
    def for_profile(cls, profile: str) -> MembershipConfig:
        """
        @param profile: a key of L{PROFILES}.
        @return: the defaults of that profile.
        """
        timings = PROFILES[profile]["membership"]
        return cls(join_timeout=timings["join_timeout"], merge_interval=timings["merge_interval"])


@attrs.frozen
class FailureDetectorConfig:
    """
    Heartbeat failure detection (C{failure_detector:}); every key is
    reloadable.
    """

    heartbeat_interval: float = attrs.field(
        default=_lan("failure_detector", "heartbeat_interval"), metadata=_RELOADABLE
    )
    suspect_after: float = attrs.field(
        default=_lan("failure_detector", "suspect_after"), metadata=_RELOADABLE
    )
    dead_after: float = attrs.field(
        default=_lan("failure_detector", "dead_after"), metadata=_RELOADABLE
    )
    indirect_probes: int = attrs.field(default=3, metadata=_RELOADABLE)
    probe_timeout: float = attrs.field(
        default=_lan("failure_detector", "probe_timeout"), metadata=_RELOADABLE
    )

    @classmethod
    def for_profile(cls, profile: str) -> FailureDetectorConfig:
        """
        @param profile: a key of L{PROFILES}.
        @return: the defaults of that profile.
        """
        timings = PROFILES[profile]["failure_detector"]
        return cls(
            heartbeat_interval=timings["heartbeat_interval"],
            suspect_after=timings["suspect_after"],
            dead_after=timings["dead_after"],
            probe_timeout=timings["probe_timeout"],
        )


@attrs.frozen
class ElectionConfig:
    """
    The election strategy (C{election:}).
    """

    plugin: str = "bully"


@attrs.frozen
class MessagingConfig:
    """
    Message sizes, timeouts, retries and windows (C{messaging:}).
    """

    max_message_bytes: int = 16777216
    fragment_bytes: int = 65536
    request_timeout: float = 5.0
    retry_initial: float = 0.2
    retry_max: float = 5.0
    dedup_window: int = 65536
    max_in_flight: int = 1024


@attrs.frozen
class TokenConfig:
    """
    One admin API bearer token.

    @ivar secret: the token itself, read from wherever it was given.
    @ivar token_file: the file it was read from, if any.
    @ivar token_env: the environment variable it was read from, if any.
    """

    name: str
    role: str
    secret: str = attrs.field(repr=False)
    token_file: str | None = None
    token_env: str | None = None


@attrs.frozen
class AdminTlsConfig:
    """
    TLS for the admin API: paths of a PEM certificate (chain) and its key.
    """

    cert: str
    key: str


@attrs.frozen
class AdminConfig:
    """
    The admin HTTP API (C{admin:}); disabled while C{listen} is None.
    """

    listen: str | None = None
    tokens: tuple[TokenConfig, ...] = attrs.field(
        default=(), converter=tuple, metadata=_RELOADABLE
    )
    tls: AdminTlsConfig | None = None
    audit_log: str | None = None


@attrs.frozen
class LoggingConfig:
    """
    Log level and format (C{logging:}); the level is reloadable.
    """

    level: str = attrs.field(default="info", metadata=_RELOADABLE)
    format: str = "text"


@attrs.frozen
class SecurityConfig:
    """
    Frame integrity (C{security:}).

    @ivar keys: the cluster keys, resolved to bytes; the first is the
        primary key (used to sign), the others are also accepted (rotation).
    @ivar key_sources: where each key came from, as C{("file", path)} or
        C{("env", name)} pairs, in the order of C{keys} (for display; not
        part of the value).
    """

    signing: str = "crc32"
    keys: tuple[bytes, ...] = attrs.field(default=(), converter=tuple, repr=False)
    key_sources: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=tuple, eq=False)

    @property
    def primary_key(self) -> bytes | None:
        """
        @return: the key that signs outgoing frames, or None without keys.
        """
        return self.keys[0] if self.keys else None


@attrs.frozen
class TlsConfig:
    """
    Paths of the CA certificate, this node's certificate and its key, for
    C{transport: tls}.
    """

    ca: str
    cert: str
    key: str


@attrs.frozen
class TracingConfig:
    """
    OpenTelemetry tracing (C{tracing:}).
    """

    enabled: bool = False
    exporter: str = "none"
    endpoint: str | None = None


def _copy_discovery(value: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: copy.deepcopy(dict(options)) for name, options in value.items()}


def _default_discovery() -> dict[str, dict[str, Any]]:
    return {"static": {"seeds": []}}


@attrs.frozen
class NodeConfig:
    """
    Everything a node needs to know before it starts.

    Build one with L{from_file} or L{from_dict}, which validate; building it
    directly applies the defaults (C{advertise} derived from C{listen}, the
    timings of C{profile}) without validating.

    @ivar discovery: discovery plugin name to that plugin's options.
    @ivar source_path: the file this configuration was loaded from, if any;
        not part of the configuration's value (ignored by equality).
    """

    cluster_id: str
    node_id: str
    priority: int = 0
    listen: str = DEFAULT_LISTEN
    advertise: str = attrs.field()
    profile: str = "lan"
    transport: str = "tcp"
    serializer: str = "json"
    app_version: str = ""
    wire: WireConfig = attrs.field(factory=WireConfig)
    discovery: dict[str, dict[str, Any]] = attrs.field(
        factory=_default_discovery, converter=_copy_discovery, metadata=_RELOADABLE
    )
    membership: MembershipConfig = attrs.field()
    failure_detector: FailureDetectorConfig = attrs.field(metadata=_RELOADABLE)
    election: ElectionConfig = attrs.field(factory=ElectionConfig)
    messaging: MessagingConfig = attrs.field(factory=MessagingConfig)
    admin: AdminConfig = attrs.field(factory=AdminConfig)
    logging: LoggingConfig = attrs.field(factory=LoggingConfig)
    security: SecurityConfig = attrs.field(factory=SecurityConfig)
    tls: TlsConfig | None = None
    tracing: TracingConfig = attrs.field(factory=TracingConfig)
    source_path: str | None = attrs.field(default=None, eq=False, metadata=_dump(False))

    @advertise.default
    def _advertise_default(self) -> str:
        return derive_advertise(self.listen)

    @membership.default
    def _membership_default(self) -> MembershipConfig:
        return MembershipConfig.for_profile(self.profile)

    @failure_detector.default
    def _failure_detector_default(self) -> FailureDetectorConfig:
        return FailureDetectorConfig.for_profile(self.profile)

    @property
    def advertise_address(self) -> tuple[str, int]:
        """
        @return: C{advertise} as a C{(host, port)} tuple (an IPv6 host
            without its brackets).
        """
        return parse_host_port(self.advertise)

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        *,
        base_dir: str | None = None,
        environ: Mapping[str, str] | None = None,
        discovery_validators: Mapping[str, DiscoveryValidator] | None = None,
        plugin_names: PluginNames | None = None,
    ) -> NodeConfig:
        """
        Validate plain data (as parsed from YAML or JSON) and build a
        configuration from it.

        @param d: the configuration mapping.
        @param base_dir: the directory that relative file paths are relative
            to; the current directory when None.
        @param environ: where C{token_env} and C{env} keys are looked up;
            C{os.environ} when None.
        @param discovery_validators: discovery plugin name to a callable that
            checks that plugin's options and returns C{(key, reason)} pairs;
            the installed discovery plugins' C{validate} when None.
        @param plugin_names: a callable from a plugin kind (C{"transport"},
            C{"serializer"}, C{"election"}) to the names installed; the
            installed plugins when None.
        @return: the validated configuration.
        @raise ConfigError: listing every problem found.
        """
        reader = _Reader(
            base_dir=base_dir,
            environ=os.environ if environ is None else environ,
            discovery_validators=discovery_validators,
            plugin_names=plugin_names,
        )
        return reader.node(d)

    @classmethod
    def from_file(
        cls,
        path: str,
        *,
        environ: Mapping[str, str] | None = None,
        discovery_validators: Mapping[str, DiscoveryValidator] | None = None,
        plugin_names: PluginNames | None = None,
    ) -> NodeConfig:
        """
        Load, validate and build a configuration from a YAML or JSON file.

        A C{.json} file is read as JSON; any other (C{.yaml}, C{.yml}, ...) as
        YAML, which also reads JSON.  Duplicate keys are errors.  Relative
        paths in the file are relative to the file's directory.

        @param path: the file.
        @param environ: see L{from_dict}.
        @param discovery_validators: see L{from_dict}.
        @param plugin_names: see L{from_dict}.
        @return: the validated configuration, with C{source_path} set to the
            file's absolute path.
        @raise ConfigError: listing every problem found; problems with the
            file as a whole (unreadable, not YAML) have the key path C{""}.
        """
        absolute = os.path.abspath(path)
        data = load_document(absolute)
        config = cls.from_dict(
            data,
            base_dir=os.path.dirname(absolute),
            environ=environ,
            discovery_validators=discovery_validators,
            plugin_names=plugin_names,
        )
        return attrs.evolve(config, source_path=absolute)

    def to_dict(self, redact: bool = True) -> dict[str, Any]:
        """
        The effective configuration (defaults and profile applied) as plain
        data, in the shape L{from_dict} reads.

        Tokens show where they came from (C{token_file}, C{token_env}); an
        inline token is shown as L{REDACTED} unless C{redact} is false.
        Cluster keys are shown only by their source, never as bytes.
        Discovery options whose names look secret (C{password}, C{secret},
        C{credentials}, C{token}, C{*_token}) are redacted too.

        @param redact: hide secrets.
        @return: a dict of plain values (str, int, float, bool, None, list,
            dict).
        """
        return _plain(self, redact)

    def to_yaml(self, redact: bool = True) -> str:
        """
        @param redact: see L{to_dict}.
        @return: L{to_dict} as a YAML document.
        """
        return yaml.safe_dump(self.to_dict(redact=redact), sort_keys=False)


@attrs.frozen
class ReloadPlan:
    """
    How a running node gets from one configuration to another.

    @ivar reloadable: key paths that changed and can apply live.
    @ivar fixed: key paths that changed and need a restart.
    """

    reloadable: list[str]
    fixed: list[str]

    @property
    def needs_restart(self) -> bool:
        """
        @return: whether any change needs a restart.
        """
        return bool(self.fixed)

    @property
    def changed(self) -> bool:
        """
        @return: whether anything changed at all.
        """
        return bool(self.reloadable or self.fixed)


def diff_for_reload(old: NodeConfig, new: NodeConfig) -> ReloadPlan:
    """
    Compare two configurations key by key.

    A key is reloadable when its field, or a field above it, carries the
    C{reloadable} metadata.  Key paths name leaves where both sides have
    structure (C{failure_detector.dead_after}, C{discovery.static.seeds});
    lists are compared whole (C{admin.tokens}).

    @param old: the running configuration.
    @param new: the candidate configuration.
    @return: the changed key paths, sorted into reloadable and fixed.
    """
    reloadable: list[str] = []
    fixed: list[str] = []
    _diff(old, new, "", False, reloadable, fixed)
    return ReloadPlan(reloadable=reloadable, fixed=fixed)


_MISSING = object()


def _diff(
    old: Any, new: Any, path: str, live: bool, reloadable: list[str], fixed: list[str]
) -> None:
    if attrs.has(type(old)) and type(old) is type(new):
        for field in attrs.fields(type(old)):
            if not field.eq:
                continue
            _diff(
                getattr(old, field.name),
                getattr(new, field.name),
                _join(path, field.name),
                live or bool(field.metadata.get("reloadable")),
                reloadable,
                fixed,
            )
    elif isinstance(old, Mapping) and isinstance(new, Mapping):
        keys = list(old) + [key for key in new if key not in old]
        for key in keys:
            _diff(
                old.get(key, _MISSING),
                new.get(key, _MISSING),
                _join(path, str(key)),
                live,
                reloadable,
                fixed,
            )
    elif old != new:
        (reloadable if live else fixed).append(path)


# Addresses and endpoint descriptions


def parse_host_port(text: str) -> tuple[str, int]:
    """
    Parse C{"host:port"} (C{"[v6addr]:port"} for IPv6).

    @param text: the address.
    @return: C{(host, port)}, the host without brackets.
    @raise ValueError: with a reason when C{text} is not such an address or
        the port is not between 1 and 65535.
    """
    if not isinstance(text, str):
        raise ValueError(f"must be a string 'host:port', got {_show(text)}")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or not host:
            raise ValueError(f"must be 'host:port' ('[address]:port' for IPv6), got {text!r}")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"must be 'host:port', got {text!r}")
        if ":" in host:
            raise ValueError(f"an IPv6 host must be in brackets ('[{host}]:{port}'), got {text!r}")
    if any(ch.isspace() for ch in host) or "/" in host:
        raise ValueError(f"{host!r} is not a host name or address")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be an integer from 1 to 65535, got {port!r}")
    return host, int(port)


def _format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_description(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    Split a Twisted endpoint description into its type, positional
    arguments and keyword arguments (C{\\} escapes the next character).
    """
    parts: list[tuple[str | None, str]] = []
    key: str | None = None
    current: list[str] = []
    chars = iter(description)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, ""))
        elif ch == ":":
            parts.append((key, "".join(current)))
            key, current = None, []
        elif ch == "=" and key is None:
            key, current = "".join(current), []
        else:
            current.append(ch)
    parts.append((key, "".join(current)))
    kind = parts[0][1] if parts[0][0] is None else ""
    args = [value for name, value in parts[1:] if name is None]
    kwargs = {name: value for name, value in parts[1:] if name is not None}
    return kind, args, kwargs


def _tcp_port_interface(description: str) -> tuple[str, str, str] | None:
    """
    @return: C{(kind, port, interface)} (strings, as written) of a C{tcp},
        C{tcp6} or C{ssl} description, or None for other types.
    """
    kind, args, kwargs = _split_description(description)
    if kind not in _TCP_LIKE:
        return None
    port = kwargs.get("port", args[0] if args else "")
    interface = kwargs.get("interface", args[1] if len(args) > 1 and kind != "ssl" else "")
    return kind, port, interface


def endpoint_problem(description: str) -> str | None:
    """
    Check a Twisted server endpoint description without listening.

    @param description: for example C{"tcp:7101:interface=127.0.0.1"}.
    @return: None when it is valid, else the reason it is not.
    """
    if not description.strip():
        return "must not be empty (for example 'tcp:7101:interface=127.0.0.1')"
    tcp = _tcp_port_interface(description)
    if tcp is not None:
        kind, port, _ = tcp
        if not port:
            return f"{kind} endpoint has no port (for example '{kind}:7101:interface=127.0.0.1')"
        if not port.isdigit() or int(port) > 65535:
            return f"port must be an integer from 0 to 65535, got {port!r}"
    try:
        serverFromString(MemoryReactor(), description)
    except Exception as e:
        return f"not a valid Twisted server endpoint description: {e}"
    return None


def derive_advertise(listen: str) -> str:
    """
    The address peers dial, derived from a C{tcp}/C{tcp6}/C{ssl} listen
    description that names a specific interface and port.

    @param listen: a server endpoint description.
    @return: C{"host:port"}.
    @raise ValueError: with the reason when it cannot be derived.
    """
    hint = "; set advertise to the host:port that peers dial"
    tcp = _tcp_port_interface(listen)
    if tcp is None:
        raise ValueError(f"required: it cannot be derived from listen {listen!r}{hint}")
    _, port, interface = tcp
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(
            f"required: listen {listen!r} does not use a fixed port from 1 to 65535{hint}"
        )
    if interface in _WILDCARDS:
        raise ValueError(
            f"required: listen {listen!r} does not name one interface that peers can dial{hint}"
        )
    return _format_host_port(interface, int(port))


def _same_port(first: str, second: str) -> int | None:
    """
    @return: the port when two tcp-like descriptions would bind the same
        port on overlapping interfaces, else None.
    """
    a, b = _tcp_port_interface(first), _tcp_port_interface(second)
    if a is None or b is None or not a[1].isdigit() or a[1] != b[1] or int(a[1]) == 0:
        return None
    if a[2] == b[2] or a[2] in _WILDCARDS or b[2] in _WILDCARDS:
        return int(a[1])
    return None


# Loading documents


class _StrictLoader(yaml.SafeLoader):
    """
    A safe YAML loader that refuses duplicate keys.
    """


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"found duplicate key {key!r}")
        result[key] = value
    return result


def load_document(path: str) -> Any:
    """
    Read and parse a YAML or JSON file (by extension: C{.json} is JSON,
    anything else YAML).

    @param path: the file.
    @return: the parsed data.
    @raise ConfigError: with key path C{""} when the file cannot be read or
        parsed, or is empty.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError([("", f"file not found: {path}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([("", f"{path} is not UTF-8 text")]) from None
    except OSError as e:
        raise ConfigError([("", f"cannot read {path}: {e.strerror or e}")]) from None
    if path.lower().endswith(".json"):
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError as e:
            raise ConfigError(
                [("", f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}")]
            ) from None
        except ValueError as e:
            raise ConfigError([("", f"invalid JSON: {e}")]) from None
    else:
        try:
            data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError([("", f"invalid YAML{where}: {e.problem or e}")]) from None
        except yaml.YAMLError as e:
            raise ConfigError([("", f"invalid YAML: {e}")]) from None
    if data is None:
        raise ConfigError([("", "the file is empty; expected a mapping of configuration keys")])
    return data


# Validation


class _Bad:
    """
    The value of a key that failed validation.
    """

    def __repr__(self) -> str:
        return "<bad>"


_BAD: Any = _Bad()
_REQUIRED: Any = object()

_KIND_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a mapping",
    type(None): "null",
}


def _kind(value: Any) -> str:
    for cls, name in _KIND_NAMES.items():
        if type(value) is cls:
            return name
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(path: str, key: str) -> str:
    if not path:
        return key
    if not key:
        return path
    if key.startswith("["):
        return path + key
    return f"{path}.{key}"


def _num(value: float) -> str:
    return repr(value)


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in attrs.fields(cls) if f.metadata.get("dump", True))


def _default_plugin_names(kind: str) -> Collection[str]:
    from clustron import plugins

    return list(plugins.installed(kind))


def _default_discovery_validators() -> dict[str, DiscoveryValidator]:
    from clustron import plugins

    return {name: plugin.validate for name, plugin in plugins.installed("discovery").items()}


class _Reader:
    """
    One validation pass: reads plain data key by key, records every
    problem, and builds the configuration when there is none.

    Each reader method returns the value it read, or C{_BAD} after
    recording why the value is wrong; cross-field rules are checked only
    between values that are not C{_BAD}, so one mistake gives one error.
    """

    def __init__(
        self,
        *,
        base_dir: str | None,
        environ: Mapping[str, str],
        discovery_validators: Mapping[str, DiscoveryValidator] | None,
        plugin_names: PluginNames | None,
    ) -> None:
        self.errors: list[tuple[str, str]] = []
        self._base_dir = os.path.abspath(base_dir if base_dir is not None else os.getcwd())
        self._environ = environ
        self._discovery_validators = discovery_validators
        self._plugin_names = plugin_names or _default_plugin_names
        self._names_cache: dict[str, list[str]] = {}

    def error(self, path: str, reason: str) -> None:
        self.errors.append((path, reason))

    # Generic readers.

    def mapping(self, value: Any, path: str, allowed: Collection[str]) -> Any:
        """
        @return: the mapping (empty for null or absent), or _BAD; unknown
            keys are recorded.
        """
        if value is None or value is _MISSING:
            return {}
        if not isinstance(value, Mapping):
            subject = "must be a mapping" if path else "the configuration must be a mapping"
            self.error(path, f"{subject}, got {_kind(value)}")
            return _BAD
        for key in value:
            if key not in allowed:
                self.error(_join(path, str(key)), _unknown_key(key, allowed))
        return value

    def items(self, value: Any, path: str) -> Any:
        """
        @return: the list (empty for null or absent), or _BAD.
        """
        if value is None or value is _MISSING:
            return []
        if not isinstance(value, list):
            self.error(path, f"must be a list, got {_kind(value)}")
            return _BAD
        return value

    def _get(self, m: Mapping[str, Any], key: str, path: str, default: Any) -> tuple[Any, bool]:
        """
        @return: C{(value, True)} when the key has a non-null value, else
            C{(default, False)} (C{(_BAD, False)} after recording "required").
        """
        value = m.get(key)
        if value is not None:
            return value, True
        if default is _REQUIRED:
            self.error(path, "required")
            return _BAD, False
        return default, False

    def string(
        self,
        m: Mapping[str, Any],
        key: str,
        path: str,
        default: Any = _REQUIRED,
        *,
        choices: Collection[str] | None = None,
        identifier: bool = False,
        secret: bool = False,
        allow_empty: bool = False,
    ) -> Any:
        value, given = self._get(m, key, path, default)
        if not given:
            return value
        if not isinstance(value, str):
            shown = _kind(value) if secret else _show(value)
            hint = " (quote it in YAML)" if isinstance(value, (bool, int, float)) else ""
            self.error(path, f"must be a string, got {shown}{hint}")
            return _BAD
        if choices is not None and value not in choices:
            reason = f"must be one of: {', '.join(choices)}, got {value!r}"
            self.error(path, reason + _did_you_mean(value, choices))
            return _BAD
        if identifier and not _ID_RE.fullmatch(value):
            self.error(path, f"{_ID_RULE}, got {value!r}")
            return _BAD
        if not value and not allow_empty:
            self.error(path, "must not be empty")
            return _BAD
        return value

    def integer(
        self,
        m: Mapping[str, Any],
        key: str,
        path: str,
        default: Any,
        *,
        minimum: int | None = None,
    ) -> Any:
        value, given = self._get(m, key, path, default)
        if not given:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"must be an integer, got {_show(value)}")
            return _BAD
        if minimum is not None and value < minimum:
            self.error(path, f"must be at least {minimum}, got {value}")
            return _BAD
        return value

    def number(self, m: Mapping[str, Any], key: str, path: str, default: float) -> Any:
        """
        A positive, finite number (int or float), returned as a float.
        """
        value, given = self._get(m, key, path, default)
        if not given:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.error(path, f"must be a number, got {_show(value)}")
            return _BAD
        if not math.isfinite(value):
            self.error(path, f"must be a finite number, got {value}")
            return _BAD
        if value <= 0:
            self.error(path, f"must be greater than 0, got {value}")
            return _BAD
        return float(value)

    def boolean(self, m: Mapping[str, Any], key: str, path: str, default: bool) -> Any:
        value, given = self._get(m, key, path, default)
        if given and not isinstance(value, bool):
            self.error(path, f"must be true or false, got {_show(value)}")
            return _BAD
        return value

    def file_path(
        self,
        m: Mapping[str, Any],
        key: str,
        path: str,
        default: Any = _REQUIRED,
        *,
        must_exist: bool = True,
    ) -> Any:
        """
        A file path, made absolute against the base directory: an existing
        regular file, or (when C{must_exist} is false) one whose directory
        exists.
        """
        value, given = self._get(m, key, path, default)
        if not given:
            return value
        value = self.string(m, key, path)
        if value is _BAD:
            return value
        resolved = self.resolve(value)
        if must_exist:
            if not os.path.exists(resolved):
                self.error(path, f"file not found: {resolved}")
                return _BAD
            if not os.path.isfile(resolved):
                self.error(path, f"not a regular file: {resolved}")
                return _BAD
        elif not os.path.isdir(os.path.dirname(resolved)):
            self.error(path, f"directory not found: {os.path.dirname(resolved)}")
            return _BAD
        return resolved

    def resolve(self, value: str) -> str:
        """
        @return: C{value} (C{~} expanded) made absolute against the base
            directory.
        """
        return os.path.normpath(os.path.join(self._base_dir, os.path.expanduser(value)))

    def environment(self, name: str, path: str) -> Any:
        """
        @return: the value of an environment variable, or _BAD when it is
            unset or empty.
        """
        if name not in self._environ:
            self.error(path, f"environment variable {name} is not set")
            return _BAD
        value = self._environ[name]
        if not value.strip():
            self.error(path, f"environment variable {name} is empty")
            return _BAD
        return value

    def plugin_name(
        self, kind: str, m: Mapping[str, Any], key: str, path: str, default: str
    ) -> Any:
        value = self.string(m, key, path, default)
        if value is _BAD:
            return value
        names = self.names(kind)
        if value not in names:
            listed = ", ".join(names) or "(none)"
            reason = f"unknown {kind} plugin {value!r}; installed: {listed}"
            self.error(path, reason + _did_you_mean(value, names))
            return _BAD
        return value

    def names(self, kind: str) -> list[str]:
        """
        @return: the installed plugin names of C{kind}, sorted (looked up
            once per validation).
        """
        if kind not in self._names_cache:
            self._names_cache[kind] = sorted(self._plugin_names(kind))
        return self._names_cache[kind]

    def one_of(self, m: Mapping[str, Any], path: str, keys: tuple[str, ...]) -> str | None:
        """
        @return: the one key of C{keys} that C{m} gives, or None after
            recording that none or several were given.
        """
        given = [key for key in keys if m.get(key) is not None]
        if len(given) == 1:
            return given[0]
        if given:
            self.error(path, f"only one of {', '.join(keys)} may be given, got {', '.join(given)}")
        else:
            self.error(path, f"exactly one of {', '.join(keys)} is required")
        return None

    # Sections.

    def node(self, d: Any) -> NodeConfig:
        top = self.mapping(d, "", _field_names(NodeConfig))
        if top is _BAD:
            raise ConfigError(self.errors)
        v: dict[str, Any] = {}
        v["cluster_id"] = self.string(top, "cluster_id", "cluster_id", identifier=True)
        v["node_id"] = self.string(top, "node_id", "node_id", identifier=True)
        v["priority"] = self.integer(top, "priority", "priority", 0)
        profile = v["profile"] = self.string(
            top, "profile", "profile", "lan", choices=tuple(PROFILES)
        )
        transport = v["transport"] = self.plugin_name(
            "transport", top, "transport", "transport", "tcp"
        )
        v["serializer"] = self.plugin_name("serializer", top, "serializer", "serializer", "json")
        v["app_version"] = self.string(top, "app_version", "app_version", "", allow_empty=True)
        listen = self.string(top, "listen", "listen", DEFAULT_LISTEN)
        if listen is not _BAD and transport != "sim":
            problem = endpoint_problem(listen)
            if problem is not None:
                self.error("listen", problem)
                listen = _BAD
        v["listen"] = listen
        v["advertise"] = self.advertise(top, listen, transport)
        if profile is _BAD:
            profile = "lan"
        wire = v["wire"] = self.wire(top.get("wire"))
        v["discovery"] = self.discovery(top.get("discovery", _MISSING))
        v["membership"] = self.membership(top.get("membership"), profile)
        v["failure_detector"] = self.failure_detector(top.get("failure_detector"), profile)
        v["election"] = self.election(top.get("election"))
        v["messaging"] = self.messaging(top.get("messaging"), wire)
        v["admin"] = self.admin(top.get("admin"), listen)
        v["logging"] = self.logging(top.get("logging"))
        v["security"] = self.security(top.get("security"))
        v["tls"] = self.tls(top.get("tls"), transport)
        v["tracing"] = self.tracing(top.get("tracing"))
        if self.errors:
            raise ConfigError(self.errors)
        result: NodeConfig = NodeConfig(**v)
        return result

    def advertise(self, top: Mapping[str, Any], listen: Any, transport: Any) -> Any:
        if top.get("advertise") is None:
            if transport == "sim":
                self.error("advertise", "required when transport is sim")
                return _BAD
            if listen is _BAD:
                return _BAD
            try:
                return derive_advertise(listen)
            except ValueError as e:
                self.error("advertise", str(e))
                return _BAD
        value = self.string(top, "advertise", "advertise")
        if value is _BAD:
            return value
        try:
            host, _ = parse_host_port(value)
        except ValueError as e:
            self.error("advertise", str(e))
            return _BAD
        if host in _WILDCARDS:
            self.error("advertise", f"must be an address peers can dial, not the wildcard {host}")
            return _BAD
        return value

    def _order(
        self,
        section: str,
        v: Mapping[str, Any],
        given: Collection[str],
        low: str,
        high: str,
        *,
        origin: str,
        blame_low: bool = False,
    ) -> None:
        """
        Record an error unless C{v[low] < v[high]}.  The error goes on the
        key the user gave when only one of the two was given; otherwise on
        C{low} if C{blame_low}, else on C{high}.  A value that came from the
        profile says so (C{origin}).
        """
        lo, hi = v[low], v[high]
        if lo is _BAD or hi is _BAD or lo < hi:
            return
        if low in given and high not in given:
            on_low = True
        elif high in given and low not in given:
            on_low = False
        else:
            on_low = blame_low
        if on_low:
            note = "" if high in given else origin
            self.error(_join(section, low), f"must be less than {high} ({_num(hi)}{note})")
        else:
            note = "" if low in given else origin
            self.error(_join(section, high), f"must be greater than {low} ({_num(lo)}{note})")

    def wire(self, raw: Any) -> Any:
        m = self.mapping(raw, "wire", _field_names(WireConfig))
        if m is _BAD:
            return _BAD
        d = WireConfig()
        v: dict[str, Any] = {}
        for key in (
            "max_frame_bytes",
            "send_queue_frames",
            "send_queue_bytes",
            "max_connections_per_address",
        ):
            v[key] = self.integer(m, key, f"wire.{key}", getattr(d, key), minimum=1)
        for key in ("handshake_timeout", "reconnect_initial", "reconnect_max"):
            v[key] = self.number(m, key, f"wire.{key}", getattr(d, key))
        if _ok(v["reconnect_initial"], v["reconnect_max"]) and (
            v["reconnect_max"] < v["reconnect_initial"]
        ):
            self.error(
                "wire.reconnect_max",
                f"must be at least reconnect_initial ({_num(v['reconnect_initial'])})",
            )
        if _ok(v["max_frame_bytes"], v["send_queue_bytes"]) and (
            v["send_queue_bytes"] < v["max_frame_bytes"]
        ):
            self.error(
                "wire.send_queue_bytes",
                f"must be at least max_frame_bytes ({v['max_frame_bytes']})",
            )
        return _build(WireConfig, v)

    def discovery(self, raw: Any) -> Any:
        if raw is _MISSING or raw is None:
            return _default_discovery()
        if not isinstance(raw, Mapping):
            self.error(
                "discovery", f"must be a mapping of plugin name to options, got {_kind(raw)}"
            )
            return _BAD
        validators = self._discovery_validators
        if validators is None:
            validators = _default_discovery_validators() if raw else {}
        names = sorted(validators)
        result: dict[str, dict[str, Any]] = {}
        for name, options in raw.items():
            path = _join("discovery", str(name))
            if name not in validators:
                listed = ", ".join(names) or "(none)"
                reason = f"unknown discovery plugin; installed: {listed}"
                self.error(path, reason + _did_you_mean(str(name), names))
                continue
            if options is None:
                options = {}
            if not isinstance(options, Mapping):
                self.error(path, f"must be a mapping of the plugin's options, got {_kind(options)}")
                continue
            options = copy.deepcopy(dict(options))
            try:
                problems = list(validators[name](options))
            except Exception as e:
                self.error(path, f"the {name} plugin failed to check its options: {e!r}")
                continue
            for key, reason in problems:
                self.error(_join(path, key), reason)
            result[name] = options
        return result

    def membership(self, raw: Any, profile: str) -> Any:
        m = self.mapping(raw, "membership", _field_names(MembershipConfig))
        if m is _BAD:
            return _BAD
        timings = PROFILES[profile]["membership"]
        v: dict[str, Any] = {}
        quorum = m.get("quorum")
        if quorum is None:
            v["quorum"] = "majority"
        elif quorum in ("majority", "none") or (isinstance(quorum, int) and quorum >= 1):
            v["quorum"] = quorum
        if isinstance(quorum, bool) or "quorum" not in v:
            v["quorum"] = _BAD
            self.error(
                "membership.quorum",
                f"must be majority, none or a number of members (at least 1), got {_show(quorum)}",
            )
        v["bootstrap_expect"] = self.integer(
            m, "bootstrap_expect", "membership.bootstrap_expect", 1, minimum=1
        )
        v["expected_members"] = self.integer(
            m, "expected_members", "membership.expected_members", None, minimum=1
        )
        for key in ("join_timeout", "merge_interval"):
            v[key] = self.number(m, key, f"membership.{key}", timings[key])
        expected = v["expected_members"]
        if isinstance(expected, int):
            if _ok(v["bootstrap_expect"]) and v["bootstrap_expect"] > expected:
                self.error(
                    "membership.bootstrap_expect",
                    f"must not exceed expected_members ({expected})",
                )
            if isinstance(v["quorum"], int) and v["quorum"] > expected:
                self.error("membership.quorum", f"must not exceed expected_members ({expected})")
        return _build(MembershipConfig, v)

    def failure_detector(self, raw: Any, profile: str) -> Any:
        section = "failure_detector"
        m = self.mapping(raw, section, _field_names(FailureDetectorConfig))
        if m is _BAD:
            return _BAD
        timings = PROFILES[profile][section]
        v: dict[str, Any] = {}
        for key in ("heartbeat_interval", "suspect_after", "dead_after", "probe_timeout"):
            v[key] = self.number(m, key, f"{section}.{key}", timings[key])
        v["indirect_probes"] = self.integer(
            m, "indirect_probes", f"{section}.indirect_probes", 3, minimum=0
        )
        given = {key for key in m if m[key] is not None}
        origin = f", the {profile} profile's default"
        self._order(section, v, given, "heartbeat_interval", "suspect_after", origin=origin)
        self._order(section, v, given, "suspect_after", "dead_after", origin=origin)
        self._order(
            section, v, given, "probe_timeout", "suspect_after", origin=origin, blame_low=True
        )
        return _build(FailureDetectorConfig, v)

    def election(self, raw: Any) -> Any:
        m = self.mapping(raw, "election", _field_names(ElectionConfig))
        if m is _BAD:
            return _BAD
        plugin = self.plugin_name("election", m, "plugin", "election.plugin", "bully")
        return _build(ElectionConfig, {"plugin": plugin})

    def messaging(self, raw: Any, wire: Any) -> Any:
        m = self.mapping(raw, "messaging", _field_names(MessagingConfig))
        if m is _BAD:
            return _BAD
        d = MessagingConfig()
        v: dict[str, Any] = {}
        for key in ("max_message_bytes", "fragment_bytes", "dedup_window", "max_in_flight"):
            v[key] = self.integer(m, key, f"messaging.{key}", getattr(d, key), minimum=1)
        for key in ("request_timeout", "retry_initial", "retry_max"):
            v[key] = self.number(m, key, f"messaging.{key}", getattr(d, key))
        if _ok(v["retry_initial"], v["retry_max"]) and v["retry_max"] < v["retry_initial"]:
            self.error(
                "messaging.retry_max",
                f"must be at least retry_initial ({_num(v['retry_initial'])})",
            )
        if _ok(v["fragment_bytes"], wire) and v["fragment_bytes"] >= wire.max_frame_bytes:
            self.error(
                "messaging.fragment_bytes",
                f"must be less than wire.max_frame_bytes ({wire.max_frame_bytes})",
            )
        return _build(MessagingConfig, v)

    def admin(self, raw: Any, cluster_listen: Any) -> Any:
        m = self.mapping(raw, "admin", _field_names(AdminConfig))
        if m is _BAD:
            return _BAD
        listen = self.string(m, "listen", "admin.listen", None)
        if isinstance(listen, str):
            problem = endpoint_problem(listen)
            if problem is not None:
                self.error("admin.listen", problem)
                listen = _BAD
            elif isinstance(cluster_listen, str):
                port = _same_port(listen, cluster_listen)
                if port is not None:
                    self.error("admin.listen", f"uses the same port as listen ({port})")
        tokens = self.tokens(m.get("tokens"))
        if isinstance(listen, str) and tokens == ():
            self.error(
                "admin.tokens", "at least one token is required when admin.listen is set"
            )
        tls: Any = None
        if m.get("tls") is not None:
            t = self.mapping(m["tls"], "admin.tls", _field_names(AdminTlsConfig))
            tls = _BAD
            if t is not _BAD:
                tls = _build(
                    AdminTlsConfig,
                    {key: self.file_path(t, key, f"admin.tls.{key}") for key in ("cert", "key")},
                )
        audit_log = self.file_path(m, "audit_log", "admin.audit_log", None, must_exist=False)
        return _build(
            AdminConfig, {"listen": listen, "tokens": tokens, "tls": tls, "audit_log": audit_log}
        )

    def tokens(self, raw: Any) -> Any:
        entries = self.items(raw, "admin.tokens")
        if entries is _BAD:
            return _BAD
        tokens: list[Any] = []
        names: dict[str, str] = {}
        secrets: dict[str, str] = {}
        for index, entry in enumerate(entries):
            path = f"admin.tokens[{index}]"
            token, name, secret = self.token(entry, path)
            tokens.append(token)
            if isinstance(name, str):
                if name in names:
                    self.error(
                        f"{path}.name", f"duplicate token name {name!r} (also at {names[name]})"
                    )
                names.setdefault(name, path)
            if isinstance(secret, str):
                if secret in secrets:
                    self.error(path, f"same secret as {secrets[secret]}; each token must differ")
                secrets.setdefault(secret, path)
        return _BAD if _BAD in tokens else tuple(tokens)

    def token(self, entry: Any, path: str) -> tuple[Any, Any, Any]:
        """
        @return: C{(token, name, secret)}: the L{TokenConfig} or _BAD, and
            its name and secret where they could be read (else _BAD), so
            that duplicates are found even among broken entries.
        """
        m = self.mapping(entry, path, ("name", "role", *_TOKEN_SOURCES))
        if m is _BAD:
            return _BAD, _BAD, _BAD
        name = self.string(m, "name", f"{path}.name", identifier=True)
        role = self.string(m, "role", f"{path}.role", choices=ROLES)
        source = self.one_of(m, path, _TOKEN_SOURCES)
        secret: Any = _BAD
        token_file: Any = None
        token_env: Any = None
        where = f"{path}.{source}"
        if source == "token":
            secret = self.string(m, "token", where, secret=True)
            if isinstance(secret, str) and secret != secret.strip():
                self.error(where, "must not start or end with whitespace")
                secret = _BAD
        elif source == "token_file":
            token_file = self.file_path(m, "token_file", where)
            if token_file is not _BAD:
                secret = self.read_text(token_file, where)
        elif source == "token_env":
            token_env = self.string(m, "token_env", where)
            if token_env is not _BAD:
                secret = self.environment(token_env, where)
                if secret is not _BAD:
                    secret = secret.strip()
        token = _build(
            TokenConfig,
            {
                "name": name,
                "role": role,
                "secret": secret,
                "token_file": token_file,
                "token_env": token_env,
            },
        )
        return token, name, secret

    def read_text(self, file_name: str, path: str) -> Any:
        """
        @return: a secret file's text without surrounding whitespace, or
            _BAD when it cannot be read or is empty.
        """
        try:
            with open(file_name, encoding="utf-8") as f:
                text = f.read().strip()
        except UnicodeDecodeError:
            self.error(path, f"not UTF-8 text: {file_name}")
            return _BAD
        except OSError as e:
            self.error(path, f"cannot read {file_name}: {e.strerror or e}")
            return _BAD
        if not text:
            self.error(path, f"file is empty: {file_name}")
            return _BAD
        return text

    def logging(self, raw: Any) -> Any:
        m = self.mapping(raw, "logging", _field_names(LoggingConfig))
        if m is _BAD:
            return _BAD
        level = self.string(m, "level", "logging.level", "info", choices=LOG_LEVELS)
        fmt = self.string(m, "format", "logging.format", "text", choices=("text", "json"))
        return _build(LoggingConfig, {"level": level, "format": fmt})

    def security(self, raw: Any) -> Any:
        m = self.mapping(raw, "security", ("signing", "keys"))
        if m is _BAD:
            return _BAD
        signing = self.string(
            m, "signing", "security.signing", "crc32", choices=("crc32", "hmac-sha256", "none")
        )
        entries = self.items(m.get("keys"), "security.keys")
        if entries is _BAD:
            return _BAD
        keys: list[Any] = []
        sources: list[tuple[str, str]] = []
        for index, entry in enumerate(entries):
            path = f"security.keys[{index}]"
            key, source = self.key(entry, path)
            if isinstance(key, bytes) and signing == "hmac-sha256" and len(key) < _MIN_KEY_BYTES:
                self.error(path, f"must be at least {_MIN_KEY_BYTES} bytes, got {len(key)}")
                key = _BAD
            keys.append(key)
            sources.append(source)
        if signing == "hmac-sha256" and not entries:
            self.error(
                "security.keys", "at least one key is required when signing is hmac-sha256"
            )
        if _BAD in keys:
            return _BAD
        return _build(
            SecurityConfig, {"signing": signing, "keys": tuple(keys), "key_sources": sources}
        )

    def key(self, entry: Any, path: str) -> tuple[Any, Any]:
        """
        Read one cluster key: a file's bytes (without trailing CR/LF) or an
        environment variable's value, UTF-8 encoded.

        @return: C{(key_bytes, (kind, where))}, the key _BAD on error.
        """
        m = self.mapping(entry, path, ("file", "env"))
        if m is _BAD:
            return _BAD, None
        kind = self.one_of(m, path, ("file", "env"))
        where = f"{path}.{kind}"
        if kind == "file":
            file_name = self.file_path(m, "file", where)
            if file_name is _BAD:
                return _BAD, None
            try:
                with open(file_name, "rb") as f:
                    data = f.read().rstrip(b"\r\n")
            except OSError as e:
                self.error(where, f"cannot read {file_name}: {e.strerror or e}")
                return _BAD, None
            if not data:
                self.error(where, f"file is empty: {file_name}")
                return _BAD, None
            return data, ("file", file_name)
        if kind == "env":
            name = self.string(m, "env", where)
            if name is _BAD:
                return _BAD, None
            value = self.environment(name, where)
            if value is _BAD:
                return _BAD, None
            return value.encode("utf-8"), ("env", name)
        return _BAD, None

    def tls(self, raw: Any, transport: Any) -> Any:
        if raw is None:
            if transport == "tls":
                self.error("tls", "required when transport is tls (ca, cert and key)")
                return _BAD
            return None
        m = self.mapping(raw, "tls", _field_names(TlsConfig))
        if m is _BAD:
            return _BAD
        return _build(
            TlsConfig, {key: self.file_path(m, key, f"tls.{key}") for key in ("ca", "cert", "key")}
        )

    def tracing(self, raw: Any) -> Any:
        m = self.mapping(raw, "tracing", _field_names(TracingConfig))
        if m is _BAD:
            return _BAD
        enabled = self.boolean(m, "enabled", "tracing.enabled", False)
        exporter = self.string(
            m, "exporter", "tracing.exporter", "none", choices=("none", "console", "otlp")
        )
        endpoint = self.string(m, "endpoint", "tracing.endpoint", None)
        if isinstance(endpoint, str):
            if exporter != "otlp" and exporter is not _BAD:
                self.error("tracing.endpoint", "only used when exporter is otlp")
                endpoint = _BAD
            elif not endpoint.startswith(("http://", "https://")):
                self.error(
                    "tracing.endpoint", f"must be an http:// or https:// URL, got {endpoint!r}"
                )
                endpoint = _BAD
        return _build(
            TracingConfig, {"enabled": enabled, "exporter": exporter, "endpoint": endpoint}
        )


_TOKEN_SOURCES = ("token", "token_file", "token_env")


def _ok(*values: Any) -> bool:
    return all(value is not _BAD for value in values)


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    """
    @return: C{cls(**values)}, or _BAD when any value is _BAD.
    """
    if not _ok(*values.values()):
        return _BAD
    return cls(**values)


def _did_you_mean(value: str, candidates: Collection[str], otherwise: str = "") -> str:
    close = difflib.get_close_matches(value, list(candidates), n=1)
    return f"; did you mean {close[0]!r}?" if close else otherwise


def _unknown_key(key: Any, allowed: Collection[str]) -> str:
    if isinstance(key, str):
        hint = _did_you_mean(key, allowed)
        if hint:
            return "unknown key" + hint
    return f"unknown key; valid keys: {', '.join(allowed)}"


# Plain data


def _plain(value: Any, redact: bool) -> Any:
    if isinstance(value, TokenConfig):
        entry: dict[str, Any] = {"name": value.name, "role": value.role}
        if value.token_file is not None:
            entry["token_file"] = value.token_file
        elif value.token_env is not None:
            entry["token_env"] = value.token_env
        else:
            entry["token"] = REDACTED if redact else value.secret
        return entry
    if isinstance(value, SecurityConfig):
        keys: list[Any] = [{kind: where} for kind, where in value.key_sources]
        keys += [REDACTED] * (len(value.keys) - len(keys))
        return {"signing": value.signing, "keys": keys}
    if attrs.has(type(value)):
        return {
            field.name: _plain(getattr(value, field.name), redact)
            for field in attrs.fields(type(value))
            if field.metadata.get("dump", True)
        }
    if isinstance(value, Mapping):
        return {
            str(key): REDACTED
            if redact and isinstance(key, str) and _SECRET_OPTION.search(key)
            else _plain(item, redact)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_plain(item, redact) for item in value]
    if isinstance(value, bytes):
        return REDACTED
    return value
