"""Certificates and keys of a fedhet deployment: CA, SuperLink/front-door certificate, node keys.

What Flower 1.41 expects (read from the installed ``flwr`` package):

* TLS: the SuperLink (and the front door devices connect to) present a certificate signed by a
  CA every device and CLI user trusts (``ca.pem``). The certificate always carries
  ``localhost`` and ``127.0.0.1`` in its subject alternative names: the SuperLink listens on
  loopback behind the front door, and its own SuperExec and the operator's CLI connect there.
* SuperNode authentication (``--enable-supernode-auth``) uses one **NIST EC key pair per
  SuperNode in OpenSSH format** (P-384 here): the private key goes to the device
  (``--auth-supernode-private-key``), the public key is registered on the running SuperLink
  with ``flwr supernode register``.

Private keys are written with mode 0600, the PKI folder with 0700.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

#: Hosts always put into a server certificate (loopback SuperLink, its SuperExec, the operator).
LOOPBACK_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1")

_CERT_DAYS = 825


@dataclass(frozen=True)
class PkiPaths:
    """Files written by :func:`write_pki`.

    Attributes
    ----------
    ca_cert : Path
        CA certificate (PEM). Every SuperNode and every ``flwr`` CLI user needs it.
    ca_key : Path
        CA private key (PEM). Keep it offline; it is only needed to issue new server certs.
    server_cert : Path
        SuperLink certificate (PEM) signed by the CA.
    server_key : Path
        SuperLink private key (PEM).
    node_keys : dict[str, tuple[Path, Path]]
        Per node name: (private key, public key), both OpenSSH format, EC P-384.
    """

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    node_keys: dict[str, tuple[Path, Path]] = field(default_factory=dict)


def _new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def generate_ca(
    common_name: str = "fedhet CA",
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Create a self-signed certificate authority.

    Parameters
    ----------
    common_name : str
        Subject common name of the CA.

    Returns
    -------
    tuple[ec.EllipticCurvePrivateKey, x509.Certificate]
        The CA key (EC P-384) and its certificate.
    """
    key = _new_ec_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def _subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in [*hosts, *LOOPBACK_HOSTS]:
        if host in seen:
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def generate_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: Sequence[str],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Issue a SuperLink TLS certificate signed by ``ca_cert``.

    Parameters
    ----------
    ca_key : ec.EllipticCurvePrivateKey
        CA private key used to sign.
    ca_cert : x509.Certificate
        CA certificate (issuer).
    hosts : Sequence[str]
        Host names and IP addresses the SuperLink is reached under. ``localhost`` and
        ``127.0.0.1`` are always added, because the SuperLink's own SuperExec connects to
        the loopback address.

    Returns
    -------
    tuple[ec.EllipticCurvePrivateKey, x509.Certificate]
        Server key (EC P-384) and certificate.
    """
    key = _new_ec_key()
    common_name = hosts[0] if hosts else "localhost"
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def generate_node_keypair() -> tuple[bytes, bytes]:
    """Create a SuperNode authentication key pair.

    Returns
    -------
    tuple[bytes, bytes]
        (private key, public key), OpenSSH encoded, EC P-384: what
        ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register``
        accept.
    """
    key = _new_ec_key()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + b"\n"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_node_key(out_dir: Path, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.key`` and ``<out_dir>/<name>.pub`` for one SuperNode.

    Parameters
    ----------
    out_dir : Path
        Folder for the key files (created if missing).
    name : str
        Node name, used as file stem.
    overwrite : bool
        Replace an existing key pair; by default an existing pair is kept.

    Returns
    -------
    tuple[Path, Path]
        Private and public key paths.
    """
    private_path, public_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    if overwrite or not (private_path.exists() and public_path.exists()):
        private, public = generate_node_keypair()
        _write_private(private_path, private)
        public_path.write_bytes(public)
    return private_path, public_path


def write_pki(
    out_dir: Path,
    hosts: Sequence[str],
    node_names: Sequence[str] = (),
    overwrite: bool = False,
) -> PkiPaths:
    """Write a CA, a SuperLink certificate and SuperNode key pairs.

    Layout: ``ca.pem``, ``ca.key``, ``server.pem``, ``server.key``, ``nodes/<name>.key|.pub``.
    Existing CA and server files are kept unless ``overwrite`` is set, so re-running adds
    node keys without invalidating certificates already deployed.

    Parameters
    ----------
    out_dir : Path
        Output folder (created with mode 0700).
    hosts : Sequence[str]
        Names and addresses the SuperLink is reached under (loopback is always added).
    node_names : Sequence[str]
        One key pair is written per name.
    overwrite : bool
        Regenerate everything.

    Returns
    -------
    PkiPaths
        Paths of everything written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        out_dir.chmod(0o700)
    paths = PkiPaths(
        ca_cert=out_dir / "ca.pem",
        ca_key=out_dir / "ca.key",
        server_cert=out_dir / "server.pem",
        server_key=out_dir / "server.key",
    )
    if overwrite or not (paths.ca_cert.exists() and paths.ca_key.exists()):
        ca_key, ca_cert = generate_ca()
        _write_private(paths.ca_key, _key_pem(ca_key))
        paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        overwrite = True  # a new CA invalidates the old server certificate
    else:
        loaded = serialization.load_pem_private_key(paths.ca_key.read_bytes(), None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{paths.ca_key} is not an EC private key")
        ca_key = loaded
        ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    if overwrite or not (paths.server_cert.exists() and paths.server_key.exists()):
        server_key, server_cert = generate_server_certificate(ca_key, ca_cert, hosts)
        _write_private(paths.server_key, _key_pem(server_key))
        paths.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    for name in node_names:
        paths.node_keys[name] = write_node_key(out_dir / "nodes", name, overwrite=overwrite)
    logger.info("PKI in %s: CA, server cert for %s, %d node keys", out_dir, hosts, len(node_names))
    return paths
