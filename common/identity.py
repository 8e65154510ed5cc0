"""Device identity: P-256 keys, certificate requests and certificate facts, shared by the device (which
makes its key and CSR), the fleet CA (which checks and signs) and the server (which trusts the CN).

Keys are made where they are used and never leave: a device's private key is written once, 0600.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from resonera.common import topics
from resonera.common.errors import ProtocolError, ResoneraError

CURVE: Final = ec.SECP256R1()
MAX_CSR_BYTES: Final = 8192


class IdentityError(ResoneraError):
    """A key, request or certificate is missing, malformed or not what we issue."""


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(CURVE)


def write_private_key(
    key: ec.EllipticCurvePrivateKey, path: Path, passphrase: bytes | None = None
) -> Path:
    """Write ``key`` as PEM with 0600 permissions, created that way (never briefly readable)."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a key's folder: owner only
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    tmp.replace(path)
    return path


def load_private_key(path: Path, passphrase: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(f"private key {path} does not exist") from None
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        raise IdentityError(f"private key {path} is encrypted: a passphrase is needed") from None
    except ValueError:
        raise IdentityError(
            f"private key {path} cannot be read (wrong passphrase or not a PEM key)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != CURVE.name:
        raise IdentityError(f"private key {path} is not an ECDSA P-256 key")
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, device_id: str, serial: str) -> bytes:
    """A PEM certificate request: CN = device id, the board's serial number in the subject."""
    topics.check_device_id(device_id)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, device_id),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, serial),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def parse_csr(pem: bytes) -> tuple[x509.CertificateSigningRequest, str, str]:
    """Check a device CSR: size, PEM, signature, P-256 key, a valid device id as CN, a serial.
    Return (csr, device id, serial); raise ``IdentityError`` saying what is wrong."""
    if len(pem) > MAX_CSR_BYTES:
        raise IdentityError(f"certificate request of {len(pem)} bytes exceeds {MAX_CSR_BYTES}")
    try:
        csr = x509.load_pem_x509_csr(pem)
    except ValueError:
        raise IdentityError("certificate request is not a PEM-encoded CSR") from None
    if not csr.is_signature_valid:
        raise IdentityError("certificate request signature does not verify")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != CURVE.name:
        raise IdentityError("certificate request must carry an ECDSA P-256 key")
    device_id = _single(csr.subject, NameOID.COMMON_NAME, "common name (device id)")
    serial = _single(csr.subject, NameOID.SERIAL_NUMBER, "serial number")
    try:
        topics.check_device_id(device_id)
    except ProtocolError as exc:
        raise IdentityError(f"certificate request: {exc}") from None
    if not 1 <= len(serial) <= 64:
        raise IdentityError("certificate request serial number must be 1-64 characters")
    return csr, device_id, serial


def _single(name: x509.Name, oid: x509.ObjectIdentifier, what: str) -> str:
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1:
        raise IdentityError(f"certificate request must have exactly one {what}")
    value = values[0].value
    return value if isinstance(value, str) else value.decode()


def load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise IdentityError(f"certificate {path} does not exist") from None
    except ValueError:
        raise IdentityError(f"certificate {path} is not a PEM certificate") from None


def common_name(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not values:
        raise IdentityError("certificate has no common name")
    value = values[0].value
    return value if isinstance(value, str) else value.decode()


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint, lowercase hex."""
    return cert.fingerprint(hashes.SHA256()).hex()
