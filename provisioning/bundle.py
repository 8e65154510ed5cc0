"""The factory bundle, made: a device's key, its certificate from the fleet's issuing CA and the
manifest signed by that CA, in a folder for its SD-card image (offline path). The format, and how a
device verifies a bundle (``verify_bundle``), are in ``common/bundle.py``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from resonera.common.agent_update import BundleRejected, update_key_from_b64
from resonera.common.bundle import (
    FILES,
    FORMAT,
    MANIFEST,
    SIGNATURE,
    BundleError,
    file_sha256,
)
from resonera.common.identity import fingerprint, generate_key, make_csr, write_private_key
from resonera.server.fleet_ca import FleetCA


def write_bundle(
    ca: FleetCA,
    passphrase: bytes,
    out: Path,
    *,
    device_id: str,
    serial: str,
    server_public_key: str,
    broker_host: str,
    broker_port: int,
    days: int = 365,
    server_url: str | None = None,
    update_public_keys: Sequence[str] = (),
) -> x509.Certificate:
    """Make the device's key and certificate and write the signed bundle into ``out`` (which must
    not hold one already); return the certificate. ``update_public_keys`` (base64 raw Ed25519) are
    the update keys the device pins: none, and it takes no agent update."""
    if (out / MANIFEST).exists():
        raise BundleError(f"{out} already holds a bundle; refusing to overwrite it")
    for text in update_public_keys:
        try:
            update_key_from_b64(text)
        except BundleRejected as exc:
            raise BundleError(str(exc)) from None
    key = generate_key()
    cert = ca.sign_device_csr(
        make_csr(key, device_id, serial), passphrase, expected_serial=serial, days=days
    )
    out.mkdir(parents=True, exist_ok=True)
    write_private_key(key, out / "device.key")
    (out / "device.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "chain.pem").write_bytes(ca.chain_path.read_bytes())
    manifest = {
        "format": FORMAT,
        "device_id": device_id,
        "serial": serial,
        "server_public_key": server_public_key,
        "update_public_keys": list(update_public_keys),
        "broker_host": broker_host,
        "broker_port": broker_port,
        "certificate_sha256": fingerprint(cert),
        "server": server_url,
        "files": {name: file_sha256(out / name) for name in FILES},
    }
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (out / MANIFEST).write_bytes(data)
    signature = ca.sign_bytes(passphrase, data)
    (out / SIGNATURE).write_text(base64.b64encode(signature).decode() + "\n")
    return cert
