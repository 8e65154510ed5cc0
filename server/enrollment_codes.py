"""One-time enrollment codes and the serial -> device id binding each carries (factory bundles
bind without a code).

A code is made by an admin (``resonera-provision device add SERIAL``) and stored only as its
SHA-256; it is good once, for one serial and the one device id fixed when it was made (never the
name a request asks for), until it expires. A device id the server knows already is given a new
identity only when the admin says so (``--reprovision``). ``enrollment.Enroller`` spends codes.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Final

from cryptography import x509
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, select

from resonera.common import topics
from resonera.common.errors import ProtocolError, ResoneraError
from resonera.common.identity import common_name
from resonera.server.device_certificates import record_certificate
from resonera.server.models import DeviceRow, EnrollmentRow

#: No 0/O, 1/I/L or U: a code is read off a screen and typed on a device.
CODE_ALPHABET: Final = "ABCDEFGHJKMNPQRSTVWXYZ23456789"
CODE_GROUPS: Final = 4
CODE_GROUP_LEN: Final = 5
SERIAL_MAX: Final = 64
CODE_MAX: Final = 64
DEFAULT_CODE_TTL: Final = timedelta(hours=24)
MAX_CODE_TTL: Final = timedelta(days=30)
#: Compared against when the serial is unknown, so that case takes as long as a wrong code.
DUMMY_HASH: Final = hashlib.sha256(b"no such serial").hexdigest()


class EnrollmentError(ResoneraError):
    """A request refused, with the HTTP status to answer and, for 429, when to come back."""

    def __init__(self, status: int, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


def new_code() -> str:
    """A fresh code, ``XXXXX-XXXXX-XXXXX-XXXXX`` (about 98 bits)."""
    groups = (
        "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_GROUP_LEN))
        for _ in range(CODE_GROUPS)
    )
    return "-".join(groups)


def code_hash(code: str) -> str:
    """SHA-256 of the code without dashes, spaces or case (what a person may type differently)."""
    normal = "".join(code.split()).replace("-", "").upper()
    return hashlib.sha256(normal.encode()).hexdigest()


def check_serial(serial: str) -> str:
    if not 1 <= len(serial) <= SERIAL_MAX or not serial.isprintable() or serial != serial.strip():
        raise EnrollmentError(
            400, f"serial must be 1-{SERIAL_MAX} printable characters without outer spaces"
        )
    return serial


def register_code(
    engine: Engine | Connection,
    serial: str,
    *,
    ttl: timedelta = DEFAULT_CODE_TTL,
    device_id: str | None = None,
    reprovision: bool = False,
    now: datetime,
) -> tuple[str, str, datetime]:
    """Register ``serial`` (or give it a new code, which replaces an unused old one); return the
    code, shown once, the device id it enrolls and its expiry.

    The device id is fixed here, never by the device's request: ``device_id``, or the serial
    itself when that is a valid device id. An id the server already knows (enrolled, from a
    bundle, registered through the API, or bound to another serial) is taken over only with
    ``reprovision``: an admin's explicit decision to give that device a new identity."""
    check_serial(serial)
    if not timedelta(minutes=1) <= ttl <= MAX_CODE_TTL:
        raise EnrollmentError(400, "a code must be valid for 1 minute to 30 days")
    bound = _device_id_for(serial, device_id)
    code = new_code()
    with Session(engine) as session:
        row = session.get(EnrollmentRow, serial) or EnrollmentRow(
            serial=serial, code_hash="", expires_at=now, created_at=now
        )
        bind_serial(session, serial, bound, reprovision=reprovision, now=now)
        row.device_id = bound
        row.reprovision = reprovision
        row.code_hash = code_hash(code)
        row.expires_at = now + ttl
        row.used_at = None
        session.add(row)
        session.commit()
    return code, bound, now + ttl


def _device_id_for(serial: str, device_id: str | None) -> str:
    """The device id a serial enrolls as: the one given, else the serial when it is a valid id."""
    try:
        return topics.check_device_id(device_id if device_id is not None else serial)
    except ProtocolError as exc:
        if device_id is not None:
            raise EnrollmentError(400, str(exc)) from None
        raise EnrollmentError(
            400,
            f"serial {serial!r} cannot serve as a device id ({exc}); give the device id to bind "
            "(--device-id)",
        ) from None


def bind_serial(
    session: Session, serial: str, device_id: str, *, reprovision: bool, now: datetime
) -> None:
    """Check that ``serial`` may be bound to ``device_id``; with ``reprovision``, unbind the id from
    any other serial (spending that serial's unused code)."""
    others = session.exec(
        select(EnrollmentRow).where(
            EnrollmentRow.device_id == device_id, EnrollmentRow.serial != serial
        )
    ).all()
    known = session.get(DeviceRow, device_id)
    if known is not None and known.revoked:
        raise EnrollmentError(
            403, f"device {device_id!r} is revoked; a revoked device id is never given out again"
        )
    if reprovision:
        for other in others:
            other.device_id = None
            other.used_at = other.used_at or now
            session.add(other)
        return
    if others:
        raise EnrollmentError(
            409,
            f"device id {device_id!r} belongs to the board with serial {others[0].serial!r}; "
            f"to move it to {serial!r}, re-provision it explicitly (--reprovision)",
        )
    if known is not None:
        raise EnrollmentError(
            409,
            f"device {device_id!r} is already registered ({known.note or 'by an admin'}); "
            "to give it a new identity, re-provision it explicitly (--reprovision)",
        )


def register_bundle(
    engine: Engine | Connection,
    serial: str,
    cert: x509.Certificate,
    *,
    reprovision: bool = False,
    now: datetime,
) -> None:
    """Register a device that comes with a factory bundle: its serial (no code: used at once),
    its certificate and key, as enrollment would have. An id the server knows already is taken
    over only with ``reprovision`` (see ``register_code``)."""
    device_id = common_name(cert)
    with Session(engine) as session:
        bind_serial(session, serial, device_id, reprovision=reprovision, now=now)
        row = session.get(EnrollmentRow, serial) or EnrollmentRow(
            serial=serial, code_hash=DUMMY_HASH, expires_at=now, created_at=now
        )
        row.device_id = device_id
        row.used_at = now
        session.add(row)
        record_certificate(session, cert, how="bundle", now=now)
        session.commit()
