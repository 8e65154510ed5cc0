"""Prescribing library programs (issue 20, the server's half): ``PUT /patients/{id}/desired`` takes
library ids and versions, refuses with a 422 naming the program and why, signs the full entries
(each passes the device's own ``check_prescribed``), keeps a patient on the version prescribed while
the library moves on, and shows each program's state from the devices' reports."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from factories import ALPHA_TOML
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.common.prescription import (
    PrescribedProgram,
    check_prescribed,
    definition_sha256,
)
from resonera.engine.capabilities import engine_capabilities
from resonera.server.desired import MemoryPublisher, enforced_profile
from resonera.server.ingest import IngestProcessor, Received

API = "/api/v1"

PINK_TOML = """\
name = "Pink rest"

[[steps]]
duration_s = 120
[[steps.layers]]
type = "noise"
colour = "pink"
gain = 0.1
"""


def _program(client: TestClient, world: Any, document: str) -> dict[str, Any]:
    created = client.post(
        f"{API}/programs", json={"document": document}, headers=world.clinician.headers
    )
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


def _put(client: TestClient, world: Any, body: dict[str, Any], version: int = 0) -> Any:
    return client.put(
        f"{API}/patients/{world.patient}/desired",
        json=body,
        headers={**world.clinician.headers, "If-Match": f'"{version}"'},
    )


def _get(client: TestClient, world: Any) -> dict[str, Any]:
    got = client.get(f"{API}/patients/{world.patient}/desired", headers=world.clinician.headers)
    assert got.status_code == 200, got.text
    body: dict[str, Any] = got.json()
    return body


def _report(engine: Engine, seq: int, body: dict[str, Any], device: str = "dev-a") -> None:
    envelope = Envelope.create(device=device, seq=seq, kind="reported", body=body)
    result = IngestProcessor(engine).process(
        [Received(topics.up(device, "reported"), envelope.to_bytes())]
    )
    assert result.stored == 1, result


def _program_report(entry: dict[str, Any], status: str, reason: str = "") -> dict[str, Any]:
    return {
        "library_id": entry["library_id"],
        "version": entry["version"],
        "sha256": entry["sha256"],
        "status": status,
        "reason": reason,
    }


def test_two_library_programs_make_a_signed_state_the_device_accepts(
    client: TestClient, world: Any, publisher: MemoryPublisher
) -> None:
    alpha = _program(client, world, ALPHA_TOML)
    pink = _program(client, world, PINK_TOML)
    body = {
        "limits": {"max_session_minutes": 30},
        "programs": [{"library_id": pink["id"]}, {"library_id": alpha["id"], "version": 1}],
        "sessions_per_week": 3,
    }
    put = _put(client, world, body)
    assert put.status_code == 200, put.text
    document = json.loads(publisher.documents[world.device])
    assert document["sessions_per_week"] == 3
    profile = enforced_profile(document)
    entries = [PrescribedProgram.model_validate(e) for e in document["programs"]]
    assert [(e.library_id, e.version, e.name) for e in entries] == [
        (pink["id"], 1, "Pink rest"),
        (alpha["id"], 1, "Alpha drift"),
    ]
    for entry, library in zip(entries, (pink, alpha), strict=True):
        program = check_prescribed(entry, profile, engine_capabilities())
        assert entry.sha256 == library["content_hash"] == program.digest()
        assert entry.sha256 == definition_sha256(entry.definition)
        assert entry.definition == library["program"]
    shown = put.json()["programs"]
    assert [(p["name"], p["version"], p["state"]) for p in shown] == [
        ("Pink rest", 1, "pending"),
        ("Alpha drift", 1, "pending"),
    ]
    assert shown[0]["devices"] == [
        {"device_id": "dev-a", "desired_version": 1, "state": "pending", "reason": ""}
    ]


@pytest.mark.parametrize(
    ("case", "status_words"),
    [
        ("free-form", "programs are prescribed by library id"),
        ("unknown-id", "no library program has this id"),
        ("unknown-version", "has no version 5 of it (versions 1 to 1)"),
        ("too-long", "sessions may last at most 300 s"),
        ("duplicate", "is prescribed twice"),
        ("device-lacks", "device dev-a: this device's engine lacks layer type(s) binaural"),
    ],
)
def test_refusals_name_the_program_and_why(
    *,
    client: TestClient,
    world: Any,
    engine: Engine,
    publisher: MemoryPublisher,
    case: str,
    status_words: str,
) -> None:
    alpha = _program(client, world, ALPHA_TOML)
    ref = {"library_id": alpha["id"]}
    body: dict[str, Any] = {"programs": [ref]}
    if case == "free-form":
        body["programs"] = [{"name": "calm-tone"}]
    elif case == "unknown-id":
        ref["library_id"] = "0190a000-0000-7000-8000-000000000000"
    elif case == "unknown-version":
        ref["version"] = 5
    elif case == "too-long":
        body["limits"] = {"max_session_minutes": 5}
    elif case == "duplicate":
        body["programs"] = [ref, {**ref, "version": 1}]
    elif case == "device-lacks":
        capabilities = engine_capabilities().model_dump(mode="json")
        capabilities["layer_types"] = ["noise", "tone"]
        _report(
            engine,
            0,
            {"desired_version": 1, "status": "refused", "capabilities": capabilities},
        )
    response = _put(client, world, body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    if case == "free-form":
        assert error["code"] == "validation_error"
        assert status_words in json.dumps(error["details"])
    else:
        assert status_words in error["message"]
        assert error["details"]["reason"] in error["message"]
        named = "0190a000" if case == "unknown-id" else "Alpha drift"
        assert named in error["message"]
        assert error["details"]["library_id"] == ref["library_id"]
    assert _get(client, world)["version"] == 0
    assert publisher.documents == {}


def test_a_library_edit_leaves_the_patient_on_version_1_until_prescribed_again(
    client: TestClient, world: Any, publisher: MemoryPublisher
) -> None:
    alpha = _program(client, world, ALPHA_TOML)
    assert _put(client, world, {"programs": [{"library_id": alpha["id"]}]}).status_code == 200
    edited = client.put(
        f"{API}/programs/{alpha['id']}",
        json={"document": ALPHA_TOML.replace("beat_hz = 10", "beat_hz = 8")},
        headers={**world.clinician.headers, "If-Match": '"1"'},
    )
    assert edited.status_code == 200, edited.text
    shown = _get(client, world)["programs"][0]
    assert (shown["version"], shown["latest_version"], shown["newer_version"]) == (1, 2, True)
    signed = json.loads(publisher.documents[world.device])["programs"][0]
    assert (signed["version"], signed["sha256"]) == (1, alpha["content_hash"])
    assert signed["definition"]["steps"][0]["layers"][0]["beat_hz"] == 10

    again = _put(client, world, {"programs": [{"library_id": alpha["id"]}]}, version=1)
    assert again.status_code == 200, again.text
    shown = again.json()["programs"][0]
    assert (shown["version"], shown["latest_version"], shown["newer_version"]) == (2, 2, False)
    signed = json.loads(publisher.documents[world.device])["programs"][0]
    assert (signed["version"], signed["sha256"]) == (2, edited.json()["content_hash"])


def test_reports_give_each_program_its_state(
    client: TestClient, world: Any, engine: Engine, publisher: MemoryPublisher
) -> None:
    alpha = _program(client, world, ALPHA_TOML)
    pink = _program(client, world, PINK_TOML)
    refs = [{"library_id": alpha["id"]}, {"library_id": pink["id"]}]
    assert _put(client, world, {"programs": refs}).status_code == 200
    entries = json.loads(publisher.documents[world.device])["programs"]
    capabilities = engine_capabilities().model_dump(mode="json")
    _report(
        engine,
        5,
        {
            "desired_version": 1,
            "status": "applied",
            "programs": [
                _program_report(entries[0], "applied"),
                _program_report(entries[1], "refused", "pink noise is not allowed here"),
            ],
            "capabilities": capabilities,
        },
    )
    # An older report arriving late changes nothing.
    _report(
        engine,
        4,
        {
            "desired_version": 1,
            "status": "deferred",
            "programs": [_program_report(entries[0], "refused", "old news")],
        },
    )
    desired = _get(client, world)
    states = [(p["name"], p["state"], p["reason"]) for p in desired["programs"]]
    assert states == [
        ("Alpha drift", "applied", ""),
        ("Pink rest", "refused", "device dev-a: pink noise is not allowed here"),
    ]
    assert desired["capabilities"]["dev-a"]["engine_version"] == capabilities["engine_version"]

    # A new prescription is pending until the device reports its version; refused whole, each
    # of its programs is refused with the document's reason.
    assert _put(client, world, {"programs": refs[:1]}, version=1).status_code == 200
    assert [p["state"] for p in _get(client, world)["programs"]] == ["pending"]
    _report(
        engine,
        6,
        {"desired_version": 2, "status": "refused", "reason": "signature by another key"},
    )
    (shown,) = _get(client, world)["programs"]
    assert (shown["state"], shown["reason"]) == (
        "refused",
        "device dev-a: signature by another key",
    )


def test_stored_free_form_programs_show_as_refused(
    client: TestClient, world: Any, engine: Engine
) -> None:
    """A config stored before prescriptions by id stays readable, its entries marked."""
    from sqlmodel import Session

    from resonera.server.models import PatientConfigRow

    with Session(engine) as session:
        session.add(
            PatientConfigRow(
                patient_id=world.patient,
                version=1,
                profile={},
                limits={},
                programs=[{"name": "calm-tone"}],
                created_by=world.clinician.id,
                created_at=datetime.now(UTC),
            )
        )
        session.commit()
    (shown,) = _get(client, world)["programs"]
    assert (shown["name"], shown["library_id"], shown["state"]) == ("calm-tone", None, "refused")
    assert "prescribe it again from the library" in shown["reason"]
