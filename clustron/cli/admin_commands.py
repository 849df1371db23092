"""
The C{clustron} sub-commands that talk to a node's admin API:
C{status}, C{elect}, C{remove}, C{drain}, C{events} and C{reload}.

Every one takes C{--admin URL} (default: C{$CLUSTRON_ADMIN}, else
C{http://127.0.0.1:8101}), a token (C{--token}, C{--token-file} or
C{$CLUSTRON_TOKEN}, in that order; prefer a file, since a command-line
argument is visible to other local users), C{--cacert FILE} for an https API
with a private CA, and C{--json} for machine-readable output. Errors are
one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ConnectError, ConnectionRefusedError, DNSLookupError
from twisted.internet.task import react
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.error import SchemeNotSupported

from clustron.admin.client import AdminClient, AdminRequestError, stream_ended_by_server
from clustron.admin.events import EventStreamError

#: The admin API used when neither --admin nor $CLUSTRON_ADMIN is given.
DEFAULT_ADMIN = "http://127.0.0.1:8101"

_ACTIONS = ("status", "elect", "remove", "drain", "events", "reload")


class SettingsError(Exception):
    """
    The command line or environment is unusable (unreadable token file...).
    """


def add_parser(subparsers: Any) -> None:
    """
    Register the admin sub-commands.

    @param subparsers: the C{clustron} command's sub-parsers.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--admin",
        metavar="URL",
        help=f"the node's admin API (default: $CLUSTRON_ADMIN or {DEFAULT_ADMIN})",
    )
    token = common.add_mutually_exclusive_group()
    token.add_argument(
        "--token", help="bearer token (visible to other local users; prefer --token-file)"
    )
    token.add_argument("--token-file", metavar="FILE", help="file holding the bearer token")
    common.add_argument(
        "--cacert", metavar="FILE", help="CA certificate to verify an https admin API with"
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of text")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subparsers.add_parser(
            name, parents=[common], help=help_text, description=help_text
        )
        parser.set_defaults(func=run, admin_action=name)
        return parser

    command("status", "show the cluster as a node sees it (view, members, quorum)")
    elect = command("elect", "force a new coordinator election")
    elect.add_argument("--prefer", metavar="NODE", help="the node id to favour")
    remove = command("remove", "remove a member from the cluster (needs role admin)")
    remove.add_argument("node", metavar="NODE", help="the member's node id")
    drain = command(
        "drain", "drain a member: it stays a member but is never elected (a coordinator hands over)"
    )
    drain.add_argument("node", metavar="NODE", help="the member's node id")
    command("events", "follow membership and operations events, one line each")
    command("reload", "reload the node's configuration (needs role admin)")


def resolve(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, str | None]:
    """
    Work out the admin URL and the token.

    @param args: the parsed arguments.
    @param environ: the environment.
    @return: C{(url, token or None)}.
    @raise SettingsError: when the token file cannot be read or is empty.
    """
    url = args.admin or environ.get("CLUSTRON_ADMIN") or DEFAULT_ADMIN
    token: str | None
    if args.token is not None:
        token = args.token.strip()
    elif args.token_file is not None:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            reason = getattr(e, "strerror", None) or str(e)
            raise SettingsError(f"cannot read token file {args.token_file}: {reason}") from None
        if not token:
            raise SettingsError(f"token file {args.token_file} is empty")
    else:
        token = environ.get("CLUSTRON_TOKEN", "").strip() or None
    return url, token


def run(args: argparse.Namespace) -> int:
    """
    Run one admin sub-command on the global reactor.

    @param args: the parsed arguments.
    @return: the exit status.
    """
    try:
        url, token = resolve(args, os.environ)
    except SettingsError as e:
        print(f"clustron: {e}", file=sys.stderr)
        return 1

    def main(reactor: Any) -> Deferred[None]:
        try:
            client = AdminClient(url, token, reactor=reactor, ca_cert=args.cacert)
        except ValueError as e:
            print(f"clustron: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        stopping: list[bool] = []
        reactor.addSystemEventTrigger("before", "shutdown", stopping.append, True)
        d = execute(args, client, sys.stdout, sys.stderr, stopping=stopping)

        def leave(code: int) -> None:
            if code:
                raise SystemExit(code)

        return d.addCallback(leave)

    try:
        react(main)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0  # react always exits; kept for type checkers


def execute(
    args: argparse.Namespace,
    client: AdminClient,
    out: TextIO,
    err: TextIO,
    stopping: list[bool] | None = None,
) -> Deferred[int]:
    """
    Perform one admin sub-command.

    @param args: the parsed arguments (C{admin_action} names the command).
    @param client: the client to use.
    @param out: where results go.
    @param err: where errors go.
    @param stopping: non-empty once the process is shutting down (the end
        of C{events} is then not an error).
    @return: a Deferred firing with the exit status; it never fails.
    """
    action: str = args.admin_action
    as_json: bool = args.json

    def show(result: Any, text: Callable[[Any], str]) -> int:
        if as_json:
            out.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
        else:
            out.write(text(result) + "\n")
        return 0

    d: Deferred[Any]
    if action == "status":
        d = client.cluster().addCallback(show, format_status)
    elif action == "elect":
        d = client.elect(args.prefer).addCallback(show, lambda r: format_result("election", r))
    elif action == "remove":
        d = client.remove(args.node).addCallback(
            show, lambda r: format_result(f"removed {args.node}", r)
        )
    elif action == "drain":
        d = client.drain(args.node).addCallback(
            show, lambda r: format_result(f"draining {args.node}", r)
        )
    elif action == "reload":

        def reloaded(result: Any) -> int:
            show(result, format_reload)
            errors = result.get("errors") if isinstance(result, dict) else None
            if errors:
                err.write(f"clustron: reload reported {len(errors)} error(s)\n")
                return 1
            return 0

        d = client.reload().addCallback(reloaded)
    elif action == "events":

        def print_event(event: dict[str, Any]) -> None:
            out.write(json.dumps(event, sort_keys=True) if as_json else format_event(event))
            out.write("\n")
            out.flush()

        d = client.events(print_event).addCallback(lambda _: 0)
    else:
        raise ValueError(f"unknown admin action {action!r}; known: {', '.join(_ACTIONS)}")

    def failed(failure: Failure) -> int:
        if stopping and action == "events":
            # Ctrl-C or SIGTERM while following the stream: a normal end.
            return 0
        err.write(f"clustron: {describe_failure(failure, client.base_url, action)}\n")
        return 1

    return d.addErrback(failed)


def describe_failure(failure: Failure, url: str, action: str) -> str:
    """
    @return: one line saying what went wrong, for a person.
    """
    e = failure.value
    if isinstance(e, AdminRequestError):
        if e.status == 401:
            return f"authentication failed: {e.message}"
        if e.status == 403:
            return f"permission denied: {e.message}"
        return f"{action} failed ({e.status} {e.code}): {e.message}"
    if isinstance(e, ConnectionRefusedError):
        return f"cannot reach admin API at {url}: connection refused"
    if isinstance(e, DNSLookupError):
        return f"cannot reach admin API at {url}: cannot resolve the host name"
    if isinstance(e, ConnectError):
        reason = e.osError or e.__class__.__name__
        return f"cannot reach admin API at {url}: {reason}"
    if isinstance(e, TimeoutError):
        return f"admin API at {url} did not answer in time"
    if isinstance(e, SchemeNotSupported):
        return f"invalid admin URL {url}: {e}"
    if isinstance(e, EventStreamError):
        return f"bad event stream from {url}: {e}"
    if action == "events" and stream_ended_by_server(failure):
        return f"the event stream from {url} was closed by the server"
    if isinstance(e, (ResponseFailed, ResponseNeverReceived)):
        reasons = "; ".join(_short(r.value) for r in e.reasons) or "unknown reason"
        return f"connection to admin API at {url} failed: {reasons}"
    return f"{action} failed: {_short(e)}"


def _short(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# ---------------------------------------------------------------------------
# formatting


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]


def format_status(doc: Mapping[str, Any]) -> str:
    """
    Render a C{GET /v1/cluster} document as text: a heading, the quorum
    line, then a table of members with the coordinator marked C{*}.
    """
    lines: list[str] = []
    view = doc.get("view") or {}
    coordinator = view.get("coordinator")
    view_id = (
        f"{view.get('epoch')}.{view.get('seq')}" if view else "none (not joined)"
    )
    lines.append(
        f"cluster {_text(doc.get('cluster_id'))}  node {_text(doc.get('node_id'))}  "
        f"view {view_id}  coordinator {_text(coordinator)}"
    )
    quorum = doc.get("quorum") or {}
    has = quorum.get("has_quorum")
    verdict = "yes" if has is True else "NO" if has is False else "unknown"
    lines.append(
        f"quorum: {verdict} (mode {_text(quorum.get('mode'))}, "
        f"{_text(quorum.get('present'))} present, {_text(quorum.get('required'))} required)"
    )
    members = view.get("members") or []
    if members:
        rows = [["  NODE", "ADDRESS", "STATE", "INCARNATION", "DRAINING", "REASON"]]
        for member in members:
            node_id = member.get("node_id")
            rows.append(
                [
                    ("* " if node_id == coordinator else "  ") + _text(node_id),
                    _text(member.get("address")),
                    _text(member.get("state")),
                    _text(member.get("incarnation")),
                    _text(member.get("draining")),
                    _text(member.get("reason")),
                ]
            )
        lines.extend(_table(rows))
    else:
        lines.append("no members")
    peers = doc.get("peers") or []
    if peers:
        described = ", ".join(
            f"{_text(p.get('node_id'))} ({'connected' if p.get('connected') else 'disconnected'})"
            for p in peers
        )
        lines.append(f"peers: {described}")
    return "\n".join(lines)


def _pairs(mapping: Mapping[str, Any], skip: tuple[str, ...] = ()) -> str:
    parts = []
    for key in sorted(mapping):
        if key in skip:
            continue
        value = mapping[key]
        if isinstance(value, str) and value and not any(c.isspace() for c in value):
            rendered = value
        else:
            rendered = json.dumps(value, sort_keys=True)
        parts.append(f"{key}={rendered}")
    return " ".join(parts)


def format_result(what: str, result: Any) -> str:
    """
    Render the answer of an action (election, removal, drain) as one line.
    """
    if isinstance(result, Mapping) and result:
        return f"{what}: {_pairs(result)}"
    return f"{what}: ok"


def _items(values: Any) -> str:
    if not values:
        return "none"
    rendered = []
    for value in values:
        rendered.append(_pairs(value) if isinstance(value, Mapping) else str(value))
    return ", ".join(rendered)


def format_reload(result: Mapping[str, Any]) -> str:
    """
    Render the answer of a configuration reload.
    """
    return "\n".join(
        f"{key}: {_items(result.get(key))}" for key in ("applied", "ignored", "errors")
    )


def format_event(event: Mapping[str, Any]) -> str:
    """
    Render one event as one line: time (UTC), type, then its other fields.
    """
    when = event.get("time")
    if isinstance(when, (int, float)):
        stamp = datetime.fromtimestamp(when, tz=UTC).isoformat(timespec="milliseconds")
        stamp = stamp.replace("+00:00", "Z")
    else:
        stamp = _text(when)
    rest = _pairs(event, skip=("time", "type"))
    return f"{stamp} {_text(event.get('type'))}" + (f" {rest}" if rest else "")
