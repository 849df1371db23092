"""
Structured logging set-up for ``twistd clustron``.

Clustron logs through C{twisted.logger} with structured fields (C{node_id},
C{peer_node}, C{reason}, ...). This module adds, for the running process, a
filter on the configured level and, with C{--log-format json}, an observer
that writes one JSON object per event to standard output.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}

#: The level filter shared by the observers this module installs, so that a
#: configuration reload can change the level.
level_filter = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)


def set_level(level: str) -> None:
    """
    Change the lowest level logged (reloadable setting C{logging.level}).
    """
    level_filter.setLogLevelForNamespace("", _LEVELS.get(level, LogLevel.info))
    level_filter.defaultLogLevel = _LEVELS.get(level, LogLevel.info)


def json_observer(stream: Any = None) -> ILogObserver:
    """
    An observer writing one JSON object per line (record separator free).
    """
    return jsonFileLogObserver(stream or sys.stdout, recordSeparator="")


def configure_logging(
    config: Any, log_format: str | None = None, log_level: str | None = None
) -> ILogObserver | None:
    """
    Apply C{logging.level} and C{logging.format} (or the command-line
    overrides).

    @return: None when twistd's own log observer will do (text at level
        info), else the observer to install in its place: JSON or text on
        standard output, filtered at the chosen level (see L{NodeService}
        in L{clustron.tap}, which installs it as the application's
        C{ILogObserver}).
    """
    level = log_level or config.logging.level
    set_level(level)
    fmt = log_format or config.logging.format
    if fmt != "json" and level == "info":
        return None
    stream = sys.stdout
    inner = json_observer(stream) if fmt == "json" else textFileLogObserver(stream)
    return FilteringLogObserver(inner, [level_filter])


class NodeLogger(Logger):
    """
    A L{Logger} that adds the node's id (and, when known, its current view
    id) to every event it emits, so that the logs of several nodes (in one
    process, as in the testkit, or merged by a log pipeline) stay
    attributable and searchable by C{node_id} and C{view_id}.
    """

    def __init__(
        self,
        node_id: str,
        view_id: Callable[[], Any] | None = None,
        namespace: str | None = None,
        source: object | None = None,
    ) -> None:
        super().__init__(namespace=namespace, source=source)
        self.node_id = node_id
        self._view_id = view_id

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:  # noqa: A002
        """
        Emit an event with C{node_id} and C{view_id} fields added.
        """
        kwargs.setdefault("node_id", self.node_id)
        if self._view_id is not None and "view_id" not in kwargs:
            kwargs["view_id"] = self._view_id()
        super().emit(level, format, **kwargs)
