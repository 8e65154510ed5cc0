"""Simulated devices' identities, made the way enrollment makes them: a key that never leaves the
device's folder, a certificate from the fleet CA, and the public key registered on the server.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import Engine
from sqlmodel import Session

from resonera.common.identity import generate_key, make_csr, write_private_key
from resonera.server.fleet_ca import FleetCA
from resonera.server.models import DeviceRow


@dataclass(frozen=True)
class DeviceIdentity:
    """A device's key and certificate, made the way enrollment makes them."""

    device_id: str
    key: ec.EllipticCurvePrivateKey
    key_file: Path
    cert_file: Path

    def public_key_b64(self) -> str:
        """What the server registry holds to verify the device's signatures (DER SPKI, base64)."""
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()


def issue_device(
    ca: FleetCA, passphrase: bytes, device_id: str, folder: Path, **issue: Any
) -> DeviceIdentity:
    """Key made here (never leaves ``folder``), CSR signed by the fleet CA, as enrollment does."""
    key = generate_key()
    key_file = write_private_key(key, folder / "device.key")
    cert = ca.sign_device_csr(make_csr(key, device_id, f"SN-{device_id}"), passphrase, **issue)
    cert_file = folder / "device.crt"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return DeviceIdentity(device_id, key, key_file, cert_file)


def register_devices(engine: Engine, identities: Iterable[DeviceIdentity]) -> None:
    """Put devices in the server registry with their public keys (what provisioning does)."""
    now = datetime.now(UTC)
    with Session(engine) as session:
        for identity in identities:
            if session.get(DeviceRow, identity.device_id) is None:
                session.add(
                    DeviceRow(
                        id=identity.device_id,
                        public_key=identity.public_key_b64(),
                        created_at=now,
                        note="fleet-sim",
                    )
                )
        session.commit()
