from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fleet import PASSPHRASE
from support import bare_env

from resonera.common.identity import IdentityError, generate_key, make_csr
from resonera.server.fleet_ca import CAError, FleetCA

BIN = Path(sys.executable).parent / "resonera-provision"


@pytest.fixture
def ca(tmp_path: Path) -> FleetCA:
    return FleetCA.init(tmp_path / "ca", PASSPHRASE)


def test_device_certificate_names_the_device_and_is_for_clients_only(ca: FleetCA) -> None:
    key = generate_key()
    cert = ca.sign_device_csr(make_csr(key, "dev-9", "SN-9"), PASSPHRASE, expected_serial="SN-9")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-9"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.public_key() == key.public_key()
    ca_key = ca.cert.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    ca_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))


def test_the_ca_key_is_encrypted_and_the_passphrase_checked(ca: FleetCA) -> None:
    assert b"ENCRYPTED PRIVATE KEY" in ca.key_path.read_bytes()
    assert ca.key_path.stat().st_mode & 0o077 == 0
    with pytest.raises(CAError, match="wrong passphrase"):
        ca.sign_device_csr(make_csr(generate_key(), "d", "s"), b"not the passphrase")


def test_init_refuses_to_overwrite_and_short_passphrases(ca: FleetCA, tmp_path: Path) -> None:
    with pytest.raises(CAError, match="already exists"):
        FleetCA.init(ca.directory, PASSPHRASE)
    with pytest.raises(CAError, match="at least 12"):
        FleetCA.init(tmp_path / "other", b"short")


def rsa_csr() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "dev-rsa"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN"),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("csr", "complaint"),
    [
        (b"garbage", "not a PEM-encoded CSR"),
        (b"x" * 9000, "exceeds"),
        (rsa_csr(), "ECDSA P-256"),
        (make_csr(generate_key(), "dev-1", "S" * 65), "1-64 characters"),
    ],
)
def test_bad_requests_get_a_clear_error_and_nothing_is_issued(
    ca: FleetCA, csr: bytes, complaint: str
) -> None:
    with pytest.raises(IdentityError, match=complaint):
        ca.sign_device_csr(csr, PASSPHRASE)
    assert list((ca.directory / "issued").iterdir()) == []


def test_wrong_serial_is_refused(ca: FleetCA) -> None:
    with pytest.raises(CAError, match="expected 'SN-2'"):
        ca.sign_device_csr(
            make_csr(generate_key(), "d1", "SN-1"), PASSPHRASE, expected_serial="SN-2"
        )


def test_revocation_lands_in_the_signed_crl(ca: FleetCA) -> None:
    cert = ca.sign_device_csr(make_csr(generate_key(), "d1", "SN-1"), PASSPHRASE)
    ca.revoke(cert, "d1", "lost", PASSPHRASE)
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert ca.is_revoked(cert)


def run(*args: object, env_pass: bool = True) -> subprocess.CompletedProcess[str]:
    env = bare_env()
    if env_pass:
        env["RESONERA_CA_PASSPHRASE"] = PASSPHRASE.decode()
    return subprocess.run(
        [str(BIN), *map(str, args)], capture_output=True, text=True, env=env, check=False
    )


def test_cli_from_ca_to_signed_device_to_revocation(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    assert run("ca", "init", "--ca", ca_dir).returncode == 0
    csr_path = tmp_path / "dev.csr"
    csr_path.write_bytes(make_csr(generate_key(), "dev-cli", "SN-7"))
    signed = run(
        "device",
        "cert",
        "--ca",
        ca_dir,
        "--csr",
        csr_path,
        "--serial",
        "SN-7",
        "--out",
        tmp_path / "dev.crt",
    )
    assert signed.returncode == 0, signed.stderr
    assert "issued device 'dev-cli'" in signed.stdout
    revoked = run("device", "revoke", "--ca", ca_dir, "--cert", tmp_path / "dev.crt")
    assert revoked.returncode == 0
    assert "dev-cli" in run("ca", "show", "--ca", ca_dir).stdout


def test_cli_without_a_passphrase_or_with_a_missing_ca_says_so(tmp_path: Path) -> None:
    no_pass = run("ca", "init", "--ca", tmp_path / "ca", env_pass=False)
    assert no_pass.returncode == 1
    assert "passphrase is needed" in no_pass.stderr
    missing = run("ca", "show", "--ca", tmp_path / "nowhere")
    assert missing.returncode == 1
    [line] = missing.stderr.strip().splitlines()
    assert "no fleet CA" in line


def test_cli_makes_an_issuing_ca_under_the_root_and_a_broker_that_trusts_it(
    tmp_path: Path,
) -> None:
    root_dir, issuing_dir = tmp_path / "root", tmp_path / "issuing"
    assert run("ca", "init", "--ca", root_dir).returncode == 0
    env_issuing = {"RESONERA_ISSUING_PASSPHRASE": "issuing passphrase 123"}
    made = run_env(env_issuing, "ca", "issuing", "--ca", root_dir, "--out", issuing_dir)
    assert made.returncode == 0, made.stderr
    root, issuing = FleetCA(root_dir), FleetCA(issuing_dir)
    assert issuing.is_intermediate and issuing.root == root.cert
    constraints = issuing.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    issuing.cert.verify_directly_issued_by(root.cert)
    # the issuing CA signs devices with its own passphrase; the root's does not open it
    csr = make_csr(generate_key(), "dev-i", "SN-i")
    with pytest.raises(CAError, match="wrong passphrase"):
        issuing.sign_device_csr(csr, PASSPHRASE)
    issuing.sign_device_csr(csr, b"issuing passphrase 123").verify_directly_issued_by(issuing.cert)
    # an issuing CA does not make issuing CAs
    again = run_env(env_issuing, "ca", "issuing", "--ca", issuing_dir, "--out", tmp_path / "x")
    assert again.returncode == 1 and "made by the root" in again.stderr
    no_pass = run("ca", "issuing", "--ca", root_dir, "--out", tmp_path / "y")
    assert no_pass.returncode == 1 and "RESONERA_ISSUING_PASSPHRASE" in no_pass.stderr
    broker = run(
        "broker-config",
        "--tls",
        "--ca",
        root_dir,
        "--issuing",
        issuing_dir,
        "--out-dir",
        tmp_path / "broker",
        "--port",
        "8883",
    )
    assert broker.returncode == 0, broker.stderr
    conf = (tmp_path / "broker" / "mosquitto.conf").read_text()
    assert f"cafile {issuing_dir / 'chain.pem'}" in conf
    assert f"crlfile {issuing_dir / 'crl.pem'}" in conf


def run_env(extra: dict[str, str], *args: object) -> subprocess.CompletedProcess[str]:
    env = bare_env(RESONERA_CA_PASSPHRASE=PASSPHRASE.decode(), **extra)
    return subprocess.run(
        [str(BIN), *map(str, args)], capture_output=True, text=True, env=env, check=False
    )
