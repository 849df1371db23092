"""
Hostile clients against a live C{twistd clustron} node: raw sockets that
send garbage, an oversized length prefix, a frame with a bad checksum, a
HELLO from another cluster, random bytes, or nothing at all.

Each time the node closes the socket, counts the reason in its metrics, and
carries on: the process keeps running, it keeps its view and its connection
to the other member.
"""

from __future__ import annotations

import random
import socket
import struct
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from clustron.serializers.json import json_serializer
from clustron.testkit.processes import HOST, ProcessCluster
from clustron.wire import framing
from clustron.wire.framing import Crc32, FrameDecoder, encode_frame
from clustron.wire.handshake import CLUSTER_ID_MISMATCH, Hello, Reject

#: A max_frame_bytes below the default (and above messaging.fragment_bytes).
MAX_FRAME = 262144

#: The node under attack.
TARGET = "n1"


def hello_frame(cluster_id: str, node_id: str = "intruder") -> bytes:
    """
    A well-formed HELLO frame (JSON payload, CRC32 trailer).
    """
    hello = Hello(
        cluster_id=cluster_id,
        node_id=node_id,
        incarnation=1,
        protocol=(framing.PROTOCOL_MAJOR, framing.PROTOCOL_MINOR),
        app_version="",
        address=f"{HOST}:9",
        serializer="json",
    )
    return encode_frame(framing.HELLO, json_serializer.dumps(hello.to_dict()), 1, Crc32())


def send_and_read_until_closed(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """
    Connect, send C{data}, and read until the node closes the connection.

    @return: everything the node sent.
    @raise TimeoutError: when the node keeps the connection open.
    """
    received = bytearray()
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        if data:
            s.sendall(data)
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise TimeoutError(f"the node kept the connection open for {timeout} s") from None
            if not chunk:
                break
            received += chunk
    return bytes(received)


def counters(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    Every counter sample of a Prometheus text page, by name and labels.
    """
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_total"):
                values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


class HostileClientTests(TestCase):
    """
    One two-node cluster per test; a raw socket client attacks C{n1}.
    """

    timeout = 60

    def run_attack(self, data: bytes, metric: str, labels: dict[str, str] | None) -> Any:
        """
        Start the cluster, send C{data} to C{n1}, and check that C{n1}
        closed the connection, counted C{metric} (with C{labels}, or any
        labels when None) once more, and kept everything else.

        @return: a Deferred firing with what the node sent before closing.
        """
        cluster = ProcessCluster(
            2,
            directory=self.mktemp(),
            overrides={"wire": {"max_frame_bytes": MAX_FRAME, "handshake_timeout": 1.0}},
        )
        self.addCleanup(cluster.stop)
        return deferToThread(self._attack, cluster, data, metric, labels)

    def _attack(
        self,
        cluster: ProcessCluster,
        data: bytes,
        metric: str,
        labels: dict[str, str] | None,
    ) -> bytes:
        cluster.start()
        view = cluster.wait_formed(timeout=30.0)
        before = counters(cluster.metrics_text(TARGET))

        def counted(values: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
            return sum(
                v
                for (name, sample_labels), v in values.items()
                if name == metric
                and (labels is None or dict(sample_labels) == labels)
            )

        received = send_and_read_until_closed(cluster.nodes[TARGET].cluster_port, data)

        cluster.wait_for(
            lambda: counted(counters(cluster.metrics_text(TARGET))) == counted(before) + 1,
            5.0,
            f"{metric} {labels} counted once more",
        )
        node = cluster.nodes[TARGET]
        self.assertTrue(node.running, "the node exited")
        self.assertEqual(cluster.formed(), view, "the view changed")
        self.assertEqual(cluster.connected_peers(TARGET), {"n2"})
        # The node still talks the protocol to a well-behaved peer: it
        # answers a fresh connection with its HELLO.
        frames = FrameDecoder(MAX_FRAME, Crc32()).feed(
            send_and_read_until_closed(node.cluster_port, hello_frame("other"))
        )
        self.assertEqual(frames[0].frame_type, framing.HELLO)
        return received

    def test_garbage(self) -> Any:
        """
        Bytes that are not a Clustron frame (no magic) close the connection
        with reason C{bad_magic}.
        """
        data = struct.pack(">I", 16) + b"GET / HTTP/1.1\r\n"
        return self.run_attack(data, "clustron_frame_errors_total", {"reason": "bad_magic"})

    def test_oversized_length(self) -> Any:
        """
        A length prefix above C{max_frame_bytes} closes the connection at
        once (no body is sent or awaited), reason C{oversized}.
        """
        data = struct.pack(">I", MAX_FRAME + 1)
        return self.run_attack(data, "clustron_frame_errors_total", {"reason": "oversized"})

    def test_bad_checksum(self) -> Any:
        """
        A HELLO whose CRC32 trailer does not match closes the connection,
        reason C{bad_checksum}.
        """
        frame = bytearray(hello_frame("live"))
        frame[-1] ^= 0xFF
        return self.run_attack(
            bytes(frame), "clustron_frame_errors_total", {"reason": "bad_checksum"}
        )

    def test_hello_from_another_cluster(self) -> Any:
        """
        A well-formed HELLO from another cluster gets the node's HELLO, then
        a REJECT naming C{cluster_id_mismatch}; the refusal is counted.
        """
        d = self.run_attack(
            hello_frame("other"),
            "clustron_handshake_rejections_total",
            {"reason": CLUSTER_ID_MISMATCH, "side": "local"},
        )

        def check(received: bytes) -> None:
            frames = FrameDecoder(MAX_FRAME, Crc32()).feed(received)
            self.assertEqual(
                [f.frame_type for f in frames], [framing.HELLO, framing.REJECT]
            )
            reject = Reject.from_dict(json_serializer.loads(frames[1].payload))
            self.assertEqual(reject.reason, CLUSTER_ID_MISMATCH)

        return d.addCallback(check)

    def test_random_bytes(self) -> Any:
        """
        Random bytes (seeded) close the connection with some frame error.
        """
        data = random.Random(20261128).randbytes(4096)
        return self.run_attack(data, "clustron_frame_errors_total", None)

    def test_silent_client(self) -> Any:
        """
        A client that never says HELLO is closed after
        C{wire.handshake_timeout}, reason C{handshake_timeout}.
        """
        return self.run_attack(
            b"", "clustron_protocol_violations_total", {"reason": "handshake_timeout"}
        )
