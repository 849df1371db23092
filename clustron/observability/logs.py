"""
Structured logging set-up for ``twistd clustron``.

Clustron logs through C{twisted.logger} with structured fields (C{node_id},
C{peer_node}, C{reason}, ...). This module adds, for the running process, a
filter on the configured level and, with C{--log-format json}, an observer
that writes one JSON object per event to standard output.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    jsonFileLogObserver,
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
) -> None:
    """
    Apply C{logging.level} and C{logging.format} (or the command-line
    overrides) to the global log publisher.
    """
    set_level(log_level or config.logging.level)
    if (log_format or config.logging.format) == "json":
        globalLogPublisher.addObserver(FilteringLogObserver(json_observer(), [level_filter]))
