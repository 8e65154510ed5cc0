"""The registry's record of device certificates: each certificate issued to a device (enrollment,
renewal, factory bundle), the newest one's key as the key its messages are signed with, and
revocation of one certificate."""

from __future__ import annotations

import base64
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from resonera.common.identity import common_name, fingerprint
from resonera.server.models import DeviceCertificateRow, DeviceRow


def public_key_b64(cert: x509.Certificate) -> str:
    """How the registry stores a device's key: base64 DER SubjectPublicKeyInfo."""
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def record_certificate(
    session: Session, cert: x509.Certificate, *, how: str, now: datetime
) -> DeviceRow:
    """Register ``cert`` as the device's newest certificate (older ones are superseded) and its key
    as the one its messages must be signed with. The caller commits."""
    device_id = common_name(cert)
    device = session.get(DeviceRow, device_id)
    if device is None:
        device = DeviceRow(id=device_id, created_at=now, note=f"enrolled ({how})")
    device.cert_fingerprint = fingerprint(cert)
    device.public_key = public_key_b64(cert)
    session.add(device)
    session.execute(
        update(DeviceCertificateRow)
        .where(
            col(DeviceCertificateRow.device_id) == device_id,
            col(DeviceCertificateRow.superseded_at).is_(None),
        )
        .values(superseded_at=now)
    )
    session.add(
        DeviceCertificateRow(
            fingerprint=fingerprint(cert),
            device_id=device_id,
            serial_number=f"{cert.serial_number:x}",
            public_key=public_key_b64(cert),
            how=how,
            not_after=cert.not_valid_after_utc,
            issued_at=now,
        )
    )
    return device


def revoke_certificate(engine: Engine, cert: x509.Certificate, *, now: datetime) -> str | None:
    """Mark ``cert`` revoked and its device revoked: ingest then quarantines the device's messages,
    and what it sent before stays. Return the device id, or None if the server never knew it."""
    device_id = common_name(cert)
    with Session(engine) as session:
        row = session.get(DeviceCertificateRow, fingerprint(cert))
        if row is not None and row.revoked_at is None:
            row.revoked_at = now
            session.add(row)
        device = session.get(DeviceRow, device_id)
        if device is None and row is None:
            return None
        if device is not None:
            device.revoked = True
            session.add(device)
        session.commit()
    return device_id
