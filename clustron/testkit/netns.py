"""
Network namespaces with nftables for real link cuts between real processes.

A L{NetworkLab} builds one network namespace per host, each with one
address on a shared bridge (which lives in a hub namespace of its own), and
cuts or restores traffic between hosts with nftables sets in each host's
namespace. Processes are started inside a host's namespace with
L{NetworkLab.command} (a prefix for C{subprocess} or C{spawnProcess})::

    reason = unavailable()
    if reason:
        raise SkipTest(reason)
    with NetworkLab(["a", "b", "c"]) as lab:
        server = subprocess.Popen(lab.command("b", ["python", "server.py"]))
        lab.cut("a", "b")            # both directions
        lab.cut("a", "c", both=False)  # a -> c only
        lab.restore("a", "b")
        lab.heal()

Everything the lab creates is removed by L{NetworkLab.close} (and on leaving
the C{with} block): deleting a namespace deletes its end of every veth
pair. Namespace names carry the creating process's id, so concurrent runs
do not collide.

This needs root (or C{CAP_NET_ADMIN} and C{CAP_SYS_ADMIN}), the C{ip}
command and the C{nft} command (Debian package C{nftables});
L{unavailable} says which is missing.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import zlib
from collections.abc import Iterable, Sequence
from types import TracebackType

from twisted.logger import Logger

__all__ = ["NetnsError", "NetworkLab", "unavailable"]

log = Logger()

_TABLE = "clustron_lab"


class NetnsError(Exception):
    """
    A command building or changing the lab failed; the message has the
    command and its output.
    """


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetnsError(
            f"{' '.join(argv)} failed with status {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()}"
        )
    return result


def unavailable() -> str | None:
    """
    Check whether this machine lets a test build network namespaces with
    nftables rules.

    @return: None when it does, else the reason it does not (to skip with).
    """
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"the {tool!r} command is not installed (Debian package {package})"
    probe = f"clustron-probe-{os.getpid()}"
    result = _run(["ip", "netns", "add", probe], check=False)
    if result.returncode != 0:
        return (
            "cannot create network namespaces here ('ip netns add' says: "
            f"{(result.stderr or result.stdout).strip()}); needs root or CAP_SYS_ADMIN"
        )
    try:
        result = _run(["ip", "netns", "exec", probe, "nft", "list", "ruleset"], check=False)
        if result.returncode != 0:
            return f"nftables does not work in a network namespace here: {result.stderr.strip()}"
        result = _run(
            [
                "ip",
                "link",
                "add",
                f"cp{os.getpid() % 100000}a",
                "type",
                "veth",
                "peer",
                "name",
                f"cp{os.getpid() % 100000}b",
                "netns",
                probe,
            ],
            check=False,
        )
        if result.returncode != 0:
            return f"cannot create veth pairs here: {result.stderr.strip()}"
        return None
    finally:
        _run(["ip", "netns", "del", probe], check=False)


class NetworkLab:
    """
    Hosts in network namespaces on one bridged subnet, with link cuts.

    @ivar addresses: each host's IPv4 address, by host name.
    """

    def __init__(
        self, hosts: Iterable[str], subnet: str = "10.213.0.0/24", prefix: str | None = None
    ) -> None:
        """
        Build the lab (namespaces, bridge, veth pairs, addresses, nftables
        sets); on failure, remove whatever was built.

        @param hosts: host names (letters, digits, C{-}; at most 8
            characters each).
        @param subnet: the IPv4 subnet hosts get addresses from (the first
            addresses, in order).
        @param prefix: the namespace name prefix (default: C{ctk<pid>}).
        @raise ValueError: for bad host names or a subnet too small.
        @raise NetnsError: when a command fails (see L{unavailable}).
        """
        names = list(hosts)
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"host names must be unique and not empty, got {names!r}")
        for name in names:
            if not name or len(name) > 8 or not all(c.isalnum() or c == "-" for c in name):
                raise ValueError(f"bad host name {name!r}: use at most 8 letters, digits or '-'")
        network = ipaddress.ip_network(subnet)
        pool = list(network.hosts())
        if len(pool) < len(names):
            raise ValueError(f"subnet {subnet} has {len(pool)} addresses for {len(names)} hosts")
        self.prefix = prefix if prefix is not None else f"ctk{os.getpid()}"
        self.prefix_length = network.prefixlen
        self.addresses = {name: str(pool[i]) for i, name in enumerate(names)}
        self._namespaces: list[str] = []
        self._cuts: set[tuple[str, str]] = set()
        try:
            self._build(names)
        except BaseException:
            self.close()
            raise

    # -- building -----------------------------------------------------------------

    def namespace(self, host: str) -> str:
        """
        The network namespace name of a host.

        @raise KeyError: for an unknown host.
        """
        if host not in self.addresses:
            raise KeyError(f"unknown lab host {host!r}; hosts: {', '.join(self.addresses)}")
        return f"{self.prefix}-{host}"

    def _add_namespace(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._namespaces.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _build(self, names: list[str]) -> None:
        hub = f"{self.prefix}-hub"
        self._add_namespace(hub)
        _run(["ip", "-n", hub, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", hub, "link", "set", "br0", "up"])
        for index, host in enumerate(names):
            namespace = self.namespace(host)
            self._add_namespace(namespace)
            tag = f"{zlib.crc32(self.prefix.encode()) % 1_000_000:06d}"
            outer, inner = f"ck{tag}h{index}", f"ck{tag}n{index}"
            _run(["ip", "link", "add", inner, "type", "veth", "peer", "name", outer, "netns", hub])
            _run(["ip", "link", "set", inner, "netns", namespace])
            _run(["ip", "-n", namespace, "link", "set", inner, "name", "eth0"])
            address = f"{self.addresses[host]}/{self.prefix_length}"
            _run(["ip", "-n", namespace, "addr", "add", address, "dev", "eth0"])
            _run(["ip", "-n", namespace, "link", "set", "eth0", "up"])
            _run(["ip", "-n", hub, "link", "set", outer, "master", "br0"])
            _run(["ip", "-n", hub, "link", "set", outer, "up"])
            self._nft(
                host,
                f"add table inet {_TABLE}\n"
                f"add set inet {_TABLE} to_peers {{ type ipv4_addr; }}\n"
                f"add set inet {_TABLE} from_peers {{ type ipv4_addr; }}\n"
                f"add chain inet {_TABLE} output {{ type filter hook output priority 0; }}\n"
                f"add chain inet {_TABLE} input {{ type filter hook input priority 0; }}\n"
                f"add rule inet {_TABLE} output ip daddr @to_peers drop\n"
                f"add rule inet {_TABLE} input ip saddr @from_peers drop\n",
            )
        log.info("network lab {prefix} built: {hosts}", prefix=self.prefix, hosts=self.addresses)

    def _nft(self, host: str, script: str) -> None:
        result = subprocess.run(
            ["ip", "netns", "exec", self.namespace(host), "nft", "-f", "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0:
            raise NetnsError(f"nft in {self.namespace(host)} failed: {result.stderr.strip()}")

    # -- use ------------------------------------------------------------------------

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """
        @return: C{argv} prefixed to run inside a host's namespace.
        """
        return ["ip", "netns", "exec", self.namespace(host), *argv]

    def cut(self, a: str, b: str, both: bool = True) -> None:
        """
        Drop every packet from host C{a} to host C{b} (and back, unless
        C{both} is False). Established TCP connections stall, new ones time
        out, as on a real link cut.
        """
        self._set(a, b, "add")
        if both:
            self._set(b, a, "add")

    def restore(self, a: str, b: str, both: bool = True) -> None:
        """
        Let packets from C{a} to C{b} (and back, unless C{both} is False)
        through again.
        """
        self._set(a, b, "delete")
        if both:
            self._set(b, a, "delete")

    def partition(self, *groups: Iterable[str]) -> None:
        """
        Cut every link between hosts of different groups.
        """
        chosen = [list(group) for group in groups]
        for i, group in enumerate(chosen):
            for other in chosen[i + 1 :]:
                for a in group:
                    for b in other:
                        self.cut(a, b)

    def heal(self) -> None:
        """
        Restore every cut link.
        """
        for a, b in sorted(self._cuts):
            self._set(a, b, "delete")

    @property
    def cuts(self) -> set[tuple[str, str]]:
        """
        The directed links cut now, as C{(from, to)} host names.
        """
        return set(self._cuts)

    def _set(self, a: str, b: str, verb: str) -> None:
        if a == b:
            raise ValueError(f"cannot cut host {a!r} from itself")
        if (verb == "add") == ((a, b) in self._cuts):
            return
        self._nft(a, f"{verb} element inet {_TABLE} to_peers {{ {self.addresses[b]} }}\n")
        self._nft(b, f"{verb} element inet {_TABLE} from_peers {{ {self.addresses[a]} }}\n")
        if verb == "add":
            self._cuts.add((a, b))
        else:
            self._cuts.discard((a, b))

    # -- teardown ---------------------------------------------------------------------

    def close(self) -> None:
        """
        Delete every namespace the lab made (which deletes its veth pairs).
        Safe to call twice.
        """
        while self._namespaces:
            name = self._namespaces.pop()
            result = _run(["ip", "netns", "del", name], check=False)
            if result.returncode != 0:
                log.warn(
                    "could not delete network namespace {name}: {error}",
                    name=name,
                    error=result.stderr.strip(),
                )
        self._cuts.clear()

    def __enter__(self) -> NetworkLab:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
