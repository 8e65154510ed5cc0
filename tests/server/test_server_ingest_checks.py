"""Ingest's checks beyond the envelope: registry, signatures, "latest" by sequence number,
presence, patient attribution and the daily dose (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import RECENT, event_body
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.common.ids import new_id
from resonera.common.records import HardwareLimits, HardwareReadings, SafetyEventRecord
from resonera.common.signing import envelope_signing_bytes
from resonera.server import metrics
from resonera.server.ingest import IngestProcessor, Received
from resonera.server.models import (
    CheckInRow,
    DeviceCertificateRow,
    DeviceStateRow,
    DoseDailyRow,
    QuarantineRow,
    SafetyEventRow,
    SessionRow,
)

MakeEnvelope = Callable[..., Envelope]
T0 = RECENT
#: The processor's clock: the day after T0.
NOW = T0 + timedelta(days=1, hours=3)


def _process(engine: Engine, *envelopes: Envelope) -> Any:
    batch = [Received(topics.up(e.device, e.kind), e.to_bytes()) for e in envelopes]
    return IngestProcessor(engine, clock=lambda: NOW).process(batch)


@pytest.fixture
def make_envelope(make_envelope: MakeEnvelope) -> MakeEnvelope:
    """Envelopes stamped on this module's clock."""
    return functools.partial(make_envelope, time=NOW)


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


def test_messages_queued_before_a_renewal_verify_with_the_earlier_key(
    engine: Engine, make_envelope: MakeEnvelope, registered: Callable[..., str]
) -> None:
    old, new, stolen = (Ed25519PrivateKey.generate() for _ in range(3))
    renewed_at = NOW - timedelta(hours=1)
    registered("dev-renewed", public_key=_public(new))
    with Session(engine) as session:
        for number, (key, revoked) in enumerate(((old, None), (stolen, renewed_at))):
            session.add(
                DeviceCertificateRow(
                    fingerprint=f"{number:064x}",
                    device_id="dev-renewed",
                    serial_number=str(number),
                    public_key=_public(key),
                    how="enroll",
                    not_after=renewed_at + timedelta(days=300),
                    issued_at=renewed_at - timedelta(days=60),
                    superseded_at=renewed_at,
                    revoked_at=revoked,
                )
            )
        session.commit()

    def at(key: Ed25519PrivateKey, seq: int, time: datetime) -> Envelope:
        return _signed(key, make_envelope("dev-renewed", seq=seq).model_copy(update={"time": time}))

    queued_before = at(old, 1, renewed_at - timedelta(minutes=5))
    after_renewal = at(old, 2, renewed_at + timedelta(minutes=30))
    revoked_key = at(stolen, 3, renewed_at - timedelta(minutes=5))
    current = at(new, 4, renewed_at + timedelta(minutes=30))
    result = _process(engine, queued_before, after_renewal, revoked_key, current)
    assert sorted(result.committed["dev-renewed"]) == sorted([queued_before.id, current.id])
    assert len(_quarantine(engine)) == 2


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
    for version, seq in ((4, 10), (3, 8)):
        body = {"desired_version": version, "status": "applied"}
        _process(engine, make_envelope("dev-r", kind="reported", body=body, seq=seq))
    assert _state(engine, "dev-r").reported_version == 4


def test_only_an_applied_version_counts_as_running(
    engine: Engine, make_envelope: MakeEnvelope, registered: Callable[..., str]
) -> None:
    registered("dev-r")
    applied = {"desired_version": 4, "status": "applied"}
    _process(engine, make_envelope("dev-r", kind="reported", body=applied, seq=10))
    for seq, status in ((11, "deferred"), (12, "refused")):
        body = {"desired_version": 5, "status": status, "reason": "raised limits wait"}
        _process(engine, make_envelope("dev-r", kind="reported", body=body, seq=seq))
    assert _state(engine, "dev-r").reported_version == 4
    assert _quarantine(engine) == []


def test_reported_without_a_valid_version_is_quarantined(
    engine: Engine, make_envelope: MakeEnvelope, registered: Callable[..., str]
) -> None:
    registered("dev-r")
    body = {"desired_version": "4", "status": "applied"}
    _process(engine, make_envelope("dev-r", kind="reported", body=body))
    (row,) = _quarantine(engine)
    assert row.reason.startswith("invalid reported body: desired_version")


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
    from resonera.server.dose_rollup import session_dose

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


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"type": "meltdown"}, "invalid event body: type:"),
        ({"at": "yesterday"}, "invalid event body: at:"),
        ({"code": 300}, "invalid event body: code:"),
        ({"readings": {"amp_temp_c": 40.0}}, "invalid event body: readings.supply_current_a:"),
        ({"volume": 11}, "invalid event body: volume:"),
        ({"simulation": "true"}, "invalid event body: simulation:"),
    ],
)
def test_safety_event_bodies_are_checked_with_the_devices_own_schema(
    engine: Engine,
    make_envelope: MakeEnvelope,
    registered: Callable[..., str],
    changes: dict[str, Any],
    reason: str,
) -> None:
    registered("dev-e")
    before = metrics.INGEST_QUARANTINED._value.get()
    good = make_envelope("dev-e", kind="event", body=event_body(type="warning"))
    bad = make_envelope("dev-e", kind="event", body=event_body(**changes), seq=1)
    result = _process(engine, good, bad)
    # The bad one is acknowledged too: resending cannot make it valid, and it is kept here.
    assert result.committed == {"dev-e": [good.id, bad.id]}
    assert (result.stored, result.quarantined) == (1, 1)
    (row,) = _quarantine(engine)
    assert reason in row.reason
    assert (row.device_id, row.payload) == ("dev-e", bad.to_bytes())
    assert metrics.INGEST_QUARANTINED._value.get() == before + 1
    with Session(engine) as session:
        (stored,) = session.exec(select(SafetyEventRow)).all()
    assert (stored.message_id, stored.event_type) == (good.id, "warning")


def test_invalid_body_from_an_unregistered_device_is_not_acknowledged(
    engine: Engine, make_envelope: MakeEnvelope
) -> None:
    bad = make_envelope("dev-nobody", kind="event", body={"type": "fault"})
    result = _process(engine, bad)
    assert result.committed == {}
    (row,) = _quarantine(engine)
    assert row.reason == "device 'dev-nobody' is not registered"


def test_a_safety_event_as_the_device_writes_it_is_stored(
    engine: Engine, make_envelope: MakeEnvelope, registered: Callable[..., str]
) -> None:
    registered("dev-e")
    record = SafetyEventRecord(
        event_id=new_id(),
        at=T0,
        type="transition",
        cause="amplifier hot",
        code=3,
        readings=HardwareReadings(
            amp_temp_c=71.5,
            supply_current_a=0.4,
            output_vrms=0.2,
            dc_offset_mv=1.0,
            ear_spl_db=0.0,
            clip=False,
            headphones=True,
            muted=True,
            armed=False,
            fault_code=3,
        ),
        limits=HardwareLimits(
            max_output_vrms=1.0,
            max_amp_temp_c=70.0,
            max_supply_current_a=1.0,
            max_dc_offset_mv=50.0,
            max_ear_spl_db=85.0,
        ),
        attenuation_db=-6.0,
        simulation=False,
        from_state="playing",
        to_state="fault",
    )
    # What the device's outbox queues (``device.store``): the record as JSON types.
    envelope = make_envelope("dev-e", kind="event", body=record.model_dump(mode="json"))
    result = _process(engine, envelope)
    assert (result.stored, result.quarantined) == (1, 0)
    with Session(engine) as session:
        (stored,) = session.exec(select(SafetyEventRow)).all()
    assert stored.event_type == "transition"
    assert SafetyEventRecord.model_validate(stored.body) == record


def test_check_ins_are_stored_once_and_bad_ones_quarantined(
    engine: Engine, make_envelope: MakeEnvelope, registered: Callable[..., str]
) -> None:
    registered("dev-c")
    answer = {
        "id": new_id(),
        "session_id": new_id(),
        "device_id": "dev-c",
        "question_id": "relaxation",
        "phase": "after",
        "value": 7,
        "answered_at": NOW.isoformat(),
    }
    first = make_envelope("dev-c", kind="checkin", body=answer, seq=1)
    resent = first.model_copy()

    def skip(reason: str) -> dict[str, object]:
        return {**answer, "id": new_id(), "value": None, "skipped": True, "skip_reason": reason}

    skipped = make_envelope("dev-c", kind="checkin", body=skip("no answer in time"), seq=2)
    # a device from before skip_reason: its skips are still stored, without a reason
    legacy = make_envelope(
        "dev-c",
        kind="checkin",
        body={**answer, "id": new_id(), "value": None, "skipped": True, "question_id": "sleep"},
        seq=3,
    )
    impossible = make_envelope("dev-c", kind="checkin", body={**answer, "value": 11}, seq=4)
    reason_on_answer = make_envelope(
        "dev-c",
        kind="checkin",
        body={**answer, "id": new_id(), "skip_reason": "skipped by the person"},
        seq=5,
    )
    too_long = make_envelope("dev-c", kind="checkin", body=skip("x" * 201), seq=6)
    result = _process(engine, first, skipped, legacy, impossible, reason_on_answer, too_long)
    assert (result.stored, result.quarantined) == (3, 3)
    _process(engine, resent)
    with Session(engine) as session:
        rows = session.exec(select(CheckInRow)).all()
    assert {(r.question_id, r.value, r.skip_reason) for r in rows} == {
        ("relaxation", None, "no answer in time"),
        ("relaxation", 7, None),
        ("sleep", None, None),
    }
    assert len(rows) == 3
    reasons = sorted(row.reason for row in _quarantine(engine))
    assert [reason.startswith("invalid checkin body: ") for reason in reasons] == [True] * 3
    for expected in (
        "skip_reason is only allowed when skipped is true",
        "skip_reason: String should have at most 200 characters",
        "value: Input should be less than or equal to 10",
    ):
        assert any(expected in reason for reason in reasons), (expected, reasons)
