"""
Request/response round trips of 64-byte payloads between two processes:
Clustron's wire against a plain Twisted C{Int32StringReceiver} echo.

    python benchmarks/wire_rtt.py [--count 20000] [--warmup 2000] [--seconds 60]

This process is the client of both. It starts two echo servers as child
processes (this same script with C{--serve clustron} or C{--serve plain}):

 - C{clustron}: a L{clustron.wire.mesh.Mesh} (handshake, framing with CRC32,
   JSON serializer, bounded send queues, TCP_NODELAY) that sends every
   MESSAGE frame it receives back to its sender. The client is a Mesh too,
   connected through the normal dial and handshake. Only the wire is
   measured: no membership traffic runs on either side.
 - C{plain}: a Twisted C{Int32StringReceiver} that sends every string back,
   with TCP_NODELAY on both ends as well.

After a warm-up, round trips run strictly one after another (the next request
leaves when the previous answer arrived), alternating between the two
servers in blocks of C{--block} so that both see the same machine load. The
run stops after C{--count} round trips each or C{--seconds}, whichever comes
first. It prints one JSON line: p50/p99/mean in microseconds, sample counts,
bytes per frame on the wire, and the Clustron/plain ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

PAYLOAD_BYTES = 64
HOST = "127.0.0.1"

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def _mesh(reactor: Any, node_id: str, port: int) -> Any:
    """
    A Mesh for node C{node_id} of cluster C{bench}, listening on C{port}.
    """
    from clustron import plugins
    from clustron.config import NodeConfig
    from clustron.observability.metrics import NodeMetrics
    from clustron.wire.mesh import Mesh

    config = NodeConfig.from_dict(
        {
            "cluster_id": "bench",
            "node_id": node_id,
            "listen": f"tcp:{port}:interface={HOST}",
            "advertise": f"{HOST}:{port}",
            "discovery": {"static": {"seeds": []}},
        }
    )
    return Mesh(
        reactor,
        config,
        plugins.find("transport", "tcp"),
        plugins.find("serializer", "json"),
        list(plugins.installed("serializer").values()),
        NodeMetrics(),
        random.Random(),
        int(time.time() * 1000),
    )


def _no_delay(transport: Any) -> None:
    """
    Turn Nagle's algorithm off, as Clustron's tcp transport does.
    """
    transport.setTcpNoDelay(True)


# -- servers (child processes) -------------------------------------------------


def _exit_with_parent(reactor: Any) -> None:
    """
    Stop the reactor when standard input closes (the client went away).
    """
    from twisted.internet import stdio
    from twisted.internet.protocol import Protocol

    class ParentWatch(Protocol):
        def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
            if reactor.running:
                reactor.stop()

    stdio.StandardIO(ParentWatch())


def serve_clustron(port: int) -> None:
    """
    Echo every MESSAGE frame back to its sender over a Mesh on C{port}.
    """
    from twisted.internet import reactor

    from clustron.wire import framing

    mesh = _mesh(reactor, "server", port)

    def echo(node_id: str, frame_type: int, body: Any) -> None:
        if frame_type == framing.MESSAGE:
            mesh.send(node_id, framing.MESSAGE, body)

    mesh.on_frame = echo

    def listening(_: Any) -> None:
        sys.stdout.write(f"READY {port}\n")
        sys.stdout.flush()

    reactor.callWhenRunning(lambda: mesh.start().addCallback(listening))
    _exit_with_parent(reactor)
    reactor.run()


def serve_plain(port: int) -> None:
    """
    Echo every string back over a Twisted C{Int32StringReceiver} on C{port}.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import Int32StringReceiver

    class Echo(Int32StringReceiver):
        MAX_LENGTH = 1 << 20

        def connectionMade(self) -> None:  # noqa: N802
            _no_delay(self.transport)

        def stringReceived(self, string: bytes) -> None:  # noqa: N802
            self.sendString(string)

    def listening(_: Any) -> None:
        sys.stdout.write(f"READY {port}\n")
        sys.stdout.flush()

    endpoint = TCP4ServerEndpoint(reactor, port, interface=HOST)
    reactor.callWhenRunning(
        lambda: endpoint.listen(Factory.forProtocol(Echo)).addCallback(listening)
    )
    _exit_with_parent(reactor)
    reactor.run()


# -- client --------------------------------------------------------------------


class _Pinger:
    """
    Sequential round trips over one connection: C{run(n, done)} sends a
    request, waits for the answer, records the time, and repeats C{n} times.
    """

    def __init__(self, send: Callable[[], None]) -> None:
        self._send = send
        self.samples: list[int] = []
        self._left = 0
        self._sent_at = 0
        self._record = True
        self._done: Callable[[], None] = lambda: None

    def run(self, count: int, record: bool, done: Callable[[], None]) -> None:
        self._left = count
        self._record = record
        self._done = done
        self._next()

    def _next(self) -> None:
        if self._left == 0:
            self._done()
            return
        self._left -= 1
        self._sent_at = time.perf_counter_ns()
        self._send()

    def answered(self) -> None:
        elapsed = time.perf_counter_ns() - self._sent_at
        if self._record:
            self.samples.append(elapsed)
        self._next()


def _start_server(kind: str, port: int) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH", "")) if p)
    process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", kind, "--port", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("READY"):
        process.kill()
        raise RuntimeError(f"{kind} echo server did not start (said {line!r})")
    return process


def _percentile(sorted_values: list[int], q: float) -> float:
    index = max(0, min(len(sorted_values) - 1, int(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index] / 1000.0


def _summary(samples: list[int], frame_bytes: int) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "samples": len(ordered),
        "p50_us": round(_percentile(ordered, 0.50), 1),
        "p99_us": round(_percentile(ordered, 0.99), 1),
        "mean_us": round(sum(ordered) / len(ordered) / 1000.0, 1),
        "min_us": round(ordered[0] / 1000.0, 1),
        "frame_bytes": frame_bytes,
    }


def run_client(args: argparse.Namespace) -> dict[str, Any]:
    """
    Start both servers, measure, stop them.

    @return: the result document.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, maybeDeferred
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.protocols.basic import Int32StringReceiver
    from twisted.python.failure import Failure

    from clustron.serializers.json import json_serializer
    from clustron.testkit.processes import free_ports
    from clustron.wire import framing
    from clustron.wire.framing import Crc32, encode_frame

    clustron_port, plain_port, client_port = free_ports(3)
    servers = [_start_server("clustron", clustron_port), _start_server("plain", plain_port)]
    payload_text = "x" * PAYLOAD_BYTES
    payload_bytes = b"x" * PAYLOAD_BYTES
    result: dict[str, Any] = {}
    failure: list[BaseException] = []

    mesh = _mesh(reactor, "client", client_port)
    mesh_up: Deferred[None] = Deferred()
    clustron_pinger = _Pinger(lambda: mesh.send("server", framing.MESSAGE, payload_text))

    def on_frame(node_id: str, frame_type: int, body: Any) -> None:
        if frame_type == framing.MESSAGE:
            clustron_pinger.answered()

    def on_peer_up(hello: Any) -> None:
        if not mesh_up.called:
            mesh_up.callback(None)

    mesh.on_frame = on_frame
    mesh.on_peer_up = on_peer_up

    class PlainClient(Int32StringReceiver):
        MAX_LENGTH = 1 << 20

        def connectionMade(self) -> None:  # noqa: N802
            _no_delay(self.transport)

        def stringReceived(self, string: bytes) -> None:  # noqa: N802
            plain_pinger.answered()

    plain = PlainClient()
    plain_pinger = _Pinger(lambda: plain.sendString(payload_bytes))

    def phase(pinger: _Pinger, count: int, record: bool) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        pinger.run(count, record, lambda: d.callback(None))
        return d

    async def measure() -> None:
        await mesh.start()
        mesh.set_addresses("bench", {(HOST, clustron_port)})
        await mesh_up
        await connectProtocol(TCP4ClientEndpoint(reactor, HOST, plain_port), plain)
        await phase(clustron_pinger, args.warmup, False)
        await phase(plain_pinger, args.warmup, False)
        deadline = time.monotonic() + args.seconds
        while (
            len(plain_pinger.samples) < args.count or len(clustron_pinger.samples) < args.count
        ) and time.monotonic() < deadline:
            block = min(args.block, args.count - len(clustron_pinger.samples))
            if block > 0:
                await phase(clustron_pinger, block, True)
            block = min(args.block, args.count - len(plain_pinger.samples))
            if block > 0:
                await phase(plain_pinger, block, True)
        clustron_frame = len(
            encode_frame(framing.MESSAGE, json_serializer.dumps(payload_text), 1, Crc32())
        )
        c = _summary(clustron_pinger.samples, clustron_frame)
        p = _summary(plain_pinger.samples, 4 + PAYLOAD_BYTES)
        result.update(
            {
                "benchmark": "wire_rtt",
                "payload_bytes": PAYLOAD_BYTES,
                "warmup": args.warmup,
                "clustron": c,
                "twisted_int32": p,
                "ratio_p50": round(c["p50_us"] / p["p50_us"], 2),
                "ratio_p99": round(c["p99_us"] / p["p99_us"], 2),
                "ratio_mean": round(c["mean_us"] / p["mean_us"], 2),
                "python": platform.python_version(),
                "reactor": type(reactor).__name__,
                "cpus": os.cpu_count(),
            }
        )

    def finish(outcome: Any) -> None:
        if isinstance(outcome, Failure):
            failure.append(outcome.value)
        if plain.transport is not None:
            plain.transport.loseConnection()
        maybeDeferred(mesh.stop).addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(measure()).addBoth(finish))
    try:
        reactor.run()
    finally:
        for server in servers:
            if server.stdin is not None:
                server.stdin.close()
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    if failure:
        raise failure[0]
    return result


def main(argv: list[str] | None = None) -> int:
    """
    Run the benchmark (or, with C{--serve}, one echo server).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="round trips each (default 20000)")
    parser.add_argument(
        "--warmup", type=int, default=2000, help="unrecorded round trips each, first"
    )
    parser.add_argument("--block", type=int, default=1000, help="round trips per alternation block")
    parser.add_argument("--seconds", type=float, default=60.0, help="time bound of the measurement")
    parser.add_argument("--serve", choices=["clustron", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        (serve_clustron if args.serve == "clustron" else serve_plain)(args.port)
        return 0
    if args.count < 1 or args.warmup < 0 or args.block < 1:
        parser.error("--count and --block must be at least 1, --warmup at least 0")
    print(json.dumps(run_client(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
