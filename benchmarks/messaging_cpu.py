"""
CPU cost of Clustron messaging per operation, both ends in one process.

    python benchmarks/messaging_cpu.py                 # times
    python benchmarks/messaging_cpu.py --calls         # Python calls per operation
    python benchmarks/messaging_cpu.py --profile FILE  # a cProfile dump

Two L{ClusterNode}s (and, for comparison, a plain Twisted
C{Int32StringReceiver} echo pair) run in this one process on loopback TCP,
so every microsecond of both ends, system calls included, is spent on one
core one after the other: the figures are the whole CPU cost of an
operation, with no scheduling between processes in them. This is a
development tool for finding where the time goes, not the benchmark of
record (that is C{messaging.py}, with each party in its own process).

Measured, each after a warm-up:

 - B{wire}: strictly sequential round trips of the wire alone: a frame
   with a 64-character string that the peer's mesh sends straight back
   (framing, CRC32, JSON, the connection and mesh layers; no messaging);
   against a plain echo round trip.
 - B{rtt}: strictly sequential C{node.request(peer, "echo", 64 bytes)};
   against a plain echo round trip.
 - B{send}: C{node.send(peer, "sink", 64 bytes)} with a window of 256
   outstanding (a send completes when acknowledged); against a plain echo
   with the same window.

Prints one JSON line: wall-clock and CPU (this process's, system calls
included) microseconds per operation, and with C{--calls} the number of
Python function calls per operation. On a machine busy with other work the
CPU figures are the steadier ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

HOST = "127.0.0.1"
PAYLOAD_TEXT = "x" * 64
#: A frame type no Clustron layer uses, for the wire-only round trips.
WIRE_ECHO = 200


def _config(node_id: str, port: int, ports: list[int], tls: str | None) -> Any:
    from clustron.config import NodeConfig

    config: dict[str, Any] = {
        "cluster_id": "cpu",
        "node_id": node_id,
        "listen": f"tcp:{port}:interface={HOST}",
        "advertise": f"{HOST}:{port}",
        "profile": "lan",
        "discovery": {"static": {"seeds": [f"{HOST}:{p}" for p in ports]}},
        "membership": {"bootstrap_expect": len(ports)},
        "logging": {"level": "info"},
    }
    if tls is not None:
        config["transport"] = "tls"
        config["tls"] = {
            "ca": os.path.join(tls, "ca.crt"),
            "cert": os.path.join(tls, f"{node_id}.crt"),
            "key": os.path.join(tls, f"{node_id}.key"),
        }
    return NodeConfig.from_dict(config)


class _Meter:
    """
    Run C{count} operations (at most C{window} outstanding), optionally
    under a profiler; C{done} fires with the elapsed seconds.
    """

    def __init__(self, issue: Any, count: int, window: int, profiler: Any = None) -> None:
        from twisted.internet.defer import Deferred

        self._issue = issue
        self._left = count
        self._outstanding = 0
        self._window = window
        self._profiler = profiler
        self._filling = False
        self.done: Deferred[float] = Deferred()

    def start(self) -> Any:
        if self._profiler is not None:
            self._profiler.enable()
        self._started = time.perf_counter()
        self._cpu_started = time.process_time()
        self._fill()
        return self.done

    def _fill(self) -> None:
        if self._filling:
            return
        self._filling = True
        while self._left and self._outstanding < self._window:
            self._left -= 1
            self._outstanding += 1
            self._issue().addCallbacks(self._ok, self._failed)
        self._filling = False
        if not self._left and not self._outstanding and not self.done.called:
            elapsed = time.perf_counter() - self._started
            cpu = time.process_time() - self._cpu_started
            if self._profiler is not None:
                self._profiler.disable()
            self.done.callback((elapsed, cpu))

    def _ok(self, _: Any) -> None:
        self._outstanding -= 1
        self._fill()

    def _failed(self, failure: Any) -> None:
        if not self.done.called:
            self.done.errback(failure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="operations per measurement")
    parser.add_argument("--calls", action="store_true", help="count Python calls per operation")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="write cProfile dumps of each Clustron run to FILE.NAME (and of plain to"
        " FILE.NAME.plain)",
    )
    parser.add_argument("--tls", action="store_true", help="the nodes use mutual TLS")
    parser.add_argument(
        "--gc", choices=["on", "freeze", "off"], default="on", help="garbage collection"
    )
    parser.add_argument(
        "--only", choices=["wire", "rtt", "send", "request"], help="measure one only"
    )
    args = parser.parse_args()

    import cProfile
    import tempfile

    from twisted.internet import defer, reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import Int32StringReceiver

    from clustron.node import ClusterNode
    from clustron.testkit.processes import free_ports

    certs = None
    if args.tls:
        from clustron.security.certs import create_ca, issue_node_cert

        certs = os.path.join(tempfile.mkdtemp(prefix="clustron-cpu-"), "certs")
        create_ca(certs)
        for node_id in "ab":
            issue_node_cert(certs, node_id)

    class Echo(Int32StringReceiver):
        MAX_LENGTH = 1 << 20

        def connectionMade(self) -> None:  # noqa: N802
            self.transport.setTcpNoDelay(True)

        def stringReceived(self, string: bytes) -> None:  # noqa: N802
            self.sendString(string)

    class Client(Int32StringReceiver):
        def __init__(self) -> None:
            self.waiting: list[Any] = []

        def connectionMade(self) -> None:  # noqa: N802
            self.transport.setTcpNoDelay(True)

        def stringReceived(self, string: bytes) -> None:  # noqa: N802
            self.waiting.pop(0).callback(None)

        def ask(self) -> Any:
            d: Any = defer.Deferred()
            self.waiting.append(d)
            self.sendString(PAYLOAD_TEXT.encode())
            return d

    results: dict[str, Any] = {"count": args.count}

    @defer.inlineCallbacks
    def run() -> Any:
        ports = free_ports(3)
        node_ports = ports[:2]
        nodes = [
            ClusterNode(_config(name, port, node_ports, certs), reactor)
            for name, port in zip("ab", node_ports, strict=True)
        ]
        for node in nodes:
            node.on_message("echo", lambda message: message.body)
            node.on_message("sink", lambda message: None)
            node.startService()
        yield defer.DeferredList([node.when_joined() for node in nodes])
        while not all(len(n.view.active_ids()) == 2 for n in nodes if n.view is not None):
            yield _sleep(0.05)
        port = yield TCP4ServerEndpoint(reactor, ports[2], interface=HOST).listen(
            Factory.forProtocol(Echo)
        )
        client = yield connectProtocol(TCP4ClientEndpoint(reactor, HOST, ports[2]), Client())
        a, b = nodes
        if args.gc != "on":
            import gc

            gc.collect()
            gc.freeze()
            if args.gc == "off":
                gc.disable()
        # The wire alone: frames of a type of their own (WIRE_ECHO) that b's
        # mesh sends straight back, and a's resolves one waiting Deferred.
        waiting: list[Any] = []
        b.mesh.frame_handlers[WIRE_ECHO] = lambda node, kind, body: b.mesh.send(node, kind, body)
        a.mesh.frame_handlers[WIRE_ECHO] = lambda node, kind, body: waiting.pop(0).callback(None)

        def wire_echo() -> Any:
            d: Any = defer.Deferred()
            waiting.append(d)
            a.mesh.send("b", WIRE_ECHO, PAYLOAD_TEXT)
            return d

        issuers = {
            "wire": (wire_echo, 1),
            "rtt": (lambda: a.request("b", "echo", PAYLOAD_TEXT), 1),
            "request": (lambda: a.request("b", "echo", PAYLOAD_TEXT), 256),
            "send": (lambda: a.send("b", "sink", PAYLOAD_TEXT), 256),
        }
        for name, (issue, window) in issuers.items():
            if args.only and name != args.only:
                continue
            yield _Meter(issue, args.count // 10, window).start()
            yield _Meter(client.ask, args.count // 10, window).start()
            elapsed, cpu = yield _Meter(issue, args.count, window).start()
            plain, plain_cpu = yield _Meter(client.ask, args.count, window).start()
            entry = {
                "clustron_us": round(elapsed / args.count * 1e6, 2),
                "plain_us": round(plain / args.count * 1e6, 2),
                "ratio": round(elapsed / plain, 2),
                "clustron_cpu_us": round(cpu / args.count * 1e6, 2),
                "plain_cpu_us": round(plain_cpu / args.count * 1e6, 2),
                "cpu_ratio": round(cpu / plain_cpu, 2),
            }
            if args.calls or args.profile:
                profiler = cProfile.Profile()
                n = min(args.count, 5000)
                yield _Meter(issue, n, window, profiler).start()
                import pstats

                stats = pstats.Stats(profiler)
                entry["calls_per_op"] = round(stats.total_calls / n, 1)  # type: ignore[attr-defined]
                if args.profile:
                    stats.dump_stats(f"{args.profile}.{name}")
                profiler = cProfile.Profile()
                yield _Meter(client.ask, n, window, profiler).start()
                stats = pstats.Stats(profiler)
                if args.profile:
                    stats.dump_stats(f"{args.profile}.{name}.plain")
                entry["plain_calls_per_op"] = round(stats.total_calls / n, 1)  # type: ignore[attr-defined]
            results[name] = entry
        client.transport.loseConnection()
        yield port.stopListening()
        for node in nodes:
            yield node.stopService()

    def _sleep(seconds: float) -> Any:
        d: Any = defer.Deferred()
        reactor.callLater(seconds, d.callback, None)
        return d

    def finish(result: Any) -> None:
        if isinstance(result, Exception) or hasattr(result, "printTraceback"):
            result.printTraceback()  # type: ignore[union-attr]
        reactor.stop()

    reactor.callWhenRunning(lambda: run().addBoth(finish))
    reactor.run()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
