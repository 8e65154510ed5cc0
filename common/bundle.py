"""The factory bundle as the device checks it: a device's whole identity in a folder for its SD-card
image (offline path). ``provisioning/bundle.py`` (``write_bundle``) makes one with the fleet CA.

A bundle folder holds ``device.key`` (made by the factory tool, 0600), ``device.crt``, ``chain.pem``
(issuing CA, root), ``manifest.json`` (device id, serial, server signing key, broker address, the
server's URL for renewal if any, and the SHA-256 of every file) and ``manifest.sig``: base64
ECDSA-SHA256 over ``manifest.json`` by the key of the CA that issued the certificate.
``verify_bundle`` accepts a bundle only if its chain ends at the fleet root the device trusts, the
manifest signature verifies and every file is the one listed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from resonera.common.identity import IdentityError, common_name

FILES: Final = ("device.key", "device.crt", "chain.pem")
MANIFEST: Final = "manifest.json"
SIGNATURE: Final = "manifest.sig"
FORMAT: Final = 1


class BundleError(IdentityError):
    """A bundle is incomplete, tampered with, or not from our fleet."""


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: what a device installs."""

    folder: Path
    manifest: dict[str, Any]
    key_pem: bytes
    cert_pem: bytes
    chain_pem: bytes

    @property
    def device_id(self) -> str:
        return str(self.manifest["device_id"])


def verify_chain(cert: x509.Certificate, chain: list[x509.Certificate]) -> None:
    """``cert`` was issued by ``chain[0]``, each CA by the next; raise ``IdentityError`` if not."""
    if not chain:
        raise IdentityError("the CA chain is empty")
    try:
        cert.verify_directly_issued_by(chain[0])
        for child, parent in itertools.pairwise(chain):
            child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise IdentityError(f"the certificate does not chain to its CA: {exc}") from None


def verify_bundle(folder: Path, fleet_root: x509.Certificate) -> Bundle:
    """The bundle in ``folder``, verified against the fleet root the device trusts."""
    try:
        data = (folder / MANIFEST).read_bytes()
        signature = base64.b64decode((folder / SIGNATURE).read_text().strip(), validate=True)
        chain_pem = (folder / "chain.pem").read_bytes()
        cert_pem = (folder / "device.crt").read_bytes()
        key_pem = (folder / "device.key").read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(
            f"bundle {folder} is incomplete: {Path(str(exc.filename)).name} is missing"
        ) from None
    except (binascii.Error, ValueError):
        raise BundleError(f"bundle {folder}: {SIGNATURE} is not base64") from None
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise BundleError(f"bundle {folder}: chain.pem or device.crt is not PEM") from None
    if not chain or chain[-1] != fleet_root:
        raise BundleError(f"bundle {folder} is not from this fleet (its root is another CA)")
    try:
        verify_chain(cert, chain)
    except IdentityError as exc:
        raise BundleError(f"bundle {folder}: {exc}") from None
    issuer_key = chain[0].public_key()
    if not isinstance(issuer_key, ec.EllipticCurvePublicKey):
        raise BundleError(f"bundle {folder}: the issuing CA's key is not ECDSA")
    try:
        issuer_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise BundleError(
            f"bundle {folder}: the manifest signature does not verify (tampered with?)"
        ) from None
    manifest = json.loads(data)
    for name in FILES:
        if manifest.get("files", {}).get(name) != file_sha256(folder / name):
            raise BundleError(f"bundle {folder}: {name} is not the file that was signed")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise BundleError(f"bundle {folder}: device.key is not an unencrypted PEM key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise BundleError(f"bundle {folder}: device.key does not belong to device.crt")
    if common_name(cert) != manifest.get("device_id"):
        raise BundleError(f"bundle {folder}: the certificate is not for the manifest's device")
    return Bundle(folder, manifest, key_pem, cert_pem, chain_pem)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a bundle's file, as the manifest lists it."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
