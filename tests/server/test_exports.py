"""Patient exports: the FHIR R4 Bundle (validated against HL7's R4 JSON schema) and the sessions
CSV (the session API's columns, spreadsheet-safe), for a period, for the right people, audited."""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from factories import RECENT, event_body
from fastapi.testclient import TestClient
from fhir_checks import check_fhir
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.server.crud import dose_fraction_per_second
from resonera.server.ingest import IngestProcessor, Received
from resonera.server.models import AuditRow
from resonera.server.schemas import SessionPublic

API = "/api/v1"
T0 = RECENT


def _ingest(engine: Engine, kind: topics.UpKind, bodies: list[dict[str, Any]]) -> None:
    envelopes = [
        Envelope.create(device="dev-a", seq=i, kind=kind, body=body, time=T0 + timedelta(days=i))
        for i, body in enumerate(bodies)
    ]
    result = IngestProcessor(engine).process(
        [Received(topics.up("dev-a", kind), e.to_bytes()) for e in envelopes]
    )
    assert result.stored == len(bodies)


def _dose_at(dba: float, seconds: float) -> float:
    return dose_fraction_per_second(dba) * seconds


@pytest.fixture
def history(engine: Engine, world: Any, make_body: Callable[..., dict[str, Any]]) -> None:
    """Three sessions of patient A a day apart (70 dB(A); one stopped; one silent), two safety
    events, and one session of the other patient."""
    _ingest(
        engine,
        "session",
        [
            make_body(start=T0, minutes=10, dose_fraction=_dose_at(70.0, 600)),
            make_body(
                start=T0 + timedelta(days=1),
                minutes=10,
                played_s=300,
                outcome="stopped",
                reason="stopped by the person",
                program_name='=HYPERLINK("http://x")',
                dose_fraction=_dose_at(75.0, 300),
            ),
            make_body(start=T0 + timedelta(days=2), minutes=5),
        ],
    )
    _ingest(
        engine,
        "event",
        [event_body(type="fault", cause="amp too hot"), event_body(type="warning", cause="hot")],
    )


def test_fhir_bundle_is_valid_r4_with_every_kind(
    client: TestClient, world: Any, engine: Engine, history: None
) -> None:
    # A read first, so the trail has something besides the export itself.
    assert client.get(f"{API}/patients/{world.patient}", headers=world.clinician.headers).is_success
    response = client.get(
        f"{API}/patients/{world.patient}/export/fhir", headers=world.clinician.headers
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    bundle = response.json()
    check_fhir(bundle)
    assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "collection")
    resources = [e["resource"] for e in bundle["entry"]]
    kinds = Counter(r["resourceType"] for r in resources)
    assert kinds["Patient"] == 1 and kinds["Device"] == 1
    assert kinds["Procedure"] == 3
    assert kinds["Observation"] == 5  # level and dose each, but no level for the silent session
    assert kinds["AdverseEvent"] == 2
    assert kinds["AuditEvent"] >= 1

    patient = resources[0]
    assert patient["name"] == [{"text": "Ada Lovelace"}]
    assert patient["birthDate"] == "1970-01-02"
    urls = {e["fullUrl"] for e in bundle["entry"]}
    references = [r["subject"]["reference"] for r in resources if "subject" in r] + [
        r["partOf"][0]["reference"] for r in resources if r["resourceType"] == "Observation"
    ]
    assert set(references) <= urls  # every reference resolves inside the bundle

    procedures = [r for r in resources if r["resourceType"] == "Procedure"]
    assert [p["status"] for p in procedures] == ["completed", "stopped", "completed"]
    assert procedures[1]["statusReason"]["text"] == "stopped: stopped by the person"
    levels = {
        o["partOf"][0]["reference"]: o["valueQuantity"]
        for o in resources
        if o["resourceType"] == "Observation" and o["code"]["coding"][0]["code"] == "laeq"
    }
    doses = [
        o["valueQuantity"]["value"]
        for o in resources
        if o["resourceType"] == "Observation" and o["code"]["coding"][0]["code"] == "dose"
    ]
    assert sorted(v["value"] for v in levels.values()) == pytest.approx([70.0, 75.0], abs=0.01)
    assert next(iter(levels.values()))["unit"] == "dB(A)"
    assert doses[0] == pytest.approx(100 * _dose_at(70.0, 600), abs=0.001)
    assert doses[2] == 0
    events = [r for r in resources if r["resourceType"] == "AdverseEvent"]
    assert events[0]["event"]["text"] == "fault: amp too hot"
    trail = [r for r in resources if r["resourceType"] == "AuditEvent"]
    assert any(
        t["action"] == "R" and t["agent"][0]["who"]["display"] == world.clinician.email
        for t in trail
    )

    with Session(engine) as session:
        exports = session.exec(
            select(AuditRow).where(AuditRow.action == "export", AuditRow.resource == "fhir")
        ).all()
    assert [(a.patient_id, a.actor_id) for a in exports] == [(world.patient, world.clinician.id)]

    again = client.get(
        f"{API}/patients/{world.patient}/export/fhir", headers=world.admin.headers
    ).json()
    same_ids = {
        e["fullUrl"] for e in again["entry"] if e["resource"]["resourceType"] != "AuditEvent"
    }
    assert same_ids <= urls | {e["fullUrl"] for e in again["entry"]}
    assert [e["fullUrl"] for e in again["entry"][:4]] == [e["fullUrl"] for e in bundle["entry"][:4]]


def test_the_schema_check_catches_a_broken_bundle(
    client: TestClient, world: Any, history: None
) -> None:
    bundle = client.get(
        f"{API}/patients/{world.patient}/export/fhir", headers=world.clinician.headers
    ).json()
    procedure = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Procedure")
    procedure["resource"]["performedAt"] = "yesterday"
    with pytest.raises(AssertionError, match="performedAt"):
        check_fhir(bundle)
    del procedure["resource"]["performedAt"], procedure["resource"]["subject"]
    with pytest.raises(AssertionError, match="subject"):
        check_fhir(bundle)


def test_fhir_period_and_access(client: TestClient, world: Any, history: None) -> None:
    url = f"{API}/patients/{world.patient}/export/fhir"
    window = {
        "from": (T0 + timedelta(hours=12)).isoformat(),
        "to": (T0 + timedelta(days=1, hours=12)).isoformat(),
    }
    bundle = client.get(url, params=window, headers=world.clinician.headers).json()
    check_fhir(bundle)
    kinds = Counter(e["resource"]["resourceType"] for e in bundle["entry"])
    assert kinds["Procedure"] == 1
    assert kinds["AdverseEvent"] == 1  # the second event, a day after the first
    empty = {"from": window["to"], "to": window["from"]}
    assert client.get(url, params=empty, headers=world.clinician.headers).status_code == 422
    assert client.get(url, headers=world.other_clinician.headers).status_code == 404
    assert client.get(url, headers=world.auditor.headers).status_code == 403
    assert client.get(url).status_code == 401


def test_sessions_csv_has_the_api_columns_and_safe_cells(
    client: TestClient, world: Any, engine: Engine, history: None
) -> None:
    url = f"{API}/patients/{world.patient}/export/sessions.csv"
    response = client.get(url, headers=world.clinician.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    assert tuple(rows[0]) == tuple(SessionPublic.model_fields)
    records = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    api = client.get(
        f"{API}/patients/{world.patient}/sessions", headers=world.clinician.headers
    ).json()[::-1]
    assert [r["message_id"] for r in records] == [a["message_id"] for a in api]
    stopped = records[1]
    assert stopped["program_name"] == '\'=HYPERLINK("http://x")'  # shown as text, never run
    assert stopped["outcome"] == "stopped"
    assert float(stopped["peak_dbfs"]) == -6.0  # numbers stay numbers, minus sign and all
    assert float(stopped["dose_fraction"]) == pytest.approx(api[1]["dose_fraction"])
    assert stopped["simulation"] == "true"
    assert not math.isnan(float(records[0]["played_s"]))

    window = {"from": (T0 + timedelta(hours=12)).isoformat()}
    later = list(
        csv.reader(io.StringIO(client.get(url, params=window, headers=world.admin.headers).text))
    )
    assert len(later) == 3
    assert client.get(url, headers=world.other_clinician.headers).status_code == 404
    with Session(engine) as session:
        exports = session.exec(select(AuditRow).where(AuditRow.resource == "sessions_csv")).all()
    assert len(exports) == 2


def test_csv_cells() -> None:
    from resonera.server.export.sessions_csv import csv_cell

    assert [csv_cell(v) for v in ("=1+1", "+x", "-x", "@x", "\tx", "ok", -3.5, True, None)] == [
        "'=1+1",
        "'+x",
        "'-x",
        "'@x",
        "'\tx",
        "ok",
        -3.5,
        "true",
        "",
    ]


def test_a_patient_without_sessions_exports_a_valid_bundle(client: TestClient, world: Any) -> None:
    bundle = client.get(
        f"{API}/patients/{world.other_patient}/export/fhir", headers=world.admin.headers
    ).json()
    check_fhir(bundle)
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds == ["Patient", "Device"]
    csv_text = client.get(
        f"{API}/patients/{world.other_patient}/export/sessions.csv", headers=world.admin.headers
    ).text
    assert csv_text.splitlines() == [",".join(SessionPublic.model_fields)]
