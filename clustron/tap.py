"""
``twistd clustron``: run one node from a configuration file.

    twistd -n clustron --config node.yaml
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.python import usage

from clustron.config import NodeConfig
from clustron.errors import ClustronError, ConfigError


class Options(usage.Options):
    """
    Command-line options of ``twistd clustron``.
    """

    synopsis = "--config FILE [--log-format text|json] [--log-level LEVEL]"
    longdesc = (
        "Run a Clustron cluster node. The node listens for peers at `listen`, finds "
        "them through its discovery plugins, joins (or forms, with "
        "membership.bootstrap_expect) its cluster, and serves the admin API at "
        "admin.listen. See `clustron config check FILE` to validate a file first."
    )
    optParameters = [
        ["config", "c", None, "Path of the node's YAML or JSON configuration file (required)."],
        ["log-format", None, None, "Log output: text or json (overrides logging.format)."],
        [
            "log-level",
            None,
            None,
            "Lowest level logged: debug, info, warn, error (overrides logging.level).",
        ],
    ]

    def postOptions(self) -> None:  # noqa: N802
        """
        Check the options.
        """
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")
        if self["log-format"] not in (None, "text", "json"):
            raise usage.UsageError("--log-format must be text or json")
        if self["log-level"] not in (None, "debug", "info", "warn", "error", "critical"):
            raise usage.UsageError("--log-level must be one of debug, info, warn, error, critical")


def makeService(options: dict[str, Any]) -> IService:  # noqa: N802
    """
    Build the node service from parsed L{Options}.
    """
    from clustron.node import ClusterNode
    from clustron.observability.logs import configure_logging

    try:
        config = NodeConfig.from_file(options["config"])
    except ConfigError as e:
        sys.stderr.write(f"{options['config']}: invalid configuration:\n{e.render()}\n")
        raise SystemExit(2) from None
    except (OSError, ClustronError) as e:
        sys.stderr.write(f"{options['config']}: {e}\n")
        raise SystemExit(2) from None
    observer = configure_logging(
        config,
        log_format=options.get("log-format"),
        log_level=options.get("log-level"),
    )
    from clustron.observability.tracing import configure_tracing

    try:
        configure_tracing(config.tracing)
    except ConfigError as e:
        sys.stderr.write(f"{options['config']}: {e.render()}\n")
        raise SystemExit(2) from None
    root = NodeService(observer)
    node = ClusterNode(config)
    node.setServiceParent(root)
    _reload_on_sighup(node)
    return root


class NodeService(MultiService):
    """
    The service twistd runs: the node, plus the log observer the
    configuration asks for (JSON, or a level other than info), installed as
    the application's C{ILogObserver} so that it replaces twistd's default
    one (logs then go to standard output).
    """

    def __init__(self, observer: Any = None) -> None:
        super().__init__()
        self.observer = observer

    def setServiceParent(self, parent: Any) -> Any:  # noqa: N802
        """
        Attach to the twistd application, giving it our log observer.
        """
        if self.observer is not None and hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            parent.setComponent(ILogObserver, self.observer)
        return super().setServiceParent(parent)


def _reload_on_sighup(node: Any) -> None:
    """
    Re-read the configuration file on SIGHUP (the reloadable keys apply at
    once; see L{ClusterNode.reload_config}).
    """
    import signal

    from twisted.internet import reactor
    from twisted.internet.interfaces import IReactorThreads

    def reload(signum: int, frame: Any) -> None:
        IReactorThreads(reactor).callFromThread(node.reload_config)

    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, reload)
