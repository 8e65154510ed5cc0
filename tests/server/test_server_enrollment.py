"""The enrollment rules on both databases (SQLite and PostgreSQL): a code is spent once, failures are
counted per serial and per address, revocation reaches the registry and stops enrollment, renewal and
ingest. Over HTTPS with a device and a broker: tests/provisioning/test_enrollment.py."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from factories import WallClock
from fleet import PASSPHRASE
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.common.enrollment import renewal_payload
from resonera.common.identity import common_name, fingerprint, generate_key, make_csr
from resonera.server.device_certificates import revoke_certificate
from resonera.server.enrollment import Enroller
from resonera.server.enrollment_codes import EnrollmentError, register_bundle, register_code
from resonera.server.fleet_ca import FleetCA
from resonera.server.models import DeviceCertificateRow, DeviceRow, EnrollmentRow
from resonera.server.revocation import revoke_device
from resonera.server.settings import EnrollmentSettings

#: Every test here runs on this injected clock alone: the codes, the attempts and what the CA signs.
T = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
SERVER_KEY = base64.b64encode(b"k" * 32).decode()


@pytest.fixture
def clock() -> WallClock:
    return WallClock(T)


@pytest.fixture
def enroller(tmp_path: Path, clock: WallClock) -> Enroller:
    root = FleetCA.init(tmp_path / "root", PASSPHRASE, clock=clock)
    root.issue_intermediate(PASSPHRASE, tmp_path / "issuing", PASSPHRASE)
    settings = EnrollmentSettings(
        issuing_ca_dir=tmp_path / "issuing",
        issuing_passphrase=SecretStr(PASSPHRASE.decode()),
        max_failures_per_serial=2,
        max_failures_per_client=3,
        window_s=600,
    )
    return Enroller(settings, SERVER_KEY, clock=clock)


def _enroll(
    enroller: Enroller,
    engine: Engine,
    serial: str,
    code: str,
    *,
    device_id: str | None = None,
    client: str = "10.0.0.1",
    key: ec.EllipticCurvePrivateKey | None = None,
) -> x509.Certificate:
    """Enroll with a CSR naming ``device_id`` (by default the serial, the id a code binds)."""
    csr = make_csr(key or generate_key(), device_id or serial, serial)
    with Session(engine) as session:
        issued = enroller.enroll(session, serial=serial, code=code, csr_pem=csr, client=client)
    return x509.load_pem_x509_certificate(issued.certificate_pem.encode())


def test_a_code_is_spent_once_and_registers_the_device(enroller: Enroller, engine: Engine) -> None:
    code, bound, expires = register_code(
        engine, "SN-1", ttl=timedelta(hours=1), device_id="dev-1", now=T
    )
    assert (bound, expires) == ("dev-1", T + timedelta(hours=1))
    # case and dashes do not matter
    cert = _enroll(enroller, engine, "SN-1", code.lower(), device_id="dev-1")
    with Session(engine) as session:
        device = session.get(DeviceRow, "dev-1")
        assert device is not None and device.public_key and not device.revoked
        row = session.get(EnrollmentRow, "SN-1")
        assert row is not None and row.used_at == T and row.device_id == "dev-1"
        assert session.get(DeviceCertificateRow, device.cert_fingerprint) is not None
        assert code not in row.code_hash
    assert cert.not_valid_after_utc > T
    with pytest.raises(EnrollmentError, match="already used") as caught:
        _enroll(enroller, engine, "SN-1", code, device_id="dev-1")
    assert caught.value.status == 403


def test_failures_are_limited_per_serial_then_per_address(
    enroller: Enroller, engine: Engine, clock: WallClock
) -> None:
    code, _, _ = register_code(engine, "SN-2", now=T)
    for _ in range(2):
        with pytest.raises(EnrollmentError, match="not valid for serial") as caught:
            _enroll(enroller, engine, "SN-2", "WRONG")
        assert caught.value.status == 403
        clock.advance(seconds=1)
    clock.now = T + timedelta(seconds=10)
    with pytest.raises(EnrollmentError, match="for this serial") as limited:
        _enroll(enroller, engine, "SN-2", code)
    assert limited.value.status == 429
    assert limited.value.retry_after_s == 591  # the oldest failure leaves the window then
    clock.advance(seconds=1)
    with pytest.raises(EnrollmentError, match="not valid"):
        _enroll(enroller, engine, "SN-other", "WRONG")
    clock.advance(seconds=1)
    with pytest.raises(EnrollmentError, match="for this address"):
        _enroll(enroller, engine, "SN-3", "WRONG")
    # once the window has passed, the right code works
    clock.now = T + timedelta(seconds=700)
    _enroll(enroller, engine, "SN-2", code)


def test_a_device_id_cannot_be_taken_by_another_serial(enroller: Enroller, engine: Engine) -> None:
    register_code(engine, "SN-4", device_id="dev-4", now=T)
    code, bound, _ = register_code(engine, "SN-5", now=T)
    assert bound == "SN-5"  # the serial, when no id is given: never the request's choice
    with pytest.raises(EnrollmentError, match="enrolls serial 'SN-5' as device 'SN-5'") as caught:
        _enroll(enroller, engine, "SN-5", code, device_id="dev-4")
    assert caught.value.status == 400
    with pytest.raises(EnrollmentError, match="belongs to the board with serial 'SN-4'"):
        register_code(engine, "SN-5", device_id="dev-4", now=T)
    # the admin's explicit re-provisioning moves it, and the old serial's code is spent
    old_code, _, _ = register_code(engine, "SN-4", device_id="dev-4", now=T)
    moved, _, _ = register_code(engine, "SN-5", device_id="dev-4", reprovision=True, now=T)
    _enroll(enroller, engine, "SN-5", moved, device_id="dev-4")
    with pytest.raises(EnrollmentError, match="already used"):
        _enroll(enroller, engine, "SN-4", old_code, device_id="dev-4")


def test_a_request_cannot_choose_its_name(enroller: Enroller, engine: Engine) -> None:
    """The finding: a code made without a device id enrolled a CSR named as the server."""
    code, _, _ = register_code(engine, "SN-X", now=T)
    for name in ("resonera-server", "dev-other"):
        with pytest.raises(EnrollmentError, match="as device 'SN-X'") as caught:
            _enroll(enroller, engine, "SN-X", code, device_id=name)
        assert caught.value.status == 400
    with Session(engine) as session:
        assert session.exec(select(DeviceRow)).all() == []
        row = session.get(EnrollmentRow, "SN-X")
        assert row is not None and row.used_at is None  # the code is still good for its device
    cert = _enroll(enroller, engine, "SN-X", code)
    assert common_name(cert) == "SN-X"


def test_a_device_registered_elsewhere_is_rebound_only_by_reprovisioning(
    enroller: Enroller, engine: Engine
) -> None:
    """A device registered through the API (``POST /devices``) or a bundle keeps its key until an
    admin re-provisions it explicitly."""
    with Session(engine) as session:
        session.add(DeviceRow(id="dev-api", created_at=T, note="registered by API", public_key="K"))
        session.commit()
    with pytest.raises(EnrollmentError, match="already registered") as caught:
        register_code(engine, "SN-A", device_id="dev-api", now=T)
    assert caught.value.status == 409
    code, _, _ = register_code(engine, "SN-A", device_id="dev-api", reprovision=True, now=T)
    cert = _enroll(enroller, engine, "SN-A", code, device_id="dev-api")
    with Session(engine) as session:
        device = session.get(DeviceRow, "dev-api")
        assert device is not None and device.public_key != "K"
        assert device.cert_fingerprint == fingerprint(cert)
    # the same serial asking again (a lost identity) is a re-provisioning too
    with pytest.raises(EnrollmentError, match="already registered"):
        register_code(engine, "SN-A", device_id="dev-api", now=T)


def test_a_registration_after_the_code_was_made_is_not_overwritten(
    enroller: Enroller, engine: Engine
) -> None:
    code, _, _ = register_code(engine, "SN-B", device_id="dev-b", now=T)
    with Session(engine) as session:
        session.add(DeviceRow(id="dev-b", created_at=T, note="registered by API", public_key="K"))
        session.commit()
    with pytest.raises(EnrollmentError, match="already registered"):
        _enroll(enroller, engine, "SN-B", code, device_id="dev-b")
    with Session(engine) as session:
        device = session.get(DeviceRow, "dev-b")
        assert device is not None and device.public_key == "K"


def test_revocation_marks_the_registry_and_stops_enrollment_and_renewal(
    enroller: Enroller, engine: Engine
) -> None:
    code, _, _ = register_code(engine, "SN-6", device_id="dev-6", now=T)
    key = generate_key()
    cert = _enroll(enroller, engine, "SN-6", code, device_id="dev-6", key=key)
    assert revoke_certificate(engine, cert, now=T) == "dev-6"
    with Session(engine) as session:
        device = session.get(DeviceRow, "dev-6")
        assert device is not None and device.revoked
    with pytest.raises(EnrollmentError, match="dev-6' is revoked") as refused:
        register_code(engine, "SN-6", device_id="dev-6", reprovision=True, now=T)
    assert refused.value.status == 403
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    csr = make_csr(generate_key(), "dev-6", "SN-6")
    when = T.isoformat()
    signature = key.sign(renewal_payload(cert_pem, csr, when), ec.ECDSA(hashes.SHA256()))
    with Session(engine) as session, pytest.raises(EnrollmentError, match="revoked") as caught:
        enroller.renew(
            session,
            certificate_pem=cert_pem,
            csr_pem=csr,
            time=when,
            signature=base64.b64encode(signature).decode(),
        )
    assert caught.value.status == 403


def test_a_bundle_registers_its_device(enroller: Enroller, engine: Engine) -> None:
    ca = FleetCA(enroller.settings.issuing_ca_dir or Path(), clock=enroller.clock)
    cert = ca.sign_device_csr(make_csr(generate_key(), "dev-7", "SN-7"), PASSPHRASE)
    register_bundle(engine, "SN-7", cert, now=T)
    with Session(engine) as session:
        device = session.get(DeviceRow, "dev-7")
        assert device is not None and device.public_key
        row = session.get(EnrollmentRow, "SN-7")
        assert row is not None and row.used_at == T


def test_without_an_issuing_ca_enrollment_is_off(engine: Engine) -> None:
    off = Enroller(EnrollmentSettings(), SERVER_KEY)
    with pytest.raises(EnrollmentError, match="not set up") as caught:
        _enroll(off, engine, "SN-8", "X")
    assert caught.value.status == 404


def test_a_device_clock_far_off_is_told_before_the_code_is_spent(
    enroller: Enroller, engine: Engine
) -> None:
    code, _, _ = register_code(engine, "SN-9", device_id="dev-9", now=T)
    csr = make_csr(generate_key(), "dev-9", "SN-9")
    late = (T - timedelta(hours=2)).isoformat()
    with Session(engine) as session, pytest.raises(EnrollmentError, match="clock is 7200 s"):
        enroller.enroll(
            session, serial="SN-9", code=code, csr_pem=csr, client="c", device_time=late
        )
    _enroll(enroller, engine, "SN-9", code, device_id="dev-9")


def _renew(
    enroller: Enroller,
    engine: Engine,
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    new_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    csr = make_csr(new_key, common_name(cert), "SN-10")
    when = enroller.clock().isoformat()
    signature = key.sign(renewal_payload(cert_pem, csr, when), ec.ECDSA(hashes.SHA256()))
    with Session(engine) as session:
        issued = enroller.renew(
            session,
            certificate_pem=cert_pem,
            csr_pem=csr,
            time=when,
            signature=base64.b64encode(signature).decode(),
        )
    return x509.load_pem_x509_certificate(issued.certificate_pem.encode())


def test_a_renewal_retried_with_the_same_key_gets_the_same_certificate(
    enroller: Enroller, engine: Engine
) -> None:
    code, _, _ = register_code(engine, "SN-10", device_id="dev-10", now=T)
    key, new_key = generate_key(), generate_key()
    cert = _enroll(enroller, engine, "SN-10", code, device_id="dev-10", key=key)
    renewed = _renew(enroller, engine, cert, key, new_key)
    # the device lost that answer: asking again from the old certificate, with the same new key
    assert _renew(enroller, engine, cert, key, new_key) == renewed
    with pytest.raises(EnrollmentError, match="a newer certificate was already issued") as caught:
        _renew(enroller, engine, cert, key, generate_key())
    assert caught.value.status == 409


def test_revoking_a_device_lists_all_its_certificates_on_the_crl(
    enroller: Enroller, engine: Engine
) -> None:
    code, _, _ = register_code(engine, "SN-10", device_id="dev-10", now=T)
    key, new_key = generate_key(), generate_key()
    cert = _enroll(enroller, engine, "SN-10", code, device_id="dev-10", key=key)
    renewed = _renew(enroller, engine, cert, key, new_key)
    with Session(engine) as session:
        device = session.get(DeviceRow, "dev-10")
        assert device is not None
        done = revoke_device(session, enroller.settings, device, now=T)
        session.commit()
    assert sorted(done.listed) == sorted(f"{c.serial_number:x}" for c in (cert, renewed))
    assert done.outcome == "reload_needed" and done.broker_reloaded is None
    assert "no broker_reload_command is set" in done.summary()
    ca = FleetCA(enroller.settings.issuing_ca_dir or Path())
    assert ca.is_revoked(cert) and ca.is_revoked(renewed)
    with Session(engine) as session:
        device = session.get(DeviceRow, "dev-10")
        assert device is not None and device.revoked
        rows = session.exec(select(DeviceCertificateRow)).all()
        assert len(rows) == 2 and all(r.revoked_at is not None for r in rows)
    # without the issuing CA: marked revoked, and told how to revoke the certificate
    with Session(engine) as session:
        device = session.get(DeviceRow, "dev-10")
        assert device is not None
        manual = revoke_device(session, EnrollmentSettings(), device, now=T)
    assert manual.outcome == "manual" and "resonera-provision device revoke" in manual.summary()
