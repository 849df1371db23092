"""
Fuzz the handshake: L{clustron.wire.handshake.Hello.from_dict} and
L{clustron.wire.handshake.check_hello} on JSON-decoded input, and a whole
handshake against a real L{clustron.wire.mesh.Mesh} (CRC32 or HMAC-SHA256
signing) through a L{clustron.wire.protocol.PeerProtocol}.

Each input picks one of three modes:

  - json: the rest of the input is decoded as JSON and parsed as a HELLO
    (and as a REJECT, which must never raise at all);
  - shaped: a HELLO-like mapping built from the input (mostly well formed,
    see C{shapes.py}) goes through JSON, C{Hello.from_dict} and
    C{check_hello};
  - session: a peer connects to a mesh and sends a HELLO, a PROOF (signed
    clusters), then a few frames, each well formed and correctly sealed or
    not, as the input decides; the mesh's handshake timer may fire.

Only L{ProtocolViolation}, L{FrameError} and L{SerializationError} may
escape the parsing functions; nothing may escape C{dataReceived}, and no
error may be logged by the protocol (it logs and closes on an exception
that is not a protocol violation: that is a crash too). An accepted HELLO
must survive C{to_dict}/C{from_dict} unchanged.

    python fuzz/fuzz_handshake.py -max_total_time=60
"""

from __future__ import annotations

import json
import os
import random
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import atheris  # noqa: E402
import attrs  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.error import ConnectionDone  # noqa: E402
from twisted.internet.testing import MemoryReactorClock, StringTransport  # noqa: E402
from twisted.logger import LogLevel, formatEvent, globalLogBeginner  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

with atheris.instrument_imports(include=["clustron"]):
    from clustron import plugins
    from clustron.config import NodeConfig, SecurityConfig
    from clustron.errors import FrameError, ProtocolViolation, SerializationError
    from clustron.observability.metrics import NodeMetrics
    from clustron.serializers.json import json_serializer
    from clustron.wire import framing
    from clustron.wire.framing import Crc32, FrameDecoder, HmacSha256, encode_frame
    from clustron.wire.handshake import Hello, Reject, check_hello
    from clustron.wire.mesh import Mesh

from shapes import Shaper  # noqa: E402

ALLOWED = (ProtocolViolation, FrameError, SerializationError)
KEYS = (b"a" * 32, b"b" * 32)
OURS = Hello(
    cluster_id="test",
    node_id="local",
    incarnation=5,
    protocol=(framing.PROTOCOL_MAJOR, framing.PROTOCOL_MINOR),
    app_version="1",
    address="127.0.0.1:7101",
    serializer="json",
    nonce="ours",
)
SERIALIZERS = frozenset({"json", "msgpack", "protobuf"})

#: Errors logged while an input ran (with a traceback, or at level error).
logged_failures: list[dict[str, Any]] = []


def _observe(event: dict[str, Any]) -> None:
    if "log_failure" in event or event.get("log_level") in (LogLevel.error, LogLevel.critical):
        logged_failures.append(event)


def _raise_logged() -> None:
    """
    Turn an error logged while the input ran into a crash.
    """
    if logged_failures:
        event = logged_failures[0]
        if "log_failure" in event:
            event["log_failure"].raiseException()
        raise AssertionError(f"error logged: {formatEvent(event)}")


def _hello(payload: Any) -> Hello | None:
    """
    Parse a HELLO payload; check what an accepted one must satisfy.
    """
    try:
        theirs = Hello.from_dict(payload)
    except ProtocolViolation:
        return None
    assert Hello.from_dict(json.loads(json.dumps(theirs.to_dict()))) == theirs
    verdict = check_hello(OURS, theirs, SERIALIZERS, {"mine"})
    assert verdict is None or (
        isinstance(verdict, tuple)
        and len(verdict) == 2
        and all(isinstance(v, str) for v in verdict)
    ), verdict
    return theirs


def _reject(payload: Any) -> None:
    reject = Reject.from_dict(payload)
    assert isinstance(reject.reason, str) and isinstance(reject.detail, str)


_CONFIGS: dict[str, NodeConfig] = {}


def _config(signing: str) -> NodeConfig:
    if signing not in _CONFIGS:
        base = NodeConfig.from_dict(
            {"cluster_id": "test", "node_id": "local", "listen": "tcp:7101:interface=127.0.0.1"}
        )
        security = SecurityConfig(signing, keys=KEYS if signing == "hmac-sha256" else ())
        _CONFIGS[signing] = attrs.evolve(base, security=security)
    return _CONFIGS[signing]


def _session(shaper: Shaper) -> None:
    """
    One connection from a fuzzed peer to a real mesh.
    """
    signing = shaper.pick(("crc32", "hmac-sha256", "none"))
    config = _config(signing)
    reactor = MemoryReactorClock()
    serializers = list(plugins.installed("serializer").values())
    mesh = Mesh(
        reactor,
        config,
        plugins.find("transport", "tcp"),
        json_serializer,
        serializers,
        NodeMetrics(),
        random.Random(1),
        5,
    )
    mesh.start()
    factory = reactor.tcpServers[0][1]
    peer_address = IPv4Address("TCP", "192.0.2.7", 40000)
    protocol = factory.buildProtocol(peer_address)
    transport = StringTransport(peerAddress=peer_address)
    protocol.makeConnection(transport)
    handshake = mesh.integrity_for(mesh.local_hello, None)
    written = FrameDecoder(1 << 20, mesh.integrity_for(mesh.local_hello, None))
    node_hello = Hello.from_dict(json.loads(written.feed(transport.value())[0].payload))

    hello_payload = shaper.hello()
    if shaper.flag():
        # Mostly acceptable: this cluster, a fresh id, matching signing.
        hello_payload = dict(hello_payload) if isinstance(hello_payload, dict) else {}
        hello_payload.update(
            cluster_id="test",
            protocol=[framing.PROTOCOL_MAJOR, 0],
            signing=signing,
            serializer="json",
            address="192.0.2.7:7101",
        )
        hello_payload.setdefault("node_id", "peer")
        hello_payload.setdefault("incarnation", 1)
        hello_payload.setdefault("app_version", "")
    try:
        hello_bytes = json_serializer.dumps(hello_payload)
    except SerializationError:
        hello_bytes = b"{"
    if shaper.fdp.ConsumeIntInRange(0, 9) == 0:
        hello_bytes = shaper.fdp.ConsumeBytes(shaper.fdp.ConsumeIntInRange(0, 64))
    sealer = handshake if shaper.fdp.ConsumeIntInRange(0, 9) else Crc32()
    frame_type = (
        framing.HELLO
        if shaper.fdp.ConsumeIntInRange(0, 9)
        else shaper.pick(sorted(framing.FRAME_TYPE_NAMES))
    )
    protocol.dataReceived(encode_frame(frame_type, hello_bytes, 1, sealer))
    try:
        peer_hello = Hello.from_dict(json.loads(hello_bytes))
    except (ValueError, UnicodeDecodeError, ProtocolViolation, RecursionError):
        peer_hello = None
    if signing == "hmac-sha256" and not protocol.closed:
        proof: Any = {"a": peer_hello.nonce if peer_hello else "", "b": node_hello.nonce}
        if shaper.fdp.ConsumeIntInRange(0, 5) == 0:
            proof = shaper.value(2)
        try:
            proof_bytes = json_serializer.dumps(proof)
        except SerializationError:
            proof_bytes = b"[]"
        protocol.dataReceived(encode_frame(framing.PROOF, proof_bytes, 1, handshake))
    session = mesh.integrity_for(node_hello, peer_hello) if peer_hello is not None else Crc32()
    if isinstance(session, HmacSha256) and shaper.fdp.ConsumeIntInRange(0, 7) == 0:
        session = HmacSha256([b"unknown key"], b"x")
    for _ in range(shaper.fdp.ConsumeIntInRange(0, 4)):
        if protocol.closed:
            break
        if shaper.fdp.ConsumeIntInRange(0, 7) == 0:
            protocol.dataReceived(shaper.fdp.ConsumeBytes(shaper.fdp.ConsumeIntInRange(0, 40)))
            continue
        frame_type = shaper.pick(sorted(framing.FRAME_TYPE_NAMES) + [0, 99])
        body = shaper.control(frame_type == framing.HEARTBEAT)
        if frame_type == framing.MESSAGE:
            body = shaper.envelope("peer")
        serializer = shaper.pick(serializers)
        try:
            payload = serializer.dumps(body)
        except SerializationError:
            continue
        protocol.dataReceived(encode_frame(frame_type, payload, serializer.wire_id, session))
    if shaper.flag():
        reactor.advance(config.wire.handshake_timeout + 1)
    if shaper.flag():
        mesh.stop()
    # The transport is a StringTransport: the connection ends only here.
    protocol.connectionLost(Failure(ConnectionDone()))
    mesh.stop()
    assert not mesh.peers, f"peers left after the connection closed: {sorted(mesh.peers)}"


def test_one_input(data: bytes) -> None:
    """
    One fuzz case; see the module docstring.
    """
    del logged_failures[:]
    shaper = Shaper(data, exotic=False)
    mode = shaper.fdp.ConsumeIntInRange(0, 2)
    if mode == 0:
        raw = shaper.fdp.ConsumeBytes(shaper.fdp.remaining_bytes())
        try:
            payload = json_serializer.loads(raw)
        except SerializationError:
            return
        _reject(payload)
        _hello(payload)
    elif mode == 1:
        try:
            payload = json_serializer.loads(json_serializer.dumps(shaper.hello()))
        except SerializationError:
            return
        _reject(payload)
        _hello(payload)
    else:
        _session(shaper)
    _raise_logged()


def main() -> None:
    """
    Run the fuzzer (libFuzzer options on the command line).
    """
    globalLogBeginner.beginLoggingTo([_observe], redirectStandardIO=False)
    argv = list(sys.argv)
    if not any(arg.startswith(("-len_control=", "-max_len=")) for arg in argv):
        # Inputs are slow to run: let them grow long (many messages, deep
        # values) from the start rather than after many runs.
        argv.append("-len_control=0")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
