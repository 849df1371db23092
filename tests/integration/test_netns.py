"""
L{clustron.testkit.netns}: two hosts in network namespaces, a real TCP
server in one, a client in the other; cutting the link stops connections,
restoring it lets them through again. Skips with the reason where the
machine does not allow namespaces or nftables.
"""

from __future__ import annotations

import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from clustron.testkit.netns import NetworkLab, unavailable

PORT = 9811

SERVER = """
import socket
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((%r, %d))
server.listen()
print("listening", flush=True)
while True:
    conn, _ = server.accept()
    conn.sendall(conn.recv(64))
    conn.close()
"""

CLIENT = """
import socket, sys
try:
    conn = socket.create_connection((%r, %d), timeout=1.0)
    conn.sendall(b"ping")
    conn.settimeout(1.0)
    print(conn.recv(64).decode())
except OSError as e:
    print("failed:", type(e).__name__)
"""


class NetnsTests(SynchronousTestCase):
    def setUp(self) -> None:
        reason = unavailable()
        if reason is not None:
            raise SkipTest(reason)
        self.lab = NetworkLab(["a", "b"])
        self.addCleanup(self.lab.close)
        self.server = subprocess.Popen(
            self.lab.command("b", [sys.executable, "-c", SERVER % (self.lab.addresses["b"], PORT)]),
            stdout=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(self.stop_server)
        assert self.server.stdout is not None
        self.assertEqual(self.server.stdout.readline().strip(), "listening")

    def stop_server(self) -> None:
        self.server.kill()
        self.server.wait(10)
        if self.server.stdout is not None:
            self.server.stdout.close()

    def talk(self) -> str:
        result = subprocess.run(
            self.lab.command("a", [sys.executable, "-c", CLIENT % (self.lab.addresses["b"], PORT)]),
            capture_output=True,
            text=True,
            timeout=30,
        )
        return result.stdout.strip()

    def test_cut_and_restore(self) -> None:
        self.assertEqual(self.talk(), "ping")
        self.lab.cut("a", "b")
        self.assertEqual(self.lab.cuts, {("a", "b"), ("b", "a")})
        self.assertEqual(self.talk(), "failed: TimeoutError")
        self.lab.restore("a", "b")
        self.assertEqual(self.talk(), "ping")

    def test_one_way_cut_and_heal(self) -> None:
        self.lab.cut("b", "a", both=False)
        # The server's answers (and SYN-ACK) never arrive.
        self.assertEqual(self.talk(), "failed: TimeoutError")
        self.lab.heal()
        self.assertEqual(self.lab.cuts, set())
        self.assertEqual(self.talk(), "ping")

    def test_namespaces_removed(self) -> None:
        names = [self.lab.namespace("a"), self.lab.namespace("b"), f"{self.lab.prefix}-hub"]
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for name in names:
            self.assertIn(name, listed)
        self.stop_server()
        self.server = subprocess.Popen(["true"], stdout=subprocess.PIPE)
        self.lab.close()
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for name in names:
            self.assertNotIn(name, listed)


class ArgumentTests(SynchronousTestCase):
    def test_bad_hosts(self) -> None:
        for hosts in ([], ["a", "a"], ["way-too-long"], ["a b"]):
            self.assertRaises(ValueError, NetworkLab, hosts)
        self.assertRaises(ValueError, NetworkLab, ["a", "b", "c"], subnet="10.0.0.0/31")

    def test_reason_when_nft_missing(self) -> None:
        from clustron.testkit import netns

        real = netns.shutil.which
        self.patch(netns.shutil, "which", lambda tool: None if tool == "nft" else real(tool))
        self.assertEqual(
            netns.unavailable(), "the 'nft' command is not installed (Debian package nftables)"
        )
