"""Archiving a patient (issue 23, part 4) through the API, on SQLite and PostgreSQL: refused while a
device is assigned, then left out of the clinicians' lists but every record kept and exported,
audited, restored as they were; migration 0017 up and down with a patient stored before it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from alembic import command
from factories import RECENT
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.common.ids import new_id
from resonera.server.db import alembic_config, migrate
from resonera.server.models import AssignmentRow, AuditRow, PatientRow

API = "/api/v1"


def _listed(client: TestClient, headers: dict[str, str], query: str = "") -> set[str]:
    response = client.get(f"{API}/patients{query}", headers=headers)
    assert response.status_code == 200, response.text
    return {p["id"] for p in response.json()}


def test_archive_waits_for_the_device_then_hides_the_patient_and_keeps_the_record(
    client: TestClient, world: Any, engine: Engine
) -> None:
    admin, clinician = world.admin.headers, world.clinician.headers
    patient = world.patient
    refused = client.post(f"{API}/patients/{patient}/archive", headers=admin)
    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    assert (
        "still has device dev-a assigned after today: end the assignment first"
        in refused.json()["detail"]
    )
    assert client.post(f"{API}/patients/{patient}/archive", headers=clinician).status_code == 403

    with Session(engine) as db:
        held = db.exec(select(AssignmentRow).where(AssignmentRow.patient_id == patient)).one()
    ended = client.patch(
        f"{API}/assignments/{held.id}",
        headers=admin,
        json={"valid_to": (datetime.now(UTC) - timedelta(minutes=1)).isoformat()},
    )
    assert ended.status_code == 200, ended.text
    done = client.post(f"{API}/patients/{patient}/archive", headers=admin)
    assert done.status_code == 200, done.text
    assert done.json()["patient_id"] == patient and done.json()["archived_at"] is not None
    again = client.post(f"{API}/patients/{patient}/archive", headers=admin)
    assert again.status_code == 409 and "archived already" in again.json()["detail"]

    assert patient not in _listed(client, clinician)
    assert patient in _listed(client, clinician, "?archived=true")
    assert patient not in _listed(client, admin)
    assert patient in _listed(client, admin, "?archived=true")
    # The record stays the clinician's: their page (which says since when), their export.
    record = client.get(f"{API}/patients/{patient}", headers=clinician)
    assert record.status_code == 200
    assert record.json()["archived_at"] == done.json()["archived_at"]
    listed = client.get(f"{API}/patients?archived=true", headers=admin).json()
    assert {p["id"]: p["archived_at"] for p in listed}[patient] == done.json()["archived_at"]
    export = client.get(f"{API}/patients/{patient}/export/sessions.csv", headers=clinician)
    assert export.status_code == 200

    restored = client.post(f"{API}/patients/{patient}/restore", headers=admin)
    assert restored.status_code == 200 and restored.json()["archived_at"] is None
    assert patient in _listed(client, clinician)
    assert client.get(f"{API}/patients/{patient}", headers=clinician).json()["archived_at"] is None
    not_archived = client.post(f"{API}/patients/{patient}/restore", headers=admin)
    assert not_archived.status_code == 409 and "is not archived" in not_archived.json()["detail"]
    with Session(engine) as db:
        actions = [
            r.action
            for r in db.exec(
                select(AuditRow)
                .where(AuditRow.patient_id == patient, AuditRow.resource == "patient")
                .order_by(AuditRow.id)  # type: ignore[arg-type]
            )
            if r.action in ("archive", "restore")
        ]
    assert actions == ["archive", "restore"]  # refusals wrote nothing


def test_the_archive_endpoints_are_in_the_api_docs(client: TestClient, world: Any) -> None:
    paths = client.get("/openapi.json", headers=world.admin.headers).json()["paths"]
    assert "post" in paths[f"{API}/patients/{{patient_id}}/archive"]
    assert "post" in paths[f"{API}/patients/{{patient_id}}/restore"]
    listed = paths[f"{API}/patients"]["get"]["parameters"]
    assert "archived" in {p["name"] for p in listed}


def test_migration_0017_adds_archived_at_to_patients_stored_before(empty_engine: Engine) -> None:
    migrate(empty_engine, "0016")
    patient_id = new_id()
    with empty_engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO patient (id, name_enc, birth_date_enc, notes_enc, created_at, "
                "updated_at) VALUES (:id, 'n', 'b', 'x', :at, :at)"
            ),
            {"id": patient_id, "at": RECENT},
        )
    migrate(empty_engine)
    with Session(empty_engine) as db:
        row = db.get(PatientRow, patient_id)
        assert row is not None and row.archived_at is None  # stored before: in care
        row.archived_at = RECENT + timedelta(days=1)
        db.add(row)
        db.commit()
    with Session(empty_engine) as db:
        row = db.get(PatientRow, patient_id)
        assert row is not None and row.archived_at == RECENT + timedelta(days=1)

    config = alembic_config()
    with empty_engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0016")
    columns = {c["name"] for c in sa.inspect(empty_engine).get_columns("patient")}
    assert "archived_at" not in columns
    with empty_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT id FROM patient")).scalars().all() == [patient_id]


def test_a_device_not_yet_begun_is_cancelled_and_an_archived_patient_gets_none(
    client: TestClient, world: Any, engine: Engine, registered: Callable[..., str]
) -> None:
    admin = world.admin.headers
    patient = world.patient
    with Session(engine) as db:
        held = db.exec(select(AssignmentRow).where(AssignmentRow.patient_id == patient)).one()
    # A period that has begun cannot be emptied: only ended after its start.
    begun = client.patch(
        f"{API}/assignments/{held.id}",
        headers=admin,
        json={"valid_to": held.valid_from.isoformat()},
    )
    assert begun.status_code == 422 and "has not started yet" in begun.json()["detail"]
    now = datetime.now(UTC)
    ended = client.patch(
        f"{API}/assignments/{held.id}",
        headers=admin,
        json={"valid_to": (now - timedelta(minutes=1)).isoformat()},
    )
    assert ended.status_code == 200, ended.text
    registered("dev-next")
    next_month = (now + timedelta(days=30)).date().isoformat()
    planned = client.post(
        f"{API}/assignments",
        headers=admin,
        json={"device_id": "dev-next", "patient_id": patient, "valid_from": next_month},
    )
    assert planned.status_code == 201, planned.text
    waiting = client.post(f"{API}/patients/{patient}/archive", headers=admin)
    assert waiting.status_code == 409 and "dev-next" in waiting.json()["detail"]

    planned_id = planned.json()["id"]
    cancelled = client.patch(
        f"{API}/assignments/{planned_id}", headers=admin, json={"valid_to": next_month}
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["valid_to"] == cancelled.json()["valid_from"]
    left = client.get(f"{API}/assignments?patient_id={patient}", headers=admin).json()
    assert [a["id"] for a in left] == [held.id]
    assert client.post(f"{API}/patients/{patient}/archive", headers=admin).status_code == 200

    refused = client.post(
        f"{API}/assignments",
        headers=admin,
        json={"device_id": "dev-next", "patient_id": patient, "valid_from": next_month},
    )
    assert refused.status_code == 409
    assert "restore them before assigning a device" in refused.json()["detail"]
    with Session(engine) as db:
        assert db.exec(select(AssignmentRow).where(AssignmentRow.patient_id == patient)).all() == [
            db.get(AssignmentRow, held.id)
        ]
        cancel_rows = db.exec(
            select(AuditRow).where(AuditRow.action == "cancel", AuditRow.resource == "assignment")
        ).all()
    assert [(r.resource_id, r.patient_id) for r in cancel_rows] == [(str(planned_id), patient)]
