"""
A development certificate authority for mutual TLS between Clustron nodes.

L{create_ca} makes a self-signed CA in a directory (C{ca.crt}, C{ca.key});
L{issue_node_cert} signs a certificate for one node with it (C{NODE_ID.crt},
C{NODE_ID.key}). Every key is an EC P-256 key written in PEM, readable by its
owner only (mode 0600). A node certificate names its node id in a DNS
subjectAltName, which is how a peer's claimed node id is checked after the
Clustron handshake (see L{clustron.security.tls_identity}).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: What a node id may look like (the same rule as node ids in the
#: configuration): it is used as a file name and as a DNS subjectAltName, so
#: letters, digits, C{.}, C{_} and C{-}, starting with a letter or digit, at
#: most 64 characters.
NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

#: A DNS name accepted as a host: dot-separated labels of letters, digits and
#: hyphens (a leading C{*.} wildcard label is refused).
_HOST_NAME_PATTERN = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)

#: The hosts a node certificate names when none are given.
DEFAULT_HOSTS = ("127.0.0.1", "localhost")

CA_CERT_NAME = "ca.crt"
CA_KEY_NAME = "ca.key"

#: How far before "now" certificates start being valid, to tolerate clocks
#: that are a little behind.
_BACKDATE = datetime.timedelta(minutes=5)


def validate_node_id(node_id: str) -> None:
    """
    Check that C{node_id} can name a node certificate.

    @raise ValueError: naming the node id and the reason when it cannot.
    """
    if not isinstance(node_id, str) or not NODE_ID_PATTERN.fullmatch(node_id):
        raise ValueError(
            f"invalid node id {node_id!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if node_id.lower() == "ca":
        raise ValueError(f"invalid node id {node_id!r}: 'ca' names the CA's own files")


def _general_name(host: str) -> x509.GeneralName:
    """
    @return: an IP address name when C{host} is an IP address, else a DNS name.
    @raise ValueError: when C{host} is neither.
    """
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not isinstance(host, str) or not _HOST_NAME_PATTERN.fullmatch(host):
        raise ValueError(
            f"invalid host {host!r}: expected an IP address or a DNS name "
            "(ASCII letters, digits, '-' and '.')"
        )
    return x509.DNSName(host.rstrip("."))


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes, *, replace: bool) -> None:
    """
    Write C{data} to C{path}, readable and writable by its owner only.

    The file is created under a temporary name with mode 0600 from the start
    and renamed into place, so the key is never readable by others, not even
    briefly, and an interrupted write leaves no half key behind.

    @raise FileExistsError: when C{path} exists and C{replace} is false.
    """
    if not replace and path.exists():
        raise FileExistsError(f"{path} already exists")
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_public(path: Path, data: bytes) -> None:
    """
    Write C{data} to C{path} (mode 0644), replacing it atomically.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_ca(
    dir: str | os.PathLike[str],
    *,
    common_name: str = "Clustron development CA",
    days: int = 3650,
    force: bool = False,
) -> tuple[Path, Path]:
    """
    Create a self-signed certificate authority in C{dir} (created if needed).

    @param dir: where to write C{ca.crt} and C{ca.key}.
    @param common_name: the CA's subject common name.
    @param days: how long the CA certificate is valid.
    @param force: replace an existing CA. Certificates it issued stop being
        trusted by nodes that load the new one.
    @return: the paths of the certificate and of the private key.
    @raise FileExistsError: when C{dir} already holds a CA and C{force} is
        false.
    @raise ValueError: when C{days} is not positive or C{common_name} is
        empty.
    """
    if days < 1:
        raise ValueError(f"invalid days {days!r}: must be at least 1")
    if not common_name:
        raise ValueError("invalid common_name '': must not be empty")
    directory = Path(dir)
    cert_path = directory / CA_CERT_NAME
    key_path = directory / CA_KEY_NAME
    if not force:
        existing = [str(p) for p in (cert_path, key_path) if p.exists()]
        if existing:
            raise FileExistsError(
                f"a CA already exists in {directory} ({', '.join(existing)}); "
                "refusing to overwrite it (use force to replace it: certificates "
                "it issued will no longer be trusted)"
            )
    directory.mkdir(parents=True, exist_ok=True)

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key), replace=True)
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


_CAKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _load_ca(directory: Path) -> tuple[x509.Certificate, _CAKey]:
    """
    @return: the CA certificate and key found in C{directory}.
    @raise FileNotFoundError: when there is no CA there.
    @raise ValueError: when the files are not a CA certificate and its key.
    """
    cert_path = directory / CA_CERT_NAME
    key_path = directory / CA_KEY_NAME
    missing = [str(p) for p in (cert_path, key_path) if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"no CA in {directory} (missing {', '.join(missing)}); create one first "
            f"with: clustron certs init --dir {directory}"
        )
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as e:
        raise ValueError(f"{cert_path} is not a PEM certificate: {e}") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{key_path} is not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise ValueError(f"{key_path} is not an EC or RSA private key")
    if key.public_key() != cert.public_key():
        raise ValueError(f"{key_path} is not the key of {cert_path}")
    return cert, key


def issue_node_cert(
    dir: str | os.PathLike[str],
    node_id: str,
    *,
    hosts: Iterable[str] = DEFAULT_HOSTS,
    days: int = 825,
    force: bool = False,
    now: datetime.datetime | None = None,
) -> tuple[Path, Path]:
    """
    Issue a certificate for one node, signed by the CA in C{dir}.

    The certificate's subjectAltName holds C{DNS:node_id} and every host (IP
    address names for IP addresses, DNS names otherwise); it is valid for both
    TLS server and client authentication.

    @param dir: the directory holding the CA; C{NODE_ID.crt} and
        C{NODE_ID.key} are written there.
    @param node_id: the node's id, as in its configuration.
    @param hosts: the addresses and names the node is reached at.
    @param days: how long the certificate is valid (never past the CA's own
        expiry).
    @param force: replace an existing certificate and key for this node.
    @param now: the time of issue; the current time when None.
    @return: the paths of the certificate and of the private key.
    @raise ValueError: when C{node_id}, a host or C{days} is invalid, or the
        CA files are unusable.
    @raise FileNotFoundError: when C{dir} holds no CA.
    @raise FileExistsError: when the node already has a certificate or key
        and C{force} is false.
    @raise TypeError: when C{hosts} is a single string.
    """
    validate_node_id(node_id)
    if days < 1:
        raise ValueError(f"invalid days {days!r}: must be at least 1")
    if isinstance(hosts, str):
        raise TypeError(f"hosts must be a list of hosts, not the string {hosts!r}")
    names: list[x509.GeneralName] = [x509.DNSName(node_id)]
    for host in hosts:
        name = _general_name(host)
        if name not in names:
            names.append(name)

    directory = Path(dir)
    ca_cert, ca_key = _load_ca(directory)
    cert_path = directory / f"{node_id}.crt"
    key_path = directory / f"{node_id}.key"
    if not force:
        existing = [str(p) for p in (cert_path, key_path) if p.exists()]
        if existing:
            raise FileExistsError(
                f"node {node_id!r} already has a certificate in {directory} "
                f"({', '.join(existing)}); refusing to overwrite it (use force to replace it)"
            )

    if now is None:
        now = _now()
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    key = ec.generate_private_key(ec.SECP256R1())
    public_key = key.public_key()
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_cert.public_key()  # type: ignore[arg-type]
        )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(authority_key_id, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key), replace=True)
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
