"""PKI of a deployment (fedhet/deploy/pki.py): chain, names, key formats, file permissions."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from fedhet.deploy.cli import main
from fedhet.deploy.pki import write_node_key, write_pki


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_server_certificate_chain_verifies_and_sans_hold_the_hosts(tmp_path: Path) -> None:
    paths = write_pki(tmp_path / "pki", ["superlink.plant.lan", "10.0.0.5"], ["press-1"])
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
    ca.verify_directly_issued_by(ca)  # self-signed root
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # The hosts devices use, plus loopback: the SuperLink behind the front door, its
    # SuperExec and the operator's CLI all connect to 127.0.0.1 and verify "localhost".
    assert set(sans.get_values_for_type(x509.DNSName)) == {"superlink.plant.lan", "localhost"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("127.0.0.1"),
    }


def test_a_certificate_from_another_ca_does_not_verify(tmp_path: Path) -> None:
    one = write_pki(tmp_path / "one", ["127.0.0.1"])
    other = write_pki(tmp_path / "other", ["127.0.0.1"])
    server = x509.load_pem_x509_certificate(one.server_cert.read_bytes())
    foreign_ca = x509.load_pem_x509_certificate(other.ca_cert.read_bytes())
    with pytest.raises((ValueError, InvalidSignature)):  # issuer name equal, signature not
        server.verify_directly_issued_by(foreign_ca)


def test_node_key_pair_is_what_flower_accepts(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    paths = write_pki(tmp_path / "pki", ["127.0.0.1"], ["node-0", "node-1"])
    private_path, public_path = paths.node_keys["node-0"]
    private = load_ssh_private_key(private_path.read_bytes(), None)  # as flower-supernode does
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    assert try_load_public_key(public_path)  # as `flwr supernode register` does
    assert public_path.read_bytes() != paths.node_keys["node-1"][1].read_bytes()


def test_private_keys_are_0600_and_the_folder_0700(tmp_path: Path) -> None:
    paths = write_pki(tmp_path / "pki", ["127.0.0.1"], ["node-0"])
    extra_private, extra_public = write_node_key(tmp_path / "pki" / "nodes", "press-07")
    for private in (paths.ca_key, paths.server_key, paths.node_keys["node-0"][0], extra_private):
        assert _mode(private) == 0o600, private
    assert _mode(tmp_path / "pki") == 0o700
    # Public material stays readable (devices and nginx get ca.pem / server.pem).
    for public in (paths.ca_cert, paths.server_cert, extra_public):
        assert _mode(public) & 0o044, public


def test_rerun_keeps_ca_and_keys_and_adds_nodes(tmp_path: Path) -> None:
    first = write_pki(tmp_path, ["127.0.0.1"], ["node-0"])
    ca_before, key_before = first.ca_cert.read_bytes(), first.node_keys["node-0"][1].read_bytes()
    second = write_pki(tmp_path, ["127.0.0.1"], ["node-0", "node-1"])
    assert second.ca_cert.read_bytes() == ca_before
    assert second.node_keys["node-0"][1].read_bytes() == key_before
    assert second.node_keys["node-1"][1].exists()
    third = write_pki(tmp_path, ["127.0.0.1"], ["node-0"], overwrite=True)
    assert third.ca_cert.read_bytes() != ca_before


def test_certs_command_writes_named_or_counted_nodes(tmp_path: Path) -> None:
    assert main(["certs", "--out", str(tmp_path), "--hosts", "link.lan", "--nodes", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "nodes").iterdir()) == [
        "node-0.key",
        "node-0.pub",
        "node-1.key",
        "node-1.pub",
    ]
    assert main(["keygen", "--out", str(tmp_path / "nodes"), "press-07"]) == 0
    assert _mode(tmp_path / "nodes" / "press-07.key") == 0o600
