"""A clinician's dose-ledger reset through the API (SQLite and PostgreSQL): who may ask, what a bad
request gets, the signed document that carries it to the device, the audit, and the request turning
``applied`` when the device's safety event arrives. And sessions show their underruns."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.common.ids import new_id
from resonera.common.records import DoseLedgerReset, SafetyEventRecord
from resonera.server.desired import MemoryPublisher
from resonera.server.ingest import IngestProcessor, Received
from resonera.server.models import AuditRow

API = "/api/v1"
REASON = "ledger damaged by a power cut; reviewed the device log"


def _reset_url(patient: str) -> str:
    return f"{API}/patients/{patient}/dose-ledger/reset"


def _document(publisher: MemoryPublisher, device: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(publisher.documents[device])
    return document


def _device_answers(engine: Engine, device: str, reset_id: str, *, applied: bool) -> None:
    """The device's ``dose_ledger_reset`` event, ingested as it arrives over MQTT."""
    record = SafetyEventRecord(
        event_id=new_id(),
        at=datetime.now(UTC),
        type="dose_ledger_reset",
        cause="dose ledger reset by the clinician",
        simulation=True,
        dose_reset=DoseLedgerReset(
            reset_id=reset_id,
            applied=applied,
            reason=REASON,
            removed_rows=2 if applied else 0,
            corrupted_before=applied,
            week_pa2s_before=576.0,
            week_fraction_before=1.0 if applied else 0.1,
            week_fraction_after=0.1,
        ),
    )
    envelope = Envelope.create(
        device=device, seq=1, kind="event", body=record.model_dump(mode="json")
    )
    result = IngestProcessor(engine).process(
        [Received(topics.up(device, "event"), envelope.to_bytes())]
    )
    assert result.stored == 1


def test_a_reset_travels_signed_to_the_device_and_shows_applied_when_it_answers(
    client: TestClient, engine: Engine, world: Any, publisher: MemoryPublisher
) -> None:
    response = client.post(
        _reset_url(world.patient), json={"reason": REASON}, headers=world.clinician.headers
    )
    assert response.status_code == 202, response.text
    [reset] = response.json()
    assert reset["status"] == "pending"
    assert (reset["device_id"], reset["reason"]) == (world.device, REASON)
    assert reset["requested_by_email"] == world.clinician.email

    document = _document(publisher, world.device)
    assert "sig" in document  # signed like every desired state
    assert document["dose_ledger_reset"] == [
        {"id": reset["id"], "reason": REASON, "requested_by": world.clinician.email}
    ]
    with Session(engine) as session:
        audited = session.exec(select(AuditRow).where(col(AuditRow.action) == "reset")).one()
    assert audited.patient_id == world.patient
    assert audited.actor_id == world.clinician.id
    assert audited.resource_id == f"{world.device}:{reset['id']}"

    listed = client.get(_reset_url(world.patient), headers=world.clinician.headers).json()
    assert [r["status"] for r in listed] == ["pending"]

    _device_answers(engine, world.device, reset["id"], applied=True)
    [done] = client.get(_reset_url(world.patient), headers=world.clinician.headers).json()
    assert done["status"] == "applied"
    assert done["removed_rows"] == 2
    assert (done["week_fraction_before"], done["week_fraction_after"]) == (1.0, 0.1)
    assert done["done_at"] is not None

    # answered: the next document of the device no longer carries it
    changed = client.put(
        f"{API}/patients/{world.patient}/desired",
        json={"profile": {}, "limits": {}, "programs": []},
        headers={**world.clinician.headers, "If-Match": '"0"'},
    )
    assert changed.status_code == 200, changed.text
    assert "dose_ledger_reset" not in _document(publisher, world.device)


def test_a_refusal_by_the_device_shows_refused_and_later_requests_stay_pending(
    client: TestClient, engine: Engine, world: Any, publisher: MemoryPublisher
) -> None:
    first = client.post(
        _reset_url(world.patient), json={"reason": REASON}, headers=world.admin.headers
    ).json()[0]
    second = client.post(
        _reset_url(world.patient),
        json={"reason": "again", "device_id": world.device},
        headers=world.clinician.headers,
    ).json()[0]
    # both unanswered requests ride in the newest document; the device acts on each once
    carried = [r["id"] for r in _document(publisher, world.device)["dose_ledger_reset"]]
    assert carried == [first["id"], second["id"]]
    _device_answers(engine, world.device, first["id"], applied=False)
    listed = client.get(_reset_url(world.patient), headers=world.admin.headers).json()
    assert [(r["id"], r["status"]) for r in listed] == [
        (second["id"], "pending"),
        (first["id"], "refused"),
    ]


@pytest.mark.parametrize(
    ("who", "status"),
    [("anonymous", 401), ("auditor", 403), ("other_clinician", 404)],
)
def test_only_the_patients_clinician_or_an_admin_may_reset(
    client: TestClient, world: Any, publisher: MemoryPublisher, who: str, status: int
) -> None:
    actor = world.by_name(who)
    headers = actor.headers if actor is not None else {}
    post = client.post(_reset_url(world.patient), json={"reason": REASON}, headers=headers)
    assert post.status_code == status, post.text
    assert client.get(_reset_url(world.patient), headers=headers).status_code == status
    assert world.device not in publisher.documents


@pytest.mark.parametrize(
    "body",
    [{}, {"reason": ""}, {"reason": "   "}, {"reason": "x" * 501}, {"reason": "ok", "extra": 1}],
)
def test_a_reset_needs_a_reason(client: TestClient, world: Any, body: dict[str, Any]) -> None:
    response = client.post(_reset_url(world.patient), json=body, headers=world.clinician.headers)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"


def test_unknown_patients_other_devices_and_no_device_are_clear_errors(
    client: TestClient, world: Any, make_patient: Callable[..., str]
) -> None:
    unknown = client.post(
        _reset_url(new_id()), json={"reason": REASON}, headers=world.admin.headers
    )
    assert unknown.status_code == 404
    other_device = client.post(
        _reset_url(world.patient),
        json={"reason": REASON, "device_id": world.other_device},
        headers=world.clinician.headers,
    )
    assert other_device.status_code == 404
    assert f"device {world.other_device} is not in use" in other_device.json()["error"]["message"]
    lonely = make_patient(world.clinician.id, "No Device")
    none = client.post(_reset_url(lonely), json={"reason": REASON}, headers=world.clinician.headers)
    assert none.status_code == 409
    assert "uses no device now" in none.json()["error"]["message"]


def test_a_patient_with_two_devices_gets_a_request_per_device(
    client: TestClient,
    engine: Engine,
    world: Any,
    publisher: MemoryPublisher,
    registered: Callable[..., str],
) -> None:
    registered("dev-a2", patient_id=world.patient)
    made = client.post(
        _reset_url(world.patient), json={"reason": REASON}, headers=world.clinician.headers
    ).json()
    assert sorted(r["device_id"] for r in made) == [world.device, "dev-a2"]
    for reset in made:
        carried = _document(publisher, reset["device_id"])["dose_ledger_reset"]
        assert [r["id"] for r in carried] == [reset["id"]]
    # a device answers only for its own ledger
    [of_a] = [r for r in made if r["device_id"] == world.device]
    _device_answers(engine, "dev-a2", of_a["id"], applied=True)
    listed = client.get(_reset_url(world.patient), headers=world.clinician.headers).json()
    assert {r["device_id"]: r["status"] for r in listed}[world.device] == "pending"


def test_sessions_show_their_underruns(
    client: TestClient, engine: Engine, world: Any, make_body: Any
) -> None:
    envelope = Envelope.create(
        device=world.device, seq=0, kind="session", body=make_body(underruns=3)
    )
    IngestProcessor(engine).process(
        [Received(topics.up(world.device, "session"), envelope.to_bytes())]
    )
    [session] = client.get(
        f"{API}/patients/{world.patient}/sessions", headers=world.clinician.headers
    ).json()
    assert session["underruns"] == 3
