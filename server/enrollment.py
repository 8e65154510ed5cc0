"""Enrollment: one-time codes, certificates from the online issuing CA, renewal, revocation.

A code is made by an admin (``resonera-provision device add SERIAL``) and stored only as its
SHA-256; it is good once, for one serial and the one device id fixed when it was made (never the
name a request asks for), until it expires. A device id the server knows already is given a new
identity only when the admin says so (``--reprovision``). Failed attempts are counted per serial
and per client address in the database (so every API process shares the count) and answered with
429 and ``Retry-After`` once a limit is reached. A request that fails issues nothing and leaves the
code unused, unless the failure was the code itself.

Renewal is authenticated by the device's current key: it signs the canonical JSON of
``{"certificate", "csr", "time"}``; the server checks that certificate is its own, current, the newest
of the device and not revoked, and that ``time`` is within the allowed clock skew.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import delete, func, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from resonera.common import topics
from resonera.common.clock import Clock, utc_now
from resonera.common.enrollment import renewal_payload
from resonera.common.errors import ProtocolError, ResoneraError
from resonera.common.identity import IdentityError, common_name, fingerprint, parse_csr
from resonera.provisioning.ca import CAError, FleetCA
from resonera.server.crypto import DesiredStateSigner, Ed25519Signer
from resonera.server.models import (
    DeviceCertificateRow,
    DeviceDesiredRow,
    DeviceRow,
    EnrollmentAttemptRow,
    EnrollmentRow,
)
from resonera.server.settings import EnrollmentSettings

log = logging.getLogger(__name__)

#: No 0/O, 1/I/L or U: a code is read off a screen and typed on a device.
CODE_ALPHABET: Final = "ABCDEFGHJKMNPQRSTVWXYZ23456789"
CODE_GROUPS: Final = 4
CODE_GROUP_LEN: Final = 5
SERIAL_MAX: Final = 64
CODE_MAX: Final = 64
DEFAULT_CODE_TTL: Final = timedelta(hours=24)
MAX_CODE_TTL: Final = timedelta(days=30)
#: Compared against when the serial is unknown, so that case takes as long as a wrong code.
_DUMMY_HASH: Final = hashlib.sha256(b"no such serial").hexdigest()


class EnrollmentError(ResoneraError):
    """A request refused, with the HTTP status to answer and, for 429, when to come back."""

    def __init__(self, status: int, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Issued:
    """What an enrolled or renewed device is given."""

    device_id: str
    certificate_pem: str
    #: The issuing CA's certificate, then the root's.
    chain_pem: str
    server_public_key: str
    broker_host: str
    broker_port: int
    desired_version: int
    not_after: datetime


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


def public_key_b64(cert: x509.Certificate) -> str:
    """How the registry stores a device's key: base64 DER SubjectPublicKeyInfo."""
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def register_code(
    engine: Engine,
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
        _bind(session, serial, bound, reprovision=reprovision, now=now)
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


def _bind(
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


def server_public_key(signer: DesiredStateSigner) -> str | None:
    """The pinned key devices get: base64 of the raw Ed25519 public key (None for other signers)."""
    if not isinstance(signer, Ed25519Signer):
        return None
    raw = signer.private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(raw).decode()


class Enroller:
    """Checks codes and renewal requests and signs with the issuing CA of ``settings``."""

    def __init__(
        self,
        settings: EnrollmentSettings,
        signing_public_key: str | None,
        *,
        clock: Clock = utc_now,
    ) -> None:
        self.settings = settings
        self.signing_public_key = signing_public_key
        #: Dates the codes' checks, the attempts and what the issuing CA signs.
        self.clock = clock

    def _ca(self) -> tuple[FleetCA, bytes]:
        folder: Path | None = self.settings.issuing_ca_dir
        if folder is None:
            # 404, not 503: nothing is broken, this server just does not enroll (bundles only)
            raise EnrollmentError(404, "enrollment is not set up on this server (no issuing CA)")
        if self.signing_public_key is None:
            raise EnrollmentError(
                404, "enrollment needs the server's Ed25519 desired-state signing key"
            )
        passphrase = self.settings.issuing_passphrase
        try:
            ca = FleetCA(folder, clock=self.clock)
        except CAError as exc:
            raise EnrollmentError(503, f"enrollment is not available: {exc}") from None
        return ca, passphrase.get_secret_value().encode() if passphrase else b""

    # --- enrollment ----------------------------------------------------------------------------

    def enroll(
        self,
        session: Session,
        *,
        serial: str,
        code: str,
        csr_pem: bytes,
        client: str,
        device_time: str | None = None,
    ) -> Issued:
        """``device_time``: the device's clock (ISO 8601 with a zone), checked when given."""
        now = self.clock()
        ca, passphrase = self._ca()
        check_serial(serial)
        self._rate_limit(session, serial, client, now)
        if device_time is not None:
            self._check_clock(device_time, now)
        row = session.get(EnrollmentRow, serial)
        given = code_hash(code)
        if not hmac.compare_digest(row.code_hash if row else _DUMMY_HASH, given) or row is None:
            self._failed(session, serial, client, now)
            raise EnrollmentError(
                403, f"the enrollment code is not valid for serial {serial!r} (check both)"
            )
        if row.used_at is not None:
            raise EnrollmentError(
                403,
                f"the enrollment code for serial {serial!r} was already used; "
                "ask an administrator for a new one (resonera-provision device add)",
            )
        if row.expires_at <= now:
            raise EnrollmentError(
                403,
                f"the enrollment code for serial {serial!r} expired at "
                f"{row.expires_at:%Y-%m-%d %H:%M} UTC; ask an administrator for a new one",
            )
        try:
            _csr, device_id, csr_serial = parse_csr(csr_pem)
        except IdentityError as exc:
            raise EnrollmentError(400, str(exc)) from None
        if csr_serial != serial:
            raise EnrollmentError(
                400, f"the certificate request names serial {csr_serial!r}, not {serial!r}"
            )
        if row.device_id is None:
            raise EnrollmentError(
                403,
                f"the code for serial {serial!r} was made before codes were bound to a device "
                "id; ask an administrator for a new one (resonera-provision device add)",
            )
        if device_id != row.device_id:
            raise EnrollmentError(
                400,
                f"this code enrolls serial {serial!r} as device {row.device_id!r}, but the "
                f"request names {device_id!r}: set device_id = {row.device_id!r} on the device",
            )
        # Checked again at use: the registry may have changed since the code was made.
        _bind(session, serial, device_id, reprovision=row.reprovision, now=now)
        # Single use even when two requests race: only one UPDATE finds the code unused.
        taken = session.execute(
            update(EnrollmentRow)
            .where(col(EnrollmentRow.serial) == serial, col(EnrollmentRow.used_at).is_(None))
            .values(used_at=now)
        )
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            session.rollback()
            raise EnrollmentError(403, f"the enrollment code for serial {serial!r} was just used")
        cert = self._sign(ca, passphrase, csr_pem, serial)
        record_certificate(session, cert, how="enroll", now=now)
        session.commit()
        return self._issued(session, ca, cert)

    def _check_clock(self, time: str, now: datetime) -> None:
        """A device whose clock is off would refuse its certificate (or replay a renewal): say
        so before anything is issued or spent."""
        try:
            sent = datetime.fromisoformat(time)
        except ValueError:
            raise EnrollmentError(400, f"time {time[:40]!r} is not an ISO 8601 time") from None
        if sent.tzinfo is None:
            raise EnrollmentError(400, "time must carry a zone (e.g. +00:00)")
        skew = abs((now - sent).total_seconds())
        if skew > self.settings.max_clock_skew_s:
            raise EnrollmentError(
                400,
                f"the device's clock is {skew:.0f} s away from the server's "
                f"(at most {self.settings.max_clock_skew_s} s); set the device's clock",
            )

    def _rate_limit(self, session: Session, serial: str, client: str, now: datetime) -> None:
        since = now - timedelta(seconds=self.settings.window_s)
        for column, value, limit, what in (
            (EnrollmentAttemptRow.serial, serial, self.settings.max_failures_per_serial, "serial"),
            (
                EnrollmentAttemptRow.client,
                client[:100],
                self.settings.max_failures_per_client,
                "address",
            ),
        ):
            count, oldest = session.exec(
                select(func.count(), func.min(EnrollmentAttemptRow.at)).where(
                    column == value, col(EnrollmentAttemptRow.at) > since
                )
            ).one()
            if count >= limit and oldest is not None:
                oldest_at = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)
                wait = int((oldest_at - since).total_seconds()) + 1
                raise EnrollmentError(
                    429,
                    f"too many failed enrollment attempts for this {what}; try again in {wait} s",
                    retry_after_s=max(wait, 1),
                )

    def _failed(self, session: Session, serial: str, client: str, now: datetime) -> None:
        # Attempts older than the window count for nothing: drop them, so the table stays small.
        since = now - timedelta(seconds=self.settings.window_s)
        session.execute(delete(EnrollmentAttemptRow).where(col(EnrollmentAttemptRow.at) <= since))
        session.add(EnrollmentAttemptRow(at=now, serial=serial[:64], client=client[:100]))
        session.commit()

    def _sign(
        self, ca: FleetCA, passphrase: bytes, csr_pem: bytes, serial: str
    ) -> x509.Certificate:
        try:
            return ca.sign_device_csr(
                csr_pem, passphrase, expected_serial=serial, days=self.settings.cert_days
            )
        except IdentityError as exc:  # CAError included: a locked CA is the server's problem
            status = 400 if not isinstance(exc, CAError) or "serial" in str(exc) else 503
            raise EnrollmentError(status, str(exc)) from None

    def _issued(self, session: Session, ca: FleetCA, cert: x509.Certificate) -> Issued:
        device_id = common_name(cert)
        desired = session.get(DeviceDesiredRow, device_id)
        assert self.signing_public_key is not None  # _ca() checked it
        return Issued(
            device_id=device_id,
            certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            chain_pem=ca.chain_path.read_text(),
            server_public_key=self.signing_public_key,
            broker_host=self.settings.broker_host,
            broker_port=self.settings.broker_port,
            desired_version=desired.version if desired is not None else 0,
            not_after=cert.not_valid_after_utc,
        )

    # --- renewal -------------------------------------------------------------------------------

    def renew(
        self,
        session: Session,
        *,
        certificate_pem: bytes,
        csr_pem: bytes,
        time: str,
        signature: str,
    ) -> Issued:
        """``time`` is the device's clock as it signed it (ISO 8601 with a zone)."""
        now = self.clock()
        ca, passphrase = self._ca()
        try:
            current = x509.load_pem_x509_certificate(certificate_pem)
        except ValueError:
            raise EnrollmentError(400, "certificate is not a PEM certificate") from None
        try:
            current.verify_directly_issued_by(ca.cert)
        except (ValueError, TypeError, InvalidSignature):
            raise EnrollmentError(401, "the certificate was not issued by this server") from None
        if not current.not_valid_before_utc <= now <= current.not_valid_after_utc:
            raise EnrollmentError(
                401,
                f"the certificate is not valid now (valid until "
                f"{current.not_valid_after_utc:%Y-%m-%d %H:%M} UTC); enroll again with a new code",
            )
        device_id = common_name(current)
        row = session.get(DeviceCertificateRow, fingerprint(current))
        device = session.get(DeviceRow, device_id)
        if row is None or device is None:
            raise EnrollmentError(401, f"the certificate of {device_id!r} is not registered")
        if row.revoked_at is not None or device.revoked or ca.is_revoked(current):
            raise EnrollmentError(403, f"device {device_id!r} is revoked")
        self._check_clock(time, now)
        key = current.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)  # we issue P-256 only
        try:
            key.verify(
                base64.b64decode(signature, validate=True),
                renewal_payload(certificate_pem, csr_pem, time),
                ec.ECDSA(hashes.SHA256()),
            )
        except (binascii.Error, ValueError, InvalidSignature):
            raise EnrollmentError(
                401, "the renewal request is not signed by the certificate's key"
            ) from None
        try:
            csr, csr_device, _serial = parse_csr(csr_pem)
        except IdentityError as exc:
            raise EnrollmentError(400, str(exc)) from None
        if csr_device != device_id:
            raise EnrollmentError(400, f"the request names {csr_device!r}, not {device_id!r}")
        if csr.public_key() == key:
            raise EnrollmentError(400, "renewal needs a new key pair, not the current key")
        if row.superseded_at is not None:
            return self._reissued(session, ca, device_id, csr)
        serial = _subject_serial(current)
        cert = self._sign(ca, passphrase, csr_pem, serial)
        record_certificate(session, cert, how="renew", now=now)
        session.commit()
        return self._issued(session, ca, cert)

    def _reissued(
        self, session: Session, ca: FleetCA, device_id: str, csr: x509.CertificateSigningRequest
    ) -> Issued:
        """A renewal retried with the key it was already answered for: the device lost the answer
        (it crashed before installing it) and keeps its pending key, so it gets the same
        certificate again. Any other request from a superseded certificate is refused."""
        newest = session.exec(
            select(DeviceCertificateRow).where(
                col(DeviceCertificateRow.device_id) == device_id,
                col(DeviceCertificateRow.superseded_at).is_(None),
                col(DeviceCertificateRow.revoked_at).is_(None),
            )
        ).first()
        cert = ca.issued(int(newest.serial_number, 16)) if newest is not None else None
        if cert is None or cert.public_key() != csr.public_key():
            raise EnrollmentError(
                409, f"a newer certificate was already issued to {device_id!r}; renew with it"
            )
        return self._issued(session, ca, cert)


def _subject_serial(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    if not values:
        raise EnrollmentError(400, "the certificate carries no serial number")
    value = values[0].value
    return value if isinstance(value, str) else value.decode()


def register_bundle(
    engine: Engine,
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
        _bind(session, serial, device_id, reprovision=reprovision, now=now)
        row = session.get(EnrollmentRow, serial) or EnrollmentRow(
            serial=serial, code_hash=_DUMMY_HASH, expires_at=now, created_at=now
        )
        row.device_id = device_id
        row.used_at = now
        session.add(row)
        record_certificate(session, cert, how="bundle", now=now)
        session.commit()


# --- revocation from the server ------------------------------------------------------------------

#: What the person is told to do when the server cannot revoke the certificate itself.
MANUAL_REVOCATION: Final = (
    "revoke its certificate on the CA with `resonera-provision device revoke --ca DIR --cert FILE` "
    "and reload the broker"
)


#: How a revocation ended, for the dashboard (which shows fixed texts, never request input).
REVOCATION_OUTCOMES: Final = {
    "blocked": "the broker was reloaded and refuses it from now on.",
    "reload_failed": (
        "its certificates are on the CRL, but the broker reload command failed (the audit log "
        "and the server log say more): reload the broker by hand."
    ),
    "reload_needed": (
        "its certificates are on the CRL: reload the broker so it reads it "
        "(no broker_reload_command is set)."
    ),
    "manual": f"this server could not revoke all its certificates: {MANUAL_REVOCATION}.",
}


@dataclass(frozen=True)
class DeviceRevocation:
    """What revoking a device did beyond marking it revoked (the caller audits and commits)."""

    device_id: str
    #: A key of ``REVOCATION_OUTCOMES``.
    outcome: str
    #: Serial numbers (hex) put on the issuing CA's CRL now.
    listed: list[str]
    #: None: no reload command configured (or nothing to reload); else whether it succeeded.
    broker_reloaded: bool | None
    #: What went wrong or is left to a person; None when the broker now refuses the device.
    problem: str | None

    def summary(self) -> str:
        done = f"Device {self.device_id} is revoked: its messages are quarantined from now on"
        if self.listed:
            done += f"; {len(self.listed)} certificate(s) added to the CRL"
        if self.broker_reloaded:
            done += "; the broker was reloaded and refuses it"
        return f"{done}. {self.problem}" if self.problem else done + "."


def revoke_device(
    session: Session, settings: EnrollmentSettings, device: DeviceRow, *, now: datetime
) -> DeviceRevocation:
    """Mark ``device`` and all its certificates revoked; ingest quarantines its messages from now
    on and what it sent stays. With the issuing CA on this server, also put every certificate
    that CA issued to the device on its CRL and run ``broker_reload_command``, so the broker
    refuses it. Never raises for the CA or the command: what failed is in ``problem``."""
    device.revoked = True
    session.add(device)
    rows = session.exec(
        select(DeviceCertificateRow).where(col(DeviceCertificateRow.device_id) == device.id)
    ).all()
    for row in rows:
        if row.revoked_at is None:
            row.revoked_at = now
            session.add(row)
    if settings.issuing_ca_dir is None:
        return DeviceRevocation(
            device.id, "manual", [], None, f"This server holds no issuing CA: {MANUAL_REVOCATION}."
        )
    try:
        ca = FleetCA(settings.issuing_ca_dir, clock=lambda: now)
        found = [ca.issued(int(r.serial_number, 16)) for r in rows]
        certs = [c for c in found if c is not None]
        passphrase = settings.issuing_passphrase
        secret = passphrase.get_secret_value().encode() if passphrase else b""
        added = ca.revoke_all(certs, device.id, "revoked on the server", secret)
    except (CAError, ValueError) as exc:
        log.warning("revoking %s on the issuing CA failed: %s", device.id, exc)
        return DeviceRevocation(
            device.id,
            "manual",
            [],
            None,
            f"The issuing CA could not revoke it ({exc}): {MANUAL_REVOCATION}.",
        )
    listed = [f"{c.serial_number:x}" for c in added]
    foreign = len(found) - len(certs)
    note = (
        f"{foreign} certificate(s) were not issued by this server's CA: {MANUAL_REVOCATION}."
        if foreign
        else None
    )
    if not certs:
        return DeviceRevocation(device.id, "manual", listed, None, note)
    reloaded, failure = run_broker_reload(settings)
    problem = " ".join(p for p in (failure, note) if p) or None
    if foreign:
        outcome = "manual"
    else:
        outcome = {None: "reload_needed", True: "blocked", False: "reload_failed"}[reloaded]
    return DeviceRevocation(device.id, outcome, listed, reloaded, problem)


def run_broker_reload(settings: EnrollmentSettings) -> tuple[bool | None, str | None]:
    """Run ``broker_reload_command`` (no shell, with a timeout): (None, advice) without one,
    (True, None) on success, (False, why) on failure."""
    argv = settings.broker_reload_command
    if argv is None:
        return None, "Reload the broker so it reads the new CRL (no broker_reload_command is set)."
    shown = " ".join(argv)
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=settings.broker_reload_timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        why = f"did not finish within {settings.broker_reload_timeout_s:g} s"
    except OSError as exc:
        why = f"could not be started: {exc.strerror or exc}"
    else:
        if done.returncode == 0:
            return True, None
        output = (done.stderr or done.stdout).strip().splitlines()
        why = f"exited with {done.returncode}" + (f": {output[-1][:200]}" if output else "")
    log.warning("the broker reload command %r %s", shown, why)
    return False, (
        f"The broker reload command `{shown}` {why}; "
        "reload the broker by hand so it reads the new CRL."
    )
