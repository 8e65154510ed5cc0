"""Sessions name the library program and version they played (issue 20): ingest keeps both, and the
session API, the CSV and FHIR exports and the outcomes per program (patient and cohort) tell two
versions of one program apart, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from factories import OUTCOME_QUESTIONS, checkin
from fastapi.testclient import TestClient
from fhir_checks import check_fhir
from sqlalchemy.engine import Engine

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.server.ingest import IngestProcessor, Received
from resonera.server.outcomes import store_checkins

API = "/api/v1"
LIBRARY_ID = "0190a000-0000-7000-8000-0000000000aa"


@pytest.fixture
def two_versions(
    engine: Engine, world: Any, client: TestClient, make_body: Callable[..., dict[str, Any]]
) -> None:
    """Four sessions of "Alpha drift" in the last days, two of version 1 (relaxation +1 each)
    and two of version 2 (+3 each), and one built-in session of the same name."""
    set_profile = client.put(
        f"{API}/patients/{world.patient}/desired",
        json={"profile": {"checkins": OUTCOME_QUESTIONS}},
        headers={**world.clinician.headers, "If-Match": '"0"'},
    )
    assert set_profile.status_code == 200, set_profile.text
    today = datetime.now(UTC).date()
    bodies, records = [], []
    for day, version, gain in ((6, 1, 1), (5, 1, 1), (4, 2, 3), (3, 2, 3), (2, None, 0)):
        start = datetime.combine(today - timedelta(days=day), time(9), UTC)
        prescribed = (
            {"program_library_id": LIBRARY_ID, "program_version": version} if version else {}
        )
        body = make_body(start=start, minutes=10, program_name="Alpha drift", **prescribed)
        bodies.append(body)
        sid = body["session_id"]
        records += [
            checkin("dev-a", sid, "relax", "before", 3, start - timedelta(minutes=1)),
            checkin("dev-a", sid, "relax", "after", 3 + gain, start + timedelta(minutes=11)),
        ]
    envelopes = [
        Envelope.create(device="dev-a", seq=i, kind="session", body=b) for i, b in enumerate(bodies)
    ]
    result = IngestProcessor(engine).process(
        [Received(topics.up("dev-a", "session"), e.to_bytes()) for e in envelopes]
    )
    assert result.stored == len(bodies)
    with engine.begin() as conn:
        store_checkins(conn, "dev-a", world.patient, records, now=datetime.now(UTC))


def _versions(rows: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    return [(r["program_library_id"], r["program_version"]) for r in rows]


@pytest.mark.usefixtures("two_versions")
def test_sessions_and_outcomes_tell_versions_apart(client: TestClient, world: Any) -> None:
    sessions = client.get(
        f"{API}/patients/{world.patient}/sessions", headers=world.clinician.headers
    ).json()
    assert _versions(sessions) == [
        (None, None),
        (LIBRARY_ID, 2),
        (LIBRARY_ID, 2),
        (LIBRARY_ID, 1),
        (LIBRARY_ID, 1),
    ]

    report = client.get(
        f"{API}/patients/{world.patient}/outcomes",
        params={"days": 14},
        headers=world.clinician.headers,
    ).json()
    relax = [p for p in report["programs"] if p["question_id"] == "relax"]
    assert [(*_versions([p])[0], p["n"], p["mean"]) for p in relax] == [
        (None, None, 1, 0.0),
        (LIBRARY_ID, 1, 2, 1.0),
        (LIBRARY_ID, 2, 2, 3.0),
    ]

    cohort = client.get(
        f"{API}/cohort/outcomes", params={"days": 14}, headers=world.clinician.headers
    ).json()
    rows = [
        (*_versions([p])[0], p["sessions"], p["improvement"]["mean"]) for p in cohort["programs"]
    ]
    assert rows == [(LIBRARY_ID, 1, 2, 1.0), (LIBRARY_ID, 2, 2, 3.0), (None, None, 1, 0.0)]


@pytest.mark.usefixtures("two_versions")
def test_exports_name_each_version(client: TestClient, world: Any) -> None:
    exported = client.get(
        f"{API}/patients/{world.patient}/export/sessions.csv", headers=world.clinician.headers
    )
    assert exported.status_code == 200, exported.text
    table = list(csv.DictReader(io.StringIO(exported.text)))
    assert [(r["program_library_id"], r["program_version"]) for r in table] == [
        (LIBRARY_ID, "1"),
        (LIBRARY_ID, "1"),
        (LIBRARY_ID, "2"),
        (LIBRARY_ID, "2"),
        ("", ""),
    ]

    bundle = client.get(
        f"{API}/patients/{world.patient}/export/fhir", headers=world.clinician.headers
    ).json()
    check_fhir(bundle)
    procedures = [
        e["resource"]["code"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Procedure"
    ]
    programs = sorted(
        coding["code"]
        for code in procedures
        for coding in code["coding"]
        if coding["system"] == "urn:resonera:program"
    )
    assert programs == [f"{LIBRARY_ID}/v1"] * 2 + [f"{LIBRARY_ID}/v2"] * 2
    assert sorted(code["text"] for code in procedures) == [
        "Sound session: Alpha drift",
        *["Sound session: Alpha drift v1"] * 2,
        *["Sound session: Alpha drift v2"] * 2,
    ]
