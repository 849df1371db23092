"""
The admin API on real sockets: the service on port 0, the client over TCP
and TLS, the dashboard files, and the C{clustron} admin commands run as a
separate process.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from clustron.admin.auth import Authorizer
from clustron.admin.client import AdminClient, AdminRequestError
from clustron.admin.service import AdminService
from tests.test_admin_api import (
    ADMIN,
    CLUSTER_DOC,
    TOKENS,
    VIEWER,
    FakeTarget,
    make_certificate,
    make_static,
)

REPOSITORY = FilePath(__file__).parent().parent().parent().path

CLI = """
import argparse, sys
from clustron.cli import admin_commands
parser = argparse.ArgumentParser(prog="clustron")
admin_commands.add_parser(parser.add_subparsers(dest="command"))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


class SubscribeWatcher(FakeTarget):
    """
    A fake node that says when someone subscribes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.on_subscribe: Deferred[None] = Deferred()

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        unsubscribe = super().subscribe(callback)
        if not self.on_subscribe.called:
            self.on_subscribe.callback(None)
        return unsubscribe


class LiveTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def start(self, tls: tuple[str, str] | None = None) -> Generator[Any, Any, str]:
        self.target = SubscribeWatcher()
        self.audit_path = self.mktemp()
        self.service = AdminService(
            reactor,
            "tcp:0:interface=127.0.0.1",
            self.target,
            Authorizer(TOKENS),
            audit_log_path=self.audit_path,
            tls=tls,
            static_dir=make_static(FilePath(self.mktemp())),
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)
        port = yield self.service.when_listening()
        self.assertIs(port, self.service.port)
        scheme = "https" if tls else "http"
        return f"{scheme}://127.0.0.1:{port.getHost().port}"

    @inlineCallbacks
    def test_client(self) -> Generator[Any, Any, None]:
        """
        The client reads the cluster document and performs an action over TCP;
        the action is audited.
        """
        url = yield self.start()
        client = AdminClient(url, ADMIN.secret, reactor=reactor)
        doc = yield client.cluster()
        self.assertEqual(doc, CLUSTER_DOC)
        result = yield client.elect("n3")
        self.assertEqual(result, {"started": True, "epoch": 4})
        with open(self.audit_path, encoding="utf-8") as f:
            line = json.loads(f.readline())
        self.assertEqual((line["token"], line["action"], line["target"]), ("ops", "election", "n3"))
        self.assertTrue(line["remote"].startswith("127.0.0.1:"))
        viewer = AdminClient(url, VIEWER.secret, reactor=reactor)
        error = yield self.assertFailure(viewer.remove("n2"), AdminRequestError)
        self.assertEqual(error.status, 403)

    @inlineCallbacks
    def test_dashboard(self) -> Generator[Any, Any, None]:
        """
        The dashboard page and its files are served without a token.
        """
        url = yield self.start()
        agent = Agent(reactor)
        for path, body in [("/", b"<html>dashboard</html>"),
                           ("/static/app.js", b"console.log('hi');")]:
            response = yield agent.request(b"GET", (url + path).encode())
            got = yield readBody(response)
            self.assertEqual((response.code, got), (200, body), path)

    @inlineCallbacks
    def test_events(self) -> Generator[Any, Any, None]:
        """
        Events stream to the client as they happen; stopping the service ends
        the stream and the client's Deferred fires.
        """
        url = yield self.start()
        received: list[dict[str, Any]] = []
        first: Deferred[None] = Deferred()

        def on_event(event: dict[str, Any]) -> None:
            received.append(event)
            if not first.called:
                first.callback(None)

        stream = AdminClient(url, VIEWER.secret, reactor=reactor).events(on_event)
        yield self.target.on_subscribe
        self.target.emit({"type": "member_alive", "time": 5.0, "node_id": "n2"})
        yield first
        self.assertEqual(received, [{"type": "member_alive", "time": 5.0, "node_id": "n2"}])
        yield self.service.stopService()
        yield stream
        self.assertEqual(self.target.subscribers, [])

    @inlineCallbacks
    def test_events_query_token(self) -> Generator[Any, Any, None]:
        """
        A browser-style request with C{?token=} opens the stream.
        """
        url = yield self.start()
        agent = Agent(reactor)
        response = yield agent.request(
            b"GET",
            f"{url}/v1/events?token={VIEWER.secret}".encode(),
            Headers({b"Accept": [b"text/event-stream"]}),
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(len(self.target.subscribers), 1)
        body = readBody(response)
        yield self.service.stopService()
        yield body

    @inlineCallbacks
    def test_tls(self) -> Generator[Any, Any, None]:
        """
        Over HTTPS, a client trusting the certificate gets answers.
        """
        cert, key = make_certificate(FilePath(self.mktemp()))
        url = yield self.start(tls=(cert, key))
        client = AdminClient(url, ADMIN.secret, reactor=reactor, ca_cert=cert)
        doc = yield client.cluster()
        self.assertEqual(doc["cluster_id"], "demo")

    @inlineCallbacks
    def run_cli(self, *argv: str) -> Generator[Any, Any, tuple[str, str, int]]:
        env = dict(os.environ)
        env["PYTHONPATH"] = REPOSITORY + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("CLUSTRON_ADMIN", None)
        env.pop("CLUSTRON_TOKEN", None)
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-c", CLI, *argv], env=env, path=REPOSITORY
        )
        return out.decode(), err.decode(), code

    @inlineCallbacks
    def test_cli_status(self) -> Generator[Any, Any, None]:
        """
        C{clustron status} prints the member table.
        """
        url = yield self.start()
        token_file = os.path.abspath(self.mktemp())
        with open(token_file, "w", encoding="utf-8") as f:
            f.write(VIEWER.secret + "\n")
        out, err, code = yield self.run_cli("status", "--admin", url, "--token-file", token_file)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("coordinator n3", out)
        self.assertIn("* n3", out)

    @inlineCallbacks
    def test_cli_errors(self) -> Generator[Any, Any, None]:
        """
        A role too low and an unreachable API each give one line on stderr
        and exit status 1.
        """
        url = yield self.start()
        out, err, code = yield self.run_cli("remove", "n2", "--admin", url,
                                            "--token", VIEWER.secret)
        self.assertEqual(code, 1)
        self.assertEqual(err.count("\n"), 1)
        self.assertIn("clustron: permission denied: member.remove needs role 'admin'", err)

        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Protocol)
        )
        closed = f"http://127.0.0.1:{port.getHost().port}"
        yield port.stopListening()
        out, err, code = yield self.run_cli("status", "--admin", closed, "--token", "x")
        self.assertEqual(code, 1)
        self.assertEqual(err, f"clustron: cannot reach admin API at {closed}: connection refused\n")
