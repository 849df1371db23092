"""
Tests for L{clustron.admin.client} and L{clustron.cli.admin_commands},
against the real admin resource tree in memory
(L{treq.testing.RequestTraversalAgent}), without a reactor.
"""

from __future__ import annotations

import argparse
import io
import json
from typing import Any

from treq.testing import RequestTraversalAgent
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, DNSLookupError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from clustron.admin.api import build_root
from clustron.admin.auth import AuditLog, Authorizer
from clustron.admin.client import AdminClient, AdminRequestError
from clustron.admin.events import EventStreamError
from clustron.cli import admin_commands
from clustron.cli.admin_commands import (
    DEFAULT_ADMIN,
    SettingsError,
    describe_failure,
    execute,
    format_event,
    format_status,
    resolve,
)
from clustron.errors import UnknownMember
from tests.test_admin_api import ADMIN, CLUSTER_DOC, OPERATOR, TOKENS, VIEWER, FakeTarget

URL = "http://admin.test:8101"


class Memory:
    """
    A fake node behind the real resource tree, reached by an in-memory
    agent.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.target = FakeTarget()
        self.root = build_root(
            self.target, Authorizer(TOKENS), self.clock, AuditLog(None), static_dir=None
        )
        self.agent = RequestTraversalAgent(self.root)

    def client(self, token: str | None = ADMIN.secret, **kw: Any) -> AdminClient:
        return AdminClient(URL, token, agent=self.agent, **kw)

    def settle(self, d: Deferred[Any]) -> Deferred[Any]:
        self.agent.flush()
        return d


class Fixed(Resource):
    """
    Answers every request with fixed bytes.
    """

    isLeaf = True

    def __init__(self, status: int, content_type: bytes, body: bytes) -> None:
        super().__init__()
        self.status, self.content_type, self.body = status, content_type, body

    def render(self, request: Any) -> bytes:
        request.setResponseCode(self.status)
        request.setHeader(b"Content-Type", self.content_type)
        return self.body


class Silent(Resource):
    """
    Never answers.
    """

    isLeaf = True

    def render(self, request: Any) -> int:
        return NOT_DONE_YET


class Partial(Resource):
    """
    Sends the start of an answer, then nothing.
    """

    isLeaf = True

    def render(self, request: Any) -> int:
        request.setHeader(b"Content-Type", b"application/json")
        request.write(b'{"cluster_id": ')
        return NOT_DONE_YET


@implementer(IAgent)
class FailingAgent:
    """
    An agent whose every request fails with one exception.
    """

    def __init__(self, error: Exception) -> None:
        self.error = error

    def request(self, method: bytes, uri: bytes, headers: Any = None,
                bodyProducer: Any = None) -> Deferred[Any]:
        return fail(self.error)


class ClientTests(SynchronousTestCase):
    def test_cluster(self) -> None:
        """
        C{cluster} answers the status document.
        """
        memory = Memory()
        result = self.successResultOf(memory.settle(memory.client().cluster()))
        self.assertEqual(result, CLUSTER_DOC)

    def test_no_token(self) -> None:
        """
        Without a token the API refuses, as an L{AdminRequestError}.
        """
        memory = Memory()
        failure = self.failureResultOf(memory.settle(memory.client(None).cluster()),
                                       AdminRequestError)
        self.assertEqual((failure.value.status, failure.value.code), (401, "unauthorized"))
        self.assertIn("bearer token is required", failure.value.message)

    def test_health(self) -> None:
        """
        C{health} answers the health document whether ok (200) or degraded
        (503).
        """
        memory = Memory()
        client = memory.client(VIEWER.secret)
        self.assertEqual(self.successResultOf(memory.settle(client.health()))["status"], "ok")
        memory.target.health_doc = dict(memory.target.health_doc, status="degraded")
        self.assertEqual(
            self.successResultOf(memory.settle(client.health()))["status"], "degraded"
        )

    def test_actions(self) -> None:
        """
        The action methods call the matching routes.
        """
        memory = Memory()
        client = memory.client()
        self.assertEqual(self.successResultOf(memory.settle(client.elect("n2"))),
                         {"started": True, "epoch": 4})
        self.successResultOf(memory.settle(client.elect()))
        self.successResultOf(memory.settle(client.remove("n/2")))
        self.successResultOf(memory.settle(client.drain("n3")))
        self.assertEqual(self.successResultOf(memory.settle(client.reload()))["applied"],
                         ["logging.level"])
        self.assertEqual(
            memory.target.calls,
            [("force_election", "n2"), ("force_election", None), ("remove_member", "n/2"),
             ("drain_member", "n3"), ("reload_config", None)],
        )

    def test_error(self) -> None:
        """
        An error answer becomes an L{AdminRequestError} with its status, code
        and message.
        """
        memory = Memory()
        memory.target.outcomes["remove_member"] = Failure(UnknownMember("no member n9"))
        failure = self.failureResultOf(memory.settle(memory.client().remove("n9")),
                                       AdminRequestError)
        self.assertEqual(
            (failure.value.status, failure.value.code, failure.value.message),
            (404, "unknown_member", "no member n9"),
        )

    def test_metrics(self) -> None:
        """
        C{metrics} answers the Prometheus text.
        """
        memory = Memory()
        text = self.successResultOf(memory.settle(memory.client().metrics()))
        self.assertIn("clustron_test_events_total 3.0", text)

    def test_not_json(self) -> None:
        """
        An answer that is not JSON is an error; an error answer that is not
        JSON gets a code from its status.
        """
        agent = RequestTraversalAgent(Fixed(200, b"text/html", b"<html>"))
        client = AdminClient(URL, "t", agent=agent)
        d = client.cluster()
        agent.flush()
        self.assertEqual(self.failureResultOf(d, AdminRequestError).value.code, "bad_response")
        agent = RequestTraversalAgent(Fixed(502, b"text/html", b"<html>"))
        d = AdminClient(URL, "t", agent=agent).cluster()
        agent.flush()
        error = self.failureResultOf(d, AdminRequestError).value
        self.assertEqual((error.status, error.code), (502, "http_502"))

    def test_too_large(self) -> None:
        """
        An answer larger than the limit is refused.
        """
        memory = Memory()
        d = memory.settle(memory.client(max_response_bytes=50).cluster())
        self.assertEqual(self.failureResultOf(d, AdminRequestError).value.code,
                         "response_too_large")

    def test_timeout(self) -> None:
        """
        With a reactor, an answer that does not come in time fails the call.
        """
        clock = Clock()
        agent = RequestTraversalAgent(Silent())
        d = AdminClient(URL, "t", agent=agent, reactor=clock, timeout=5).cluster()
        agent.flush()
        self.assertNoResult(d)
        clock.advance(5)
        self.failureResultOf(d, TimeoutError)

    def test_timeout_reading_body(self) -> None:
        """
        The timeout also covers reading the body.
        """
        clock = Clock()
        agent = RequestTraversalAgent(Partial())
        d = AdminClient(URL, "t", agent=agent, reactor=clock, timeout=5).cluster()
        agent.flush()
        self.assertNoResult(d)
        clock.advance(5)
        agent.flush()
        self.failureResultOf(d, TimeoutError)

    def test_bad_url(self) -> None:
        """
        A URL that is not http(s) is refused.
        """
        error = self.assertRaises(ValueError, AdminClient, "ftp://x", "t", agent=object())
        self.assertIn("http://", str(error))

    def test_missing_ca(self) -> None:
        """
        A CA certificate file that cannot be read is refused, naming it.
        """
        missing = self.mktemp()
        error = self.assertRaises(ValueError, AdminClient, "https://x", "t",
                                  reactor=Clock(), ca_cert=missing)
        self.assertIn(missing, str(error))


class ClientEventTests(SynchronousTestCase):
    def test_events(self) -> None:
        """
        C{events} hands each event to the callback and fires when the server
        ends the stream.
        """
        memory = Memory()
        got: list[dict[str, Any]] = []
        d = memory.settle(memory.client(VIEWER.secret).events(got.append))
        self.assertNoResult(d)
        memory.target.emit({"type": "member_alive", "time": 1.0, "node_id": "n2"})
        memory.target.emit({"type": "view", "time": 2.0})
        memory.agent.flush()
        self.assertEqual(got, [{"type": "member_alive", "time": 1.0, "node_id": "n2"},
                               {"type": "view", "time": 2.0}])
        memory.root.api.close_streams()
        memory.agent.flush()
        self.assertIsNone(self.successResultOf(d))

    def test_cancel(self) -> None:
        """
        Cancelling stops following; the server unsubscribes.
        """
        memory = Memory()
        d = memory.settle(memory.client(VIEWER.secret).events(lambda e: None))
        self.assertEqual(len(memory.target.subscribers), 1)
        d.cancel()
        memory.agent.flush()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(memory.target.subscribers, [])

    def test_refused(self) -> None:
        """
        A refused stream fails with the API's error.
        """
        memory = Memory()
        d = memory.settle(memory.client("wrong").events(lambda e: None))
        self.assertEqual(self.failureResultOf(d, AdminRequestError).value.status, 401)

    def test_callback_error(self) -> None:
        """
        An exception from the callback ends the stream with it.
        """
        memory = Memory()

        def callback(event: dict[str, Any]) -> None:
            raise KeyError("boom")

        d = memory.settle(memory.client(VIEWER.secret).events(callback))
        memory.target.emit({"type": "view", "time": 2.0})
        memory.agent.flush()
        self.failureResultOf(d, KeyError)
        self.assertEqual(memory.target.subscribers, [])

    def test_not_json_data(self) -> None:
        """
        Data that is not a JSON object is passed on under C{data}.
        """
        body = b"event: a\ndata: [1]\n\nevent: b\ndata: plain\n\n"
        agent = RequestTraversalAgent(Fixed(200, b"text/event-stream", body))
        got: list[dict[str, Any]] = []
        d = AdminClient(URL, "t", agent=agent).events(got.append)
        agent.flush()
        self.successResultOf(d)
        self.assertEqual(got, [{"type": "a", "data": [1]}, {"type": "b", "data": "plain"}])

    def test_bad_stream(self) -> None:
        """
        A malformed stream fails with L{EventStreamError}.
        """
        agent = RequestTraversalAgent(Fixed(200, b"text/event-stream", b"data: \xff\n\n"))
        d = AdminClient(URL, "t", agent=agent).events(lambda e: None)
        agent.flush()
        self.failureResultOf(d, EventStreamError)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="clustron")
    subparsers = parser.add_subparsers(dest="command")
    admin_commands.add_parser(subparsers)
    return parser.parse_args(list(argv))


class ParserTests(SynchronousTestCase):
    def test_commands(self) -> None:
        """
        Every admin sub-command is registered with C{func=run}.
        """
        cases = {
            ("status",): {},
            ("elect", "--prefer", "n2"): {"prefer": "n2"},
            ("elect",): {"prefer": None},
            ("remove", "n2"): {"node": "n2"},
            ("drain", "n3"): {"node": "n3"},
            ("events", "--json"): {"json": True},
            ("reload", "--admin", "http://h:1", "--token", "t"): {"admin": "http://h:1",
                                                                  "token": "t"},
        }
        for argv, expected in cases.items():
            args = parse(*argv)
            self.assertIs(args.func, admin_commands.run)
            self.assertEqual(args.admin_action, argv[0])
            for key, value in expected.items():
                self.assertEqual(getattr(args, key), value)

    def test_token_options_exclusive(self) -> None:
        """
        --token and --token-file cannot both be given.
        """
        self.patch(admin_commands.sys, "stderr", io.StringIO())
        self.assertRaises(SystemExit, parse, "status", "--token", "a", "--token-file", "f")


class ResolveTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """
        Without options or environment: the default URL and no token.
        """
        self.assertEqual(resolve(parse("status"), {}), (DEFAULT_ADMIN, None))

    def test_environment(self) -> None:
        """
        $CLUSTRON_ADMIN and $CLUSTRON_TOKEN are used when no option is given.
        """
        env = {"CLUSTRON_ADMIN": "http://e:1", "CLUSTRON_TOKEN": "env-token\n"}
        self.assertEqual(resolve(parse("status"), env), ("http://e:1", "env-token"))
        self.assertEqual(
            resolve(parse("status", "--admin", "http://o:2", "--token", "opt"), env),
            ("http://o:2", "opt"),
        )

    def test_token_file(self) -> None:
        """
        --token-file is read and stripped, and wins over the environment.
        """
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("file-token\n")
        url, token = resolve(parse("status", "--token-file", path), {"CLUSTRON_TOKEN": "env"})
        self.assertEqual(token, "file-token")

    def test_token_file_errors(self) -> None:
        """
        A missing or empty token file is an error naming it.
        """
        missing = self.mktemp()
        error = self.assertRaises(SettingsError, resolve, parse("status", "--token-file", missing),
                                  {})
        self.assertIn(missing, str(error))
        empty = self.mktemp()
        open(empty, "w").close()
        error = self.assertRaises(SettingsError, resolve, parse("status", "--token-file", empty),
                                  {})
        self.assertIn("is empty", str(error))


class ExecuteTests(SynchronousTestCase):
    def run_command(self, memory: Memory, argv: list[str], token: str | None = ADMIN.secret,
                    settle: bool = True) -> tuple[Deferred[int], io.StringIO, io.StringIO]:
        out, err = io.StringIO(), io.StringIO()
        d = execute(parse(*argv), memory.client(token), out, err)
        if settle:
            memory.agent.flush()
        return d, out, err

    def result(self, memory: Memory, *argv: str, token: str | None = ADMIN.secret
               ) -> tuple[int, str, str]:
        d, out, err = self.run_command(memory, list(argv), token)
        return self.successResultOf(d), out.getvalue(), err.getvalue()

    def test_status_table(self) -> None:
        """
        C{status} prints the view, the quorum line and a member table with
        the coordinator marked.
        """
        code, out, err = self.result(Memory(), "status")
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0], "cluster demo  node n1  view 3.7  coordinator n3")
        self.assertEqual(lines[1], "quorum: yes (mode majority, 2 present, 2 required)")
        self.assertEqual(lines[2].split(), ["NODE", "ADDRESS", "STATE", "INCARNATION",
                                            "DRAINING", "REASON"])
        self.assertEqual(lines[3].split(), ["n1", "127.0.0.1:7101", "alive", "1732800000", "no",
                                            "joined"])
        self.assertEqual(lines[4].split(), ["*", "n3", "127.0.0.1:7103", "alive", "1732800005",
                                            "no", "joined"])
        self.assertEqual(lines[3].index("n1"), lines[4].index("n3"))
        self.assertEqual(lines[5], "peers: n3 (connected)")

    def test_status_json(self) -> None:
        """
        C{status --json} prints the document as JSON.
        """
        code, out, _ = self.result(Memory(), "status", "--json")
        self.assertEqual((code, json.loads(out)), (0, CLUSTER_DOC))

    def test_status_not_joined(self) -> None:
        """
        A node outside any view is described as such.
        """
        text = format_status({"cluster_id": "demo", "node_id": "n1", "view": None,
                              "quorum": {"mode": "majority", "has_quorum": None}})
        self.assertIn("view none (not joined)", text)
        self.assertIn("quorum: unknown", text)
        self.assertIn("no members", text)

    def test_elect(self) -> None:
        """
        C{elect --prefer} asks for an election toward that node.
        """
        memory = Memory()
        code, out, _ = self.result(memory, "elect", "--prefer", "n2", token=OPERATOR.secret)
        self.assertEqual(code, 0)
        self.assertEqual(out, "election: epoch=4 started=true\n")
        self.assertEqual(memory.target.calls, [("force_election", "n2")])

    def test_remove_and_drain(self) -> None:
        """
        C{remove} and C{drain} act on the named member.
        """
        memory = Memory()
        self.assertEqual(self.result(memory, "remove", "n2")[:2],
                         (0, "removed n2: removed=true\n"))
        self.assertEqual(self.result(memory, "drain", "n3")[:2],
                         (0, "draining n3: draining=true\n"))

    def test_reload(self) -> None:
        """
        C{reload} prints what was applied, ignored and wrong; errors make the
        exit status 1.
        """
        memory = Memory()
        code, out, err = self.result(memory, "reload")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, "applied: logging.level\nignored: none\nerrors: none\n")
        memory.target.outcomes["reload_config"] = {
            "applied": [], "ignored": ["listen"], "errors": ["admin.tokens: bad role"]}
        code, out, err = self.result(memory, "reload")
        self.assertEqual(code, 1)
        self.assertIn("errors: admin.tokens: bad role", out)
        self.assertEqual(err, "clustron: reload reported 1 error(s)\n")

    def test_events(self) -> None:
        """
        C{events} prints one line per event until the stream ends.
        """
        memory = Memory()
        d, out, err = self.run_command(memory, ["events"], VIEWER.secret)
        memory.target.emit({"type": "member_suspect", "time": 0.5, "node_id": "n2",
                            "reason": "missed 4 heartbeats"})
        memory.agent.flush()
        self.assertEqual(
            out.getvalue(),
            '1970-01-01T00:00:00.500Z member_suspect node_id=n2 reason="missed 4 heartbeats"\n',
        )
        memory.root.api.close_streams()
        memory.agent.flush()
        self.assertEqual(self.successResultOf(d), 0)

    def test_events_json(self) -> None:
        """
        C{events --json} prints one JSON object per line.
        """
        memory = Memory()
        d, out, _ = self.run_command(memory, ["events", "--json"], VIEWER.secret)
        memory.target.emit({"type": "view", "time": 2.0})
        memory.agent.flush()
        self.assertEqual(json.loads(out.getvalue()), {"type": "view", "time": 2.0})
        memory.root.api.close_streams()
        memory.agent.flush()
        self.successResultOf(d)

    def test_unauthorized(self) -> None:
        """
        A refused token is one line on stderr and exit status 1.
        """
        code, out, err = self.result(Memory(), "status", token="wrong")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, "clustron: authentication failed: the bearer token is not valid\n")

    def test_forbidden(self) -> None:
        """
        A role too low is reported as such.
        """
        code, _, err = self.result(Memory(), "remove", "n2", token=OPERATOR.secret)
        self.assertEqual(code, 1)
        self.assertTrue(err.startswith("clustron: permission denied: member.remove needs role "
                                       "'admin'"), err)

    def test_unknown_member(self) -> None:
        """
        Other API errors name the action, status and code.
        """
        memory = Memory()
        memory.target.outcomes["drain_member"] = Failure(UnknownMember("no member n9"))
        code, _, err = self.result(memory, "drain", "n9")
        self.assertEqual(code, 1)
        self.assertEqual(err, "clustron: drain failed (404 unknown_member): no member n9\n")

    def test_connection_refused(self) -> None:
        """
        An unreachable API is reported with its URL.
        """
        client = AdminClient(URL, "t", agent=FailingAgent(ConnectionRefusedError()))
        err = io.StringIO()
        d = execute(parse("status"), client, io.StringIO(), err)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(
            err.getvalue(),
            f"clustron: cannot reach admin API at {URL}: connection refused\n",
        )

    def test_describe_failure(self) -> None:
        """
        Transport failures are described in one line naming the URL.
        """
        cases = [
            (DNSLookupError("admin.test"), "cannot resolve the host name"),
            (TimeoutError(), "did not answer in time"),
            (ResponseNeverReceived([Failure(ConnectionDone("closed"))]),
             "connection to admin API at"),
            (RuntimeError("odd"), "status failed: RuntimeError: odd"),
        ]
        for error, words in cases:
            text = describe_failure(Failure(error), URL, "status")
            self.assertIn(words, text)
            self.assertNotIn("\n", text)

    def test_format_event(self) -> None:
        """
        An event line is UTC time, type, then the other fields sorted.
        """
        self.assertEqual(
            format_event({"type": "view", "time": 86400, "view": {"epoch": 1}, "b": "x"}),
            '1970-01-02T00:00:00.000Z view b=x view={"epoch": 1}',
        )
        self.assertEqual(format_event({"type": "x"}), "- x")


class RunTests(SynchronousTestCase):
    def test_settings_error(self) -> None:
        """
        C{run} reports an unreadable token file before starting anything.
        """
        err = io.StringIO()
        self.patch(admin_commands.sys, "stderr", err)
        missing = self.mktemp()
        self.assertEqual(admin_commands.run(parse("status", "--token-file", missing)), 1)
        self.assertIn(f"cannot read token file {missing}", err.getvalue())
