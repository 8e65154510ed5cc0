"""Enrollment over HTTPS: a one-time code (``enrollment_codes``) spent for a certificate from the
online issuing CA, and renewal.

Failed code attempts are counted per serial and per client address in the database
(``ratelimit.FailureLimiter``, kind ``enroll``: every API process shares the count) and answered
with 429 and ``Retry-After`` once a limit is reached. A request that fails issues nothing and
leaves the code unused, unless the failure was the code itself.

Renewal is authenticated by the device's current key: it signs the canonical JSON of
``{"certificate", "csr", "time"}``; the server checks that certificate is its own, current, the newest
of the device and not revoked, and that ``time`` is within the allowed clock skew.

This module is the server's one user of the fleet CA library (``open_issuing_ca``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import update
from sqlmodel import Session, col, select

from resonera.common.clock import Clock, utc_now
from resonera.common.enrollment import renewal_payload
from resonera.common.identity import IdentityError, common_name, fingerprint, parse_csr
from resonera.server.crypto import DesiredStateSigner, Ed25519Signer
from resonera.server.device_certificates import record_certificate
from resonera.server.enrollment_codes import (
    DUMMY_HASH,
    EnrollmentError,
    bind_serial,
    check_serial,
    code_hash,
    register_code,
)
from resonera.server.fleet_ca import CAError, FleetCA
from resonera.server.models import DeviceCertificateRow, DeviceDesiredRow, DeviceRow, EnrollmentRow
from resonera.server.ratelimit import FailureLimiter, FailureQuota, Limited
from resonera.server.settings import EnrollmentSettings

# register_code and EnrollmentError stay importable from here (tests/enrolled_fleet.py, the API).
__all__ = [
    "Enroller",
    "EnrollmentError",
    "Issued",
    "open_issuing_ca",
    "register_code",
    "server_public_key",
]


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
    #: The keys agent updates are signed with (``docs/updates.md``): what the device pins.
    update_public_keys: tuple[str, ...] = ()


def server_public_key(signer: DesiredStateSigner) -> str | None:
    """The pinned key devices get: base64 of the raw Ed25519 public key (None for other signers)."""
    if not isinstance(signer, Ed25519Signer):
        return None
    raw = signer.private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(raw).decode()


def open_issuing_ca(
    folder: Path, settings: EnrollmentSettings, *, clock: Clock
) -> tuple[FleetCA, bytes]:
    """The issuing CA in ``folder`` (``settings.issuing_ca_dir``) dating what it signs by
    ``clock``, and its passphrase; ``CAError`` when there is none."""
    ca = FleetCA(folder, clock=clock)
    passphrase = settings.issuing_passphrase
    return ca, passphrase.get_secret_value().encode() if passphrase else b""


class Enroller:
    """Checks codes and renewal requests and signs with the issuing CA of ``settings``."""

    def __init__(
        self,
        settings: EnrollmentSettings,
        signing_public_key: str | None,
        *,
        update_public_keys: Sequence[str] = (),
        clock: Clock = utc_now,
    ) -> None:
        self.settings = settings
        self.signing_public_key = signing_public_key
        self.update_public_keys = tuple(update_public_keys)
        #: Dates the codes' checks, the attempts and what the issuing CA signs.
        self.clock = clock
        #: Failed code attempts per serial and per address (``settings.max_failures_*``).
        self.attempts = FailureLimiter("enroll", FailureQuota.for_enrollment(settings), clock=clock)

    def _ca(self, *, signs: bool = True) -> tuple[FleetCA, bytes]:
        """The issuing CA; ``signs``: for issuing a certificate, which also needs the server's
        signing key (its public half goes to the device)."""
        folder: Path | None = self.settings.issuing_ca_dir
        if folder is None:
            # 404, not 503: nothing is broken, this server just does not enroll (bundles only)
            raise EnrollmentError(404, "enrollment is not set up on this server (no issuing CA)")
        if signs and self.signing_public_key is None:
            raise EnrollmentError(
                404, "enrollment needs the server's Ed25519 desired-state signing key"
            )
        try:
            return open_issuing_ca(folder, self.settings, clock=self.clock)
        except CAError as exc:
            raise EnrollmentError(503, f"enrollment is not available: {exc}") from None

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
        self._rate_limit(session, serial, client)
        if device_time is not None:
            self._check_clock(device_time, now)
        row = session.get(EnrollmentRow, serial)
        given = code_hash(code)
        if not hmac.compare_digest(row.code_hash if row else DUMMY_HASH, given) or row is None:
            self.attempts.failed(session, serial, client)
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
        bind_serial(session, serial, device_id, reprovision=row.reprovision, now=now)
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

    def _rate_limit(self, session: Session, serial: str, client: str) -> None:
        try:
            self.attempts.check(session, serial, client)
        except Limited as exc:
            what = "serial" if exc.scope == "subject" else "address"
            raise EnrollmentError(
                429,
                f"too many failed enrollment attempts for this {what}; "
                f"try again in {exc.retry_after_s} s",
                retry_after_s=exc.retry_after_s,
            ) from None

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
            update_public_keys=self.update_public_keys,
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
        device_id, row = self._registered(session, ca, current, now)
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

    # --- a device over HTTPS ---------------------------------------------------------------------

    def device_of(self, session: Session, certificate: x509.Certificate) -> str:
        """The device id of a certificate a device presented (its TLS client certificate), by
        the renewal's checks: issued by this server's issuing CA, valid now, registered, and
        neither it nor its device revoked (403); ``EnrollmentError`` otherwise (401)."""
        ca, _passphrase = self._ca(signs=False)
        device_id, _row = self._registered(session, ca, certificate, self.clock())
        return device_id

    @staticmethod
    def _registered(
        session: Session, ca: FleetCA, current: x509.Certificate, now: datetime
    ) -> tuple[str, DeviceCertificateRow]:
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
        return device_id, row

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
