"""Ingest's checks beyond the envelope: registry, signatures, "latest" by sequence number,
presence, patient attribution and the daily dose (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.common.signing import envelope_signing_bytes
from resonera.server import metrics
from resonera.server.ingest import IngestProcessor, Received
from resonera.server.models import (
    DeviceStateRow,
    DoseDailyRow,
    QuarantineRow,
    SessionRow,
)

MakeEnvelope = Callable[..., Envelope]
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _process(engine: Engine, *envelopes: Envelope) -> Any:
    batch = [Received(topics.up(e.device, e.kind), e.to_bytes()) for e in envelopes]
    return IngestProcessor(engine, clock=lambda: NOW).process(batch)


def _quarantine(engine: Engine) -> list[QuarantineRow]:
    with Session(engine) as session:
        return list(session.exec(select(QuarantineRow)).all())


def _state(engine: Engine, device_id: str) -> DeviceStateRow:
    with Session(engine) as session:
        row = session.get(DeviceStateRow, device_id)
        assert row is not None
        return row


def test_unknown_device_is_quarantined_with_the_reason(
    engine: Engine, make_envelope: MakeEnvelope
) -> None:
    before = metrics.INGEST_QUARANTINED._value.get()
    result = _process(engine, make_envelope("dev-nobody"))
    assert result.committed == {}
    (row,) = _quarantine(engine)
    assert row.reason == "device 'dev-nobody' is not registered"
    assert row.device_id == "dev-nobody"
    assert metrics.INGEST_QUARANTINED._value.get() == before + 1


def test_revoked_device_is_quarantined(
    engine: Engine, make_envelope: MakeEnvelope, registered: Callable[..., str]
) -> None:
    registered("dev-old", revoked=True)
    registered("dev-ok")
    good = make_envelope("dev-ok")
    result = _process(engine, make_envelope("dev-old"), good)
    assert result.committed == {"dev-ok": [good.id]}
    (row,) = _quarantine(engine)
    assert row.reason == "device 'dev-old' is revoked"


def _signed(key: Ed25519PrivateKey, envelope: Envelope) -> Envelope:
    signature = base64.b64encode(key.sign(envelope_signing_bytes(envelope))).decode()
    return envelope.model_copy(update={"sig": signature})


def _public(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def test_signatures_are_enforced_for_a_device_with_a_key(
    engine: Engine, make_envelope: MakeEnvelope, registered: Callable[..., str]
) -> None:
    key = Ed25519PrivateKey.generate()
    registered("dev-keyed", public_key=_public(key))
    good = _signed(key, make_envelope("dev-keyed", seq=1))
    forged = _signed(Ed25519PrivateKey.generate(), make_envelope("dev-keyed", seq=2))
    tampered = _signed(key, make_envelope("dev-keyed", seq=3)).model_copy(update={"seq": 4})
    unsigned = make_envelope("dev-keyed", seq=5)
    result = _process(engine, good, forged, tampered, unsigned)
    assert result.committed == {"dev-keyed": [good.id]}
    reasons = sorted(r.reason for r in _quarantine(engine))
    assert reasons == [
        "signature does not verify with the device's registered key",
        "signature does not verify with the device's registered key",
        "unsigned message from a device with a registered key",
    ]
    with Session(engine) as session:
        (row,) = session.exec(select(SessionRow)).all()
    assert row.sig_status == "verified"


def test_devices_without_a_key_are_stored_as_unsigned(
    engine: Engine, make_envelope: MakeEnvelope, registered: Callable[..., str]
) -> None:
    registered("dev-plain")
    _process(engine, make_envelope("dev-plain"))
    with Session(engine) as session:
        (row,) = session.exec(select(SessionRow)).all()
    assert row.sig_status == "unsigned"


def test_latest_state_follows_seq_not_arrival_order(
    engine: Engine, make_envelope: MakeEnvelope, registered: Callable[..., str]
) -> None:
    registered("dev-s")
    newest = make_envelope("dev-s", kind="metrics", seq=9)
    _process(engine, newest)
    _process(engine, make_envelope("dev-s", seq=3))  # older, arriving later
    state = _state(engine, "dev-s")
    assert (state.last_seq, state.last_message_id, state.last_kind) == (9, newest.id, "metrics")
    _process(engine, make_envelope("dev-s", seq=12))
    assert _state(engine, "dev-s").last_seq == 12


def test_reported_version_follows_seq(
    engine: Engine, make_envelope: MakeEnvelope, registered: Callable[..., str]
) -> None:
    registered("dev-r")
    _process(engine, make_envelope("dev-r", kind="reported", body={"version": 4}, seq=10))
    _process(engine, make_envelope("dev-r", kind="reported", body={"version": 3}, seq=8))
    assert _state(engine, "dev-r").reported_version == 4


def test_reported_without_a_version_is_quarantined(
    engine: Engine, make_envelope: MakeEnvelope, registered: Callable[..., str]
) -> None:
    registered("dev-r")
    _process(engine, make_envelope("dev-r", kind="reported", body={"version": "4"}))
    (row,) = _quarantine(engine)
    assert "'version' must be an integer" in row.reason


def test_presence_from_the_status_topic(engine: Engine, registered: Callable[..., str]) -> None:
    registered("dev-p")
    processor = IngestProcessor(engine, clock=lambda: NOW)
    result = processor.process(
        [
            Received(topics.status("dev-p"), b"online"),
            Received(topics.status("dev-unknown"), b"online"),
        ]
    )
    assert result.committed == {}
    assert _state(engine, "dev-p").online is True
    processor.process([Received(topics.status("dev-p"), b"offline")])
    assert _state(engine, "dev-p").online is False
    assert processor.counters["received"] == 0
    assert _quarantine(engine) == []


def test_sessions_are_attributed_and_dosed_per_day(
    engine: Engine,
    make_patient: Callable[..., str],
    make_envelope: MakeEnvelope,
    make_body: Callable[..., dict[str, Any]],
    registered: Callable[..., str],
) -> None:
    patient = make_patient()
    registered("dev-d", patient_id=patient, since=T0 - timedelta(hours=1))
    before = make_envelope("dev-d", body=make_body(start=T0 - timedelta(hours=2)))
    first = make_envelope("dev-d", body=make_body(start=T0, dose_fraction=0.25), seq=1)
    second = make_envelope("dev-d", body=make_body(start=T0 + timedelta(hours=1)), seq=2)
    next_day = make_envelope("dev-d", body=make_body(start=T0 + timedelta(days=1)), seq=3)
    _process(engine, before, first, second, next_day)
    _process(engine, first)  # resent: adds nothing
    with Session(engine) as session:
        rows = {r.message_id: r.patient_id for r in session.exec(select(SessionRow)).all()}
        dose = sorted(
            (d.day, d.sessions, d.dose_fraction) for d in session.exec(select(DoseDailyRow)).all()
        )
    assert rows[before.id] is None
    assert {rows[first.id], rows[second.id], rows[next_day.id]} == {patient}
    day = T0.date()
    assert dose == [(day, 2, 0.25), (date.fromordinal(day.toordinal() + 1), 1, 0.0)]


@pytest.mark.parametrize("value", [-1.0, "0.5", True, None])
def test_unusable_dose_fields_count_as_zero(
    make_body: Callable[..., dict[str, Any]], value: object
) -> None:
    from resonera.common.records import SessionRecord
    from resonera.server.ingest import session_dose

    body = make_body()
    record = SessionRecord.model_validate(body)
    assert session_dose(record, {**body, "dose_fraction": value}) == 0.0


def test_ecdsa_signed_messages_as_devices_sign_them(
    engine: Engine, make_envelope: MakeEnvelope, registered: Callable[..., str]
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from resonera.common.signing import sign_envelope

    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    registered("dev-ecdsa", public_key=base64.b64encode(der).decode())
    good = sign_envelope(make_envelope("dev-ecdsa", seq=1), key)
    other = sign_envelope(
        make_envelope("dev-ecdsa", seq=2), ec.generate_private_key(ec.SECP256R1())
    )
    result = _process(engine, good, other)
    assert result.committed == {"dev-ecdsa": [good.id]}
    (row,) = _quarantine(engine)
    assert row.reason == "signature does not verify with the device's registered key"
