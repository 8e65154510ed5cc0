"""Truthful records on the server (issue 21): the routine hand-overs an agent from before issue 21
sent as safety events are kept but tagged ``routine:<counter>`` by the real ingest, and migration
0016 tags the ones already stored (SQLite and PostgreSQL); the safety-event list and the FHIR
export show only real safety events; adherence counts a 61 s session and not a 0.05 s one, while
every second played still counts toward the dose."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from dashboard.helpers import server_helpers
from factories import RECENT, event_body
from fastapi.testclient import TestClient
from fhir_checks import check_fhir
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from resonera.common import serial_link as sl
from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.server.crypto import FieldCipher
from resonera.server.db import alembic_config, migrate
from resonera.server.ingest import IngestProcessor, Received
from resonera.server.models import DeviceRow, DoseDailyRow, SafetyEventRow, table_of

API = "/api/v1"
T0 = RECENT
DEVICE_REQUEST = sl.FAULT_DEVICE_REQUEST

#: What an agent before issue 21 sent around two normal sessions with a prompt between them, and
#: the stored type each must read as after ingest or migration.
ROUTINE = [
    (event_body(type="link_up", cause="safety MCU b-1 firmware 0.1.0 protocol v1.2"), "link_up"),
    (event_body(type="transition", cause="play 'tone'", from_state="idle", to_state="arming"),
     "session_transitions"),
    (event_body(type="consent_granted", cause="the safety MCU reports armed and unmuted"),
     "consent_granted"),
    (event_body(type="transition", cause="safety MCU b-1 armed", from_state="arming",
                to_state="playing"), "session_transitions"),
    (event_body(type="transition", cause="program completed", from_state="playing",
                to_state="idle"), "session_transitions"),
    (event_body(type="consent_withdrawn", code=DEVICE_REQUEST,
                cause="muted on request: muted on the device's request"), "device_mutes"),
    (event_body(type="transition", from_state="idle", to_state="fault",
                cause="muted on request: muted on the device's request"), "device_mutes"),
    (event_body(type="link_down", code=sl.FAULT_LINK_GARBLED, cause="monitor stopped"),
     "link_closed"),
]  # fmt: skip
#: Real safety events of the same agent: they keep their types.
REAL = [
    event_body(type="fault", code=sl.FAULT_OVER_TEMPERATURE, cause="MCU fault: amp too hot"),
    event_body(type="consent_withdrawn", code=sl.FAULT_OVER_TEMPERATURE,
               cause="MCU fault: amp too hot"),
    event_body(type="transition", from_state="playing", to_state="fault",
               cause="MCU fault: amp too hot"),
    event_body(type="link_down", code=sl.FAULT_LINK_GARBLED,
               cause="no TELEMETRY from the safety MCU for over 100 ms"),
    event_body(type="transition", from_state="playing", to_state="idle",
               cause="stopped by the person"),
]  # fmt: skip


def _ingest(engine: Engine, kind: topics.UpKind, bodies: list[dict[str, Any]]) -> None:
    envelopes = [
        Envelope.create(device="dev-a", seq=i, kind=kind, body=body, time=T0 + timedelta(minutes=i))
        for i, body in enumerate(bodies)
    ]
    result = IngestProcessor(engine).process(
        [Received(topics.up("dev-a", kind), e.to_bytes()) for e in envelopes]
    )
    assert (result.stored, result.quarantined) == (len(bodies), 0)


def _stored_types(engine: Engine) -> dict[str, str]:
    with Session(engine) as session:
        rows = session.exec(select(SafetyEventRow)).all()
    return {row.message_id: row.event_type for row in rows}


def test_routine_events_of_an_older_agent_are_kept_but_are_no_safety_events(
    client: TestClient, world: Any, engine: Engine
) -> None:
    _ingest(engine, "event", [body for body, _ in ROUTINE] + REAL)

    with Session(engine) as session:
        rows = session.exec(select(SafetyEventRow).order_by(col(SafetyEventRow.seq))).all()
    assert [row.event_type for row in rows] == [f"routine:{c}" for _, c in ROUTINE] + [
        body["type"] for body in REAL
    ]
    assert [row.body for row in rows[: len(ROUTINE)]] == [body for body, _ in ROUTINE]  # kept

    listed = client.get(
        f"{API}/patients/{world.patient}/safety-events", headers=world.clinician.headers
    )
    assert listed.status_code == 200, listed.text
    assert sorted(e["body"]["cause"] for e in listed.json()) == sorted(b["cause"] for b in REAL)

    response = client.get(
        f"{API}/patients/{world.patient}/export/fhir", headers=world.clinician.headers
    )
    assert response.status_code == 200, response.text
    bundle = response.json()
    check_fhir(bundle)
    adverse = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "AdverseEvent"
    ]
    assert sorted(a["event"]["text"] for a in adverse) == sorted(
        f"{body['type']}: {body['cause']}" for body in REAL
    )


def test_adherence_counts_a_61_s_session_not_an_accidental_start_and_every_second_is_dosed(
    client: TestClient, world: Any, engine: Engine, make_body: Callable[..., dict[str, Any]]
) -> None:
    _ingest(
        engine,
        "session",
        [
            make_body(start=T0, minutes=10, played_s=0.05, outcome="stopped", dose_fraction=1e-5),
            make_body(start=T0 + timedelta(hours=1), minutes=10, played_s=61.0, outcome="stopped",
                      dose_fraction=0.01),
            make_body(start=T0 + timedelta(hours=2), minutes=0.5, dose_fraction=0.002),  # whole
        ],
    )  # fmt: skip
    response = client.get(
        f"{API}/patients/{world.patient}/adherence?weeks=4", headers=world.clinician.headers
    )
    assert response.status_code == 200, response.text
    assert sum(week["done"] for week in response.json()["weeks"]) == 2
    with Session(engine) as session:
        (day,) = session.exec(select(DoseDailyRow)).all()
    assert day.sessions == 2
    assert day.played_s == pytest.approx(0.05 + 61.0 + 30.0)  # every second played counts
    assert day.dose_fraction == pytest.approx(1e-5 + 0.01 + 0.002)


def test_migration_0016_reclassifies_the_stored_routine_events(empty_engine: Engine) -> None:
    # seeded by today's code at the head, then taken back to 0015 (today's models name columns
    # that later revisions added)
    migrate(empty_engine)
    with Session(empty_engine) as session:
        session.add(DeviceRow(id="dev-a", created_at=datetime.now(UTC)))
        session.commit()
    _ingest(empty_engine, "event", [body for body, _ in ROUTINE] + REAL)
    # this ingest already tags them: put back the types a server before 0016 stored
    with Session(empty_engine) as session:
        for row in session.exec(select(SafetyEventRow)).all():
            row.event_type = row.body["type"]
            session.add(row)
        session.commit()
    _downgrade(empty_engine, "0015")
    before = _stored_types(empty_engine)
    assert not any(t.startswith("routine:") for t in before.values())

    migrate(empty_engine)
    after = _stored_types(empty_engine)
    assert Counter(after.values()) == Counter(
        [f"routine:{c}" for _, c in ROUTINE] + [body["type"] for body in REAL]
    )

    _downgrade(empty_engine, "0015")  # the types as they were
    assert _stored_types(empty_engine) == before


def _downgrade(engine: Engine, revision: str) -> None:
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def test_migration_0016_counts_again_the_sessions_adherence_reads(
    empty_engine: Engine, cipher: FieldCipher, make_body: Callable[..., dict[str, Any]]
) -> None:
    # seeded by today's code at the head, then taken back to 0015 (today's models name columns
    # that later revisions added)
    migrate(empty_engine)
    helpers = server_helpers()
    patient = helpers.add_patient(empty_engine, cipher, None)
    helpers.add_device(empty_engine, "dev-a", patient_id=patient)
    _ingest(
        empty_engine,
        "session",
        [
            make_body(start=T0, minutes=10, played_s=0.05, outcome="stopped"),
            make_body(start=T0 + timedelta(hours=1), minutes=10, played_s=61.0, outcome="stopped"),
        ],
    )
    _downgrade(empty_engine, "0015")
    with empty_engine.begin() as conn:  # as a server before issue 21 counted them: both
        conn.execute(sa.update(table_of(DoseDailyRow)).values(sessions=2))

    def sessions() -> list[int]:
        with Session(empty_engine) as session:
            return [row.sessions for row in session.exec(select(DoseDailyRow)).all()]

    migrate(empty_engine)
    assert sessions() == [1]  # the accidental start is no session
    _downgrade(empty_engine, "0015")
    assert sessions() == [2]
