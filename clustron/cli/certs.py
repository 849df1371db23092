"""
``clustron certs``: a development CA and node certificates for mutual TLS.

::

    clustron certs init --dir certs
    clustron certs issue --dir certs n1 --host 10.0.0.1 --host n1.example.com
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from clustron.security.certs import DEFAULT_HOSTS, create_ca, issue_node_cert


def add_parser(subparsers: Any) -> None:
    """
    Register ``clustron certs`` and its actions on C{subparsers}.
    """
    parser = subparsers.add_parser(
        "certs",
        help="create a development CA and node certificates for the tls transport",
        description="Create a development certificate authority and node certificates "
        "for mutual TLS between Clustron nodes (transport: tls).",
    )
    parser.set_defaults(func=run, certs_parser=parser)
    actions = parser.add_subparsers(dest="certs_action", metavar="ACTION")

    init = actions.add_parser(
        "init",
        help="create a CA (DIR/ca.crt and DIR/ca.key)",
        description="Create a self-signed CA: DIR/ca.crt (give it to every node) and "
        "DIR/ca.key (keep it private; it signs node certificates).",
    )
    init.add_argument("--dir", required=True, help="directory to write the CA to")
    init.add_argument("--force", action="store_true", help="replace an existing CA in DIR")
    init.add_argument(
        "--common-name",
        default="Clustron development CA",
        help="the CA's common name (default: %(default)s)",
    )
    init.add_argument(
        "--days", type=int, default=3650, help="validity in days (default: %(default)s)"
    )

    issue = actions.add_parser(
        "issue",
        help="issue a certificate for one node (DIR/NODE_ID.crt and DIR/NODE_ID.key)",
        description="Issue a certificate for NODE_ID signed by the CA in DIR. It names "
        "NODE_ID and every --host in its subjectAltName.",
    )
    issue.add_argument("--dir", required=True, help="directory holding the CA")
    issue.add_argument("node_id", metavar="NODE_ID", help="the node's id, as in its config")
    issue.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="H",
        help="an IP address or DNS name the node is reached at; repeat for more "
        f"(default: {' '.join(DEFAULT_HOSTS)})",
    )
    issue.add_argument(
        "--days", type=int, default=825, help="validity in days (default: %(default)s)"
    )
    issue.add_argument(
        "--force", action="store_true", help="replace this node's existing certificate and key"
    )


def run(args: argparse.Namespace) -> int:
    """
    Run ``clustron certs``.

    @return: 0 on success, 1 when the action fails (after one line on
        stderr saying why), 2 when no action is given.
    """
    action = getattr(args, "certs_action", None)
    if action is None:
        args.certs_parser.print_help(sys.stderr)
        return 2
    try:
        if action == "init":
            written = create_ca(
                args.dir, common_name=args.common_name, days=args.days, force=args.force
            )
        else:
            hosts = tuple(args.hosts) if args.hosts else DEFAULT_HOSTS
            written = issue_node_cert(
                args.dir, args.node_id, hosts=hosts, days=args.days, force=args.force
            )
    except (OSError, ValueError) as e:
        message = str(e) if not isinstance(e, OSError) or e.filename is None else _os_message(e)
        print(f"clustron certs {action}: error: {message}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


def _os_message(error: OSError) -> str:
    """
    @return: a one-line message for an operating-system error about a file.
    """
    return f"{error.filename}: {error.strerror or error}"
