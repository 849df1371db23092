"""
Tests for L{clustron.security.certs} and the ``clustron certs`` command.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import os
import stat
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.trial.unittest import SynchronousTestCase

from clustron.cli import main
from clustron.security.certs import create_ca, issue_node_cert, validate_node_id


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class CreateCaTests(SynchronousTestCase):
    """
    L{create_ca} writes a self-signed CA.
    """

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())

    def test_files(self) -> None:
        """
        The CA certificate and key are written in the directory, which is
        created; the key is readable by its owner only.
        """
        cert_path, key_path = create_ca(self.dir)
        self.assertEqual(cert_path, self.dir / "ca.crt")
        self.assertEqual(key_path, self.dir / "ca.key")
        self.assertEqual(mode(key_path), 0o600)
        self.assertEqual(mode(cert_path) & 0o022, 0)
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["ca.crt", "ca.key"])

    def test_certificate(self) -> None:
        """
        The CA certificate is self-signed by an EC P-256 key, a CA that may
        only sign end-entity certificates, valid for C{days}.
        """
        cert_path, key_path = create_ca(self.dir, common_name="Test CA", days=30)
        cert = load_cert(cert_path)
        key = load_key(key_path)
        self.assertEqual(key.curve.name, "secp256r1")
        self.assertEqual(cert.public_key(), key.public_key())
        cert.verify_directly_issued_by(cert)
        self.assertEqual(
            cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value, "Test CA"
        )
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(constraints.critical)
        self.assertTrue(constraints.value.ca)
        self.assertEqual(constraints.value.path_length, 0)
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        self.assertTrue(usage.key_cert_sign)
        self.assertTrue(usage.crl_sign)
        self.assertFalse(usage.digital_signature)
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        self.assertEqual(lifetime, datetime.timedelta(days=30, minutes=5))

    def test_default_name(self) -> None:
        """
        The default common name says it is Clustron's development CA.
        """
        cert = load_cert(create_ca(self.dir)[0])
        self.assertEqual(cert.subject.rfc4514_string(), "CN=Clustron development CA")

    def test_refuses_overwrite(self) -> None:
        """
        An existing CA is not replaced: the error names the directory and
        says how to replace it; the files are unchanged.
        """
        cert_path, key_path = create_ca(self.dir)
        before = (cert_path.read_bytes(), key_path.read_bytes())
        e = self.assertRaises(FileExistsError, create_ca, self.dir)
        self.assertIn(str(self.dir), str(e))
        self.assertIn("refusing to overwrite", str(e))
        self.assertIn("force", str(e))
        self.assertEqual((cert_path.read_bytes(), key_path.read_bytes()), before)

    def test_refuses_overwrite_of_either_file(self) -> None:
        """
        A lone C{ca.key} is enough to refuse: it could be the only copy of a
        CA key.
        """
        self.dir.mkdir()
        (self.dir / "ca.key").write_bytes(b"precious")
        self.assertRaises(FileExistsError, create_ca, self.dir)
        self.assertEqual((self.dir / "ca.key").read_bytes(), b"precious")

    def test_force(self) -> None:
        """
        With C{force}, a new CA with a new key replaces the old one.
        """
        _, key_path = create_ca(self.dir)
        old = load_key(key_path)
        create_ca(self.dir, force=True)
        self.assertNotEqual(load_key(key_path).public_key(), old.public_key())
        self.assertEqual(mode(key_path), 0o600)

    def test_invalid_days(self) -> None:
        """
        A validity below one day is refused, naming the value.
        """
        e = self.assertRaises(ValueError, create_ca, self.dir, days=0)
        self.assertIn("days", str(e))
        self.assertFalse(self.dir.exists())


class IssueNodeCertTests(SynchronousTestCase):
    """
    L{issue_node_cert} signs node certificates with the CA.
    """

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.ca_path, _ = create_ca(self.dir)
        self.ca = load_cert(self.ca_path)

    def verify(self, cert: x509.Certificate, name: x509.GeneralName) -> None:
        """
        Verify C{cert} as a TLS server certificate for C{name} and as a TLS
        client certificate, against the CA only.
        """
        store = verification.Store([self.ca])
        now = datetime.datetime.now(datetime.UTC)
        builder = verification.PolicyBuilder().store(store).time(now)
        assert isinstance(name, (x509.DNSName, x509.IPAddress))
        builder.build_server_verifier(name).verify(cert, [])
        builder.build_client_verifier().verify(cert, [])

    def test_files(self) -> None:
        """
        C{NODE_ID.crt} and C{NODE_ID.key} are written next to the CA; the
        key is readable by its owner only and matches the certificate.
        """
        cert_path, key_path = issue_node_cert(self.dir, "n1")
        self.assertEqual(cert_path, self.dir / "n1.crt")
        self.assertEqual(key_path, self.dir / "n1.key")
        self.assertEqual(mode(key_path), 0o600)
        key = load_key(key_path)
        self.assertEqual(key.curve.name, "secp256r1")
        self.assertEqual(load_cert(cert_path).public_key(), key.public_key())

    def test_chain_and_names(self) -> None:
        """
        The certificate is signed by the CA and names the node id and the
        default hosts: it verifies as a server certificate for each of them
        and as a client certificate.
        """
        cert = load_cert(issue_node_cert(self.dir, "n1")[0])
        cert.verify_directly_issued_by(self.ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(set(san.get_values_for_type(x509.DNSName)), {"n1", "localhost"})
        self.assertEqual(
            san.get_values_for_type(x509.IPAddress), [ipaddress.ip_address("127.0.0.1")]
        )
        for name in (
            x509.DNSName("n1"),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ):
            self.verify(cert, name)
        self.assertRaises(verification.VerificationError, self.verify, cert, x509.DNSName("n2"))

    def test_hosts(self) -> None:
        """
        Hosts given replace the defaults: IP addresses (v4 and v6) become IP
        address names, others DNS names.
        """
        cert = load_cert(
            issue_node_cert(self.dir, "n2", hosts=["10.0.0.7", "::1", "n2.example.com"])[0]
        )
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(set(san.get_values_for_type(x509.DNSName)), {"n2", "n2.example.com"})
        self.assertEqual(
            set(san.get_values_for_type(x509.IPAddress)),
            {ipaddress.ip_address("10.0.0.7"), ipaddress.ip_address("::1")},
        )
        self.verify(cert, x509.IPAddress(ipaddress.ip_address("10.0.0.7")))

    def test_usage(self) -> None:
        """
        The certificate is an end entity, for digital signatures, for TLS
        server and client authentication; its subject is the node id and it
        points at the CA's key.
        """
        cert = load_cert(issue_node_cert(self.dir, "n1")[0])
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(constraints.critical)
        self.assertFalse(constraints.value.ca)
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertTrue(usage.value.digital_signature)
        self.assertFalse(usage.value.key_cert_sign)
        extended = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(
            list(extended), [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        )
        self.assertEqual(cert.subject.rfc4514_string(), "CN=n1")
        self.assertEqual(cert.issuer, self.ca.subject)
        authority = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ca_key_id = self.ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self.assertEqual(authority.key_identifier, ca_key_id.digest)

    def test_validity(self) -> None:
        """
        The certificate is valid for C{days} from the time of issue (a few
        minutes earlier, for slow clocks), and never past the CA's expiry.
        """
        now = datetime.datetime(2030, 1, 2, tzinfo=datetime.UTC)
        cert = load_cert(issue_node_cert(self.dir, "n1", days=10, now=now)[0])
        self.assertEqual(cert.not_valid_before_utc, now - datetime.timedelta(minutes=5))
        self.assertEqual(cert.not_valid_after_utc, now + datetime.timedelta(days=10))
        long = load_cert(issue_node_cert(self.dir, "n2", days=100_000)[0])
        self.assertEqual(long.not_valid_after_utc, self.ca.not_valid_after_utc)

    def test_invalid_node_ids(self) -> None:
        """
        A node id that is not a valid configuration id, or that would clash
        with the CA's files, is refused with a message naming it; nothing is
        written.
        """
        for bad in ("", "-n1", ".hidden", "a/b", "../x", "n 1", "é", "x" * 65, "ca", "CA"):
            e = self.assertRaises(ValueError, issue_node_cert, self.dir, bad)
            self.assertIn(repr(bad), str(e))
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["ca.crt", "ca.key"])

    def test_valid_node_ids(self) -> None:
        """
        Letters, digits, '.', '_' and '-' are accepted, up to 64 characters.
        """
        for good in ("n1", "N_1.a-b", "x" * 64, "7"):
            validate_node_id(good)

    def test_invalid_host(self) -> None:
        """
        A host that is neither an IP address nor a DNS name is refused,
        naming it.
        """
        for bad in ("", "bad host", "under_score.example", "-x.example", "ä.example"):
            e = self.assertRaises(ValueError, issue_node_cert, self.dir, "n1", hosts=[bad])
            self.assertIn(repr(bad), str(e))
        self.assertFalse((self.dir / "n1.crt").exists())

    def test_hosts_string(self) -> None:
        """
        A single string for C{hosts} is refused rather than read as a list
        of one-letter hosts.
        """
        self.assertRaises(TypeError, issue_node_cert, self.dir, "n1", hosts="localhost")

    def test_no_ca(self) -> None:
        """
        Without a CA in the directory, the error says how to make one.
        """
        empty = Path(self.mktemp())
        empty.mkdir()
        e = self.assertRaises(FileNotFoundError, issue_node_cert, empty, "n1")
        self.assertIn(f"clustron certs init --dir {empty}", str(e))

    def test_ca_key_mismatch(self) -> None:
        """
        A CA key that does not belong to the CA certificate is refused.
        """
        other = Path(self.mktemp())
        create_ca(other)
        (self.dir / "ca.key").write_bytes((other / "ca.key").read_bytes())
        e = self.assertRaises(ValueError, issue_node_cert, self.dir, "n1")
        self.assertIn("is not the key of", str(e))

    def test_refuses_overwrite(self) -> None:
        """
        An existing node certificate is not replaced unless C{force} is set.
        """
        cert_path, _ = issue_node_cert(self.dir, "n1")
        before = cert_path.read_bytes()
        e = self.assertRaises(FileExistsError, issue_node_cert, self.dir, "n1")
        self.assertIn("'n1'", str(e))
        self.assertEqual(cert_path.read_bytes(), before)
        issue_node_cert(self.dir, "n1", force=True)
        self.assertNotEqual(cert_path.read_bytes(), before)


class CommandTests(SynchronousTestCase):
    """
    ``clustron certs init`` and ``clustron certs issue``.
    """

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def run_command(self, *argv: str) -> int:
        self.stdout.seek(0)
        self.stdout.truncate()
        self.stderr.seek(0)
        self.stderr.truncate()
        return main(["certs", *argv])

    def test_init_and_issue(self) -> None:
        """
        C{init} then C{issue} write the CA and a node certificate, and print
        each path written.
        """
        self.assertEqual(self.run_command("init", "--dir", str(self.dir)), 0)
        self.assertEqual(
            self.stdout.getvalue(), f"wrote {self.dir}/ca.crt\nwrote {self.dir}/ca.key\n"
        )
        self.assertEqual(
            self.run_command(
                "issue", "--dir", str(self.dir), "n1", "--host", "10.1.2.3", "--host", "n1.lan"
            ),
            0,
        )
        self.assertEqual(
            self.stdout.getvalue(), f"wrote {self.dir}/n1.crt\nwrote {self.dir}/n1.key\n"
        )
        cert = load_cert(self.dir / "n1.crt")
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(set(san.get_values_for_type(x509.DNSName)), {"n1", "n1.lan"})
        self.assertEqual(
            san.get_values_for_type(x509.IPAddress), [ipaddress.ip_address("10.1.2.3")]
        )

    def test_issue_default_hosts(self) -> None:
        """
        Without C{--host}, the certificate names 127.0.0.1 and localhost.
        """
        self.run_command("init", "--dir", str(self.dir))
        self.assertEqual(self.run_command("issue", "--dir", str(self.dir), "n1"), 0)
        cert = load_cert(self.dir / "n1.crt")
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(set(san.get_values_for_type(x509.DNSName)), {"n1", "localhost"})

    def assert_one_line_error(self, status: int, *fragments: str) -> None:
        self.assertEqual(status, 1)
        self.assertEqual(self.stdout.getvalue(), "")
        error = self.stderr.getvalue()
        self.assertEqual(error.count("\n"), 1, error)
        self.assertTrue(error.startswith("clustron certs "), error)
        for fragment in fragments:
            self.assertIn(fragment, error)

    def test_init_existing(self) -> None:
        """
        C{init} over an existing CA fails with one line and status 1;
        C{--force} replaces it.
        """
        self.run_command("init", "--dir", str(self.dir))
        self.assert_one_line_error(
            self.run_command("init", "--dir", str(self.dir)), "refusing to overwrite"
        )
        self.assertEqual(self.run_command("init", "--dir", str(self.dir), "--force"), 0)

    def test_issue_errors(self) -> None:
        """
        C{issue} without a CA, with a bad node id or a bad host fails with
        one line and status 1.
        """
        self.assert_one_line_error(
            self.run_command("issue", "--dir", str(self.dir), "n1"), "clustron certs init"
        )
        self.run_command("init", "--dir", str(self.dir))
        self.assert_one_line_error(
            self.run_command("issue", "--dir", str(self.dir), "a/b"), "invalid node id"
        )
        self.assert_one_line_error(
            self.run_command("issue", "--dir", str(self.dir), "n1", "--host", "no good"),
            "invalid host",
        )

    def test_unwritable_directory(self) -> None:
        """
        An operating-system error is reported on one line, naming the file.
        """
        self.dir.write_bytes(b"not a directory")
        self.assert_one_line_error(
            self.run_command("init", "--dir", str(self.dir / "sub")), str(self.dir)
        )

    def test_no_action(self) -> None:
        """
        C{clustron certs} alone prints its usage and returns 2.
        """
        self.assertEqual(self.run_command(), 2)
        self.assertIn("init", self.stderr.getvalue())
        self.assertIn("issue", self.stderr.getvalue())
