"""
The ``clustron`` command.

Each sub-command lives in a module of this package that defines
``add_parser(subparsers)``, which registers its parser and sets
``func=run`` on it, where ``run(args) -> int`` returns the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Sub-command modules, in the order ``--help`` lists them.
COMMAND_MODULES = (
    "clustron.cli.demo",
    "clustron.cli.admin_commands",
    "clustron.cli.config_check",
    "clustron.cli.certs",
    "clustron.cli.sim",
)


def build_parser() -> argparse.ArgumentParser:
    """
    @return: the argument parser of the ``clustron`` command, with every
        sub-command whose module is present.
    """
    parser = argparse.ArgumentParser(
        prog="clustron",
        description="Clustron: clustering and messaging for Twisted.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:
                continue
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the ``clustron`` command.

    @param argv: the arguments, without the program name; C{sys.argv[1:]}
        when None.
    @return: the exit status.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    result: int = args.func(args)
    return result


def run() -> None:
    """
    Console-script entry point.
    """
    sys.exit(main())
