"""
``clustron config check FILE``: validate a node configuration file and
explain every problem, or print the effective configuration.

Exit status: 0 when the file is valid, 2 when it is not (or cannot be
read).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from clustron.config import NodeConfig
from clustron.errors import ConfigError

#: The exit status of an invalid configuration.
EXIT_INVALID = 2


def load(path: str) -> NodeConfig:
    """
    Load and validate one file, with the installed plugins.

    @param path: the configuration file.
    @return: the validated configuration.
    @raise ConfigError: listing every problem.
    """
    return NodeConfig.from_file(path)


def add_parser(subparsers: Any) -> None:
    """
    Register ``config`` and its sub-command ``check``.

    @param subparsers: the ``clustron`` command's sub-parsers.
    """
    parser = subparsers.add_parser(
        "config",
        help="check node configuration files",
        description="Check node configuration files.",
    )
    parser.set_defaults(func=run, config_usage=parser.format_usage)
    commands = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    check = commands.add_parser(
        "check",
        help="validate a configuration file and explain every error",
        description=(
            "Validate a YAML or JSON node configuration file. Prints every error as "
            "'FILE: key.path: reason' and exits 2, or prints the effective configuration "
            "(defaults and profile applied, secrets redacted) and exits 0."
        ),
    )
    check.add_argument("file", metavar="FILE", help="the configuration file (YAML or JSON)")
    check.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document on stdout instead (errors or effective configuration)",
    )


def run(args: argparse.Namespace) -> int:
    """
    Run ``clustron config SUBCOMMAND``.

    @param args: the parsed arguments.
    @return: the exit status.
    """
    if getattr(args, "config_command", None) == "check":
        return check(args.file, as_json=args.json, out=sys.stdout, err=sys.stderr)
    sys.stderr.write(args.config_usage())
    sys.stderr.write("clustron config: a sub-command is required: check\n")
    return EXIT_INVALID


def check(path: str, *, as_json: bool, out: TextIO, err: TextIO) -> int:
    """
    Validate C{path} and report.

    @param path: the configuration file.
    @param as_json: write one JSON document to C{out} rather than text.
    @param out: where the effective configuration (or the JSON report) goes.
    @param err: where text errors go.
    @return: 0 when valid, L{EXIT_INVALID} when not.
    """
    try:
        config = load(path)
    except ConfigError as e:
        if as_json:
            report: dict[str, Any] = {
                "file": path,
                "valid": False,
                "errors": [{"key": key, "reason": reason} for key, reason in e.errors],
            }
            out.write(json.dumps(report, indent=2) + "\n")
        else:
            for key, reason in e.errors:
                err.write(f"{path}: {key}: {reason}\n" if key else f"{path}: {reason}\n")
            count = len(e.errors)
            err.write(f"{count} error{'' if count == 1 else 's'}\n")
        return EXIT_INVALID
    if as_json:
        report = {"file": path, "valid": True, "config": config.to_dict(redact=True)}
        out.write(json.dumps(report, indent=2) + "\n")
    else:
        out.write(config.to_yaml(redact=True))
    return 0
