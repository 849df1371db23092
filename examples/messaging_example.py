"""
Clustron embedded in a Twisted program: one node, and every messaging call.

Run three of them, each in its own terminal, from the repository root (the
three files name each other as seeds and form one cluster of three)::

    python examples/messaging_example.py examples/n1.yaml
    python examples/messaging_example.py examples/n2.yaml
    python examples/messaging_example.py examples/n3.yaml

Each process starts a node from its YAML file, registers its handlers,
waits until it is a member of a view with C{--expect} members (3), and then
walks through the messaging API, printing what it does:

 1. C{request}: asks every other member to C{greet} and prints the replies;
 2. the errors a request can meet: C{RemoteError} (the handler raised, or
    there is no handler for the topic), C{RequestTimeout}, C{UnknownMember};
 3. C{send}: a reliable unicast, which fires once acknowledged;
 4. C{broadcast} in C{fifo}, C{causal} and C{total} order, and an
    unreliable one, then waits until it has the broadcasts of every member
    and prints the total order it delivered (the same on every node);
 5. back-pressure: C{--bulk} sends (1000) through a window of 128 in
    flight, as a sender that respects C{QueueFull} does;
 6. large messages: one of 300 kB (sent in fragments), one over
    C{messaging.max_message_bytes}, which fails at once with
    C{MessageTooLarge}, and a request whose reply is over it (a
    C{RemoteError}).

It prints a JSON summary, keeps answering the others for C{--linger}
seconds (5) so that slower nodes finish their walk too, and leaves the
cluster gracefully. Ctrl-C leaves at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.task import deferLater

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, _ROOT)

from clustron import (  # noqa: E402
    ClusterNode,
    ConfigError,
    MessageTooLarge,
    NodeConfig,
    QueueFull,
    RemoteError,
    RequestTimeout,
    UnknownMember,
)
from clustron.messaging.message import Message  # noqa: E402

#: How many broadcasts of each order every member sends.
ROUNDS = 3

#: Sends allowed in flight at once in the back-pressure step.
WINDOW = 128

#: The size of the large message (several fragments of the default 64 KiB).
LARGE_BYTES = 300_000


class MessagingDemo:
    """
    The walk through the messaging API that one node makes.

    @ivar node: the L{ClusterNode}.
    @ivar received: what this node's handlers got, by kind.
    """

    def __init__(
        self,
        node: ClusterNode,
        expect: int = 3,
        bulk: int = 1000,
        out: Callable[[str], None] = print,
    ) -> None:
        """
        Register the handlers (before the node starts, so nothing is missed).

        @param expect: how many members to wait for before starting.
        @param bulk: how many messages the back-pressure step sends.
        @param out: where progress lines go.
        """
        self.node = node
        self.expect = expect
        self.bulk = bulk
        self.out = out
        self.received: dict[str, list[Any]] = {
            "notes": [],
            "fifo": [],
            "causal": [],
            "total": [],
            "ticks": [],
            "bulk": [],
            "large": [],
        }
        node.on_message("greet", self._greet)
        node.on_message("fail", self._fail)
        node.on_message("slow", self._slow)
        node.on_message("huge", self._huge)
        node.on_message("note", lambda m: self.received["notes"].append((m.sender, m.body)))
        node.on_message("chat", lambda m: self.received["fifo"].append((m.sender, m.body)))
        node.on_message("thread", self._thread)
        node.on_message("ledger", self._ledger)
        node.on_message("tick", lambda m: self.received["ticks"].append(m.sender))
        node.on_message("bulk", lambda m: self.received["bulk"].append(m.sender))
        node.on_message("large", lambda m: self.received["large"].append((m.sender, len(m.body))))

    # -- handlers: their return value (or Deferred) is the reply to a request --

    def _greet(self, message: Message) -> dict[str, Any]:
        return {"hello": message.body["from"], "from": self.node.node_id}

    def _fail(self, message: Message) -> None:
        raise KeyError(f"no account {message.body!r}")

    def _slow(self, message: Message) -> Deferred[str]:
        # A reply that takes longer than the caller is willing to wait.
        return deferLater(self.node.reactor, 2.0, lambda: "too late")

    def _huge(self, message: Message) -> str:
        # A reply over the size limit: the caller gets a RemoteError.
        return "x" * (self.node.config.messaging.max_message_bytes + 1)

    def _thread(self, message: Message) -> None:
        self.received["causal"].append((message.sender, message.body))
        if message.body["kind"] == "question" and message.sender != self.node.node_id:
            # Everyone who sees this answer has seen the question first.
            self.node.broadcast(
                "thread",
                {"kind": "answer", "to": message.body["id"], "id": f"{self.node.node_id}-a"},
                order="causal",
            )

    def _ledger(self, message: Message) -> None:
        assert message.position is not None
        position = [message.position.epoch, message.position.seq]
        self.received["total"].append((position, message.sender, message.body))

    # -- the walk ----------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """
        Walk through the API once this node is in a view of C{expect}
        members.

        @return: a summary of what happened.
        """
        node, me = self.node, self.node.node_id
        summary: dict[str, Any] = {"node_id": me}
        view = await node.when_joined()
        self.out(f"{me}: joined view {view.epoch}.{view.seq}; waiting for {self.expect} members")
        members = await self._until(self._members_ready, "all members")
        peers = [m for m in members if m != me]
        self.out(f"{me}: members {members}, coordinator {node.view.coordinator}")

        # 1. Request/response: the handler's return value is the reply.
        summary["replies"] = {}
        for peer in peers:
            reply = await node.request(peer, "greet", {"from": me}, timeout=5.0)
            summary["replies"][peer] = reply
            self.out(f"{me}: {peer} replied {reply}")

        # 2. The errors of a request.
        summary["errors"] = {}
        try:
            await node.request(peers[0], "fail", "acme")
        except RemoteError as e:
            summary["errors"]["handler_raised"] = [type(e).__name__, e.type_name]
            self.out(f"{me}: RemoteError from {peers[0]}: {e.type_name}: {e.message}")
        try:
            await node.request(peers[0], "no-such-topic", None)
        except RemoteError as e:
            summary["errors"]["no_handler"] = [type(e).__name__, e.type_name]
        try:
            await node.request(peers[0], "slow", None, timeout=0.5)
        except RequestTimeout as e:
            summary["errors"]["timeout"] = [type(e).__name__]
            self.out(f"{me}: {e}")
        try:
            await node.request("nobody", "greet", {"from": me})
        except UnknownMember as e:
            summary["errors"]["unknown_member"] = [type(e).__name__]

        # 3. A reliable unicast: fires once the peer acknowledged it.
        await node.send(peers[0], "note", f"hello from {me}")

        # 4. Broadcasts, to every member including this one.
        for i in range(ROUNDS):
            await node.broadcast("chat", {"n": i}, order="fifo")
        await node.broadcast("thread", {"kind": "question", "id": f"{me}-q"}, order="causal")
        for i in range(ROUNDS):
            await node.broadcast("ledger", {"entry": f"{me}-{i}"}, order="total")
        await node.broadcast("tick", None, order="fifo", reliable=False)
        size = len(members)
        await self._until(
            lambda: len(self.received["fifo"]) >= ROUNDS * size
            and len(self.received["total"]) >= ROUNDS * size
            and len(self.received["causal"]) >= size + size * (size - 1),
            "everyone's broadcasts",
        )
        summary["fifo_in_order"] = all(
            [b["n"] for s, b in self.received["fifo"] if s == sender] == list(range(ROUNDS))
            for sender in members
        )
        summary["causal_answers_after_questions"] = self._answers_follow_questions()
        summary["total_order"] = [body["entry"] for _, _, body in self.received["total"]]
        self.out(f"{me}: total order delivered here: {summary['total_order']}")

        # 5. Back-pressure: keep at most WINDOW sends in flight. Each Deferred
        # fires once acknowledged, so the window follows the slowest link;
        # beyond messaging.max_in_flight (+ as many pending) a send fails at
        # once with QueueFull instead of growing memory.
        window = DeferredSemaphore(WINDOW)
        refused = 0

        def one(i: int) -> Deferred[None]:
            return node.send(peers[i % len(peers)], "bulk", i)

        results = [window.run(one, i) for i in range(self.bulk)]
        for d in results:
            try:
                await d
            except QueueFull:
                refused += 1
        summary["bulk"] = {"sent": self.bulk, "refused": refused}

        # 6. Large messages: split into fragments that never hold up
        # heartbeats; over the limit, refused at once.
        await node.send(peers[0], "large", "x" * LARGE_BYTES)
        limit = node.config.messaging.max_message_bytes
        try:
            await node.send(peers[0], "large", "x" * (limit + 1))
        except MessageTooLarge as e:
            summary["errors"]["too_large"] = [type(e).__name__]
            self.out(f"{me}: {e}")
        try:
            await node.request(peers[0], "huge", None)
        except RemoteError as e:
            summary["errors"]["reply_too_large"] = [type(e).__name__, e.type_name]
        self.out(f"{me}: done")
        return summary

    def _members_ready(self) -> list[str] | None:
        view = self.node.view
        if view is None:
            return None
        members = sorted(view.active_ids())
        return members if len(members) >= self.expect else None

    def _answers_follow_questions(self) -> bool:
        seen: set[str] = set()
        for _, body in self.received["causal"]:
            if body["kind"] == "question":
                seen.add(body["id"])
            elif body["to"] not in seen:
                return False
        return True

    async def _until(self, predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
        clock = self.node.reactor
        deadline = clock.seconds() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if clock.seconds() >= deadline:
                raise TimeoutError(f"{self.node.node_id}: gave up waiting for {what}")
            await deferLater(clock, 0.05, lambda: None)


def main(argv: list[str] | None = None) -> int:
    """
    Start a node from a YAML file and walk through the messaging API.
    """
    parser = argparse.ArgumentParser(description="Clustron messaging, embedded.")
    parser.add_argument("config", help="the node's YAML configuration file")
    parser.add_argument("--expect", type=int, default=3, help="members to wait for (3)")
    parser.add_argument("--bulk", type=int, default=1000, help="back-pressure sends (1000)")
    parser.add_argument("--linger", type=float, default=5.0, help="seconds to stay afterwards")
    args = parser.parse_args(argv)
    try:
        config = NodeConfig.from_file(args.config)
    except ConfigError as e:
        print(f"{args.config}: invalid configuration:\n{e.render()}", file=sys.stderr)
        return 2

    from twisted.internet import reactor
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    # Clustron logs through twisted.logger; show warnings and errors.
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
            )
        ],
        redirectStandardIO=False,
    )
    node = ClusterNode(config, reactor)
    demo = MessagingDemo(node, expect=args.expect, bulk=args.bulk, out=_say)
    # Leave the cluster gracefully however the reactor stops (Ctrl-C too).
    reactor.addSystemEventTrigger("before", "shutdown", node.stopService)
    status: list[int] = []

    async def session() -> None:
        summary = await demo.run()
        print(json.dumps(summary, sort_keys=True), flush=True)
        await deferLater(reactor, args.linger, lambda: None)

    def finished(result: Any) -> None:
        if hasattr(result, "getTraceback"):
            print(result.getTraceback(), file=sys.stderr)
            status.append(1)
        if reactor.running:
            reactor.stop()

    node.startService()
    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(session()).addBoth(finished))
    reactor.run()
    return status[0] if status else 0


def _say(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
