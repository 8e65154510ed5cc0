"""The role matrix: every API endpoint tried by every role, by another clinician (whose patient
it is not) and without a token, with the expected status; refused attempts write nothing.

Roles are tried refused-first, so the allowed calls at the end find the world as the fixture
made it. ``test_the_matrix_covers_every_route`` fails when a route is added without a row here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from factories import RECENT
from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.server import programs
from resonera.server.models import AssignmentRow, AuditRow, DeviceRow

API = "/api/v1"
ROLES = ("anonymous", "auditor", "other_clinician", "admin", "clinician")
#: On the API's real clock, after the world's assignment began (``RECENT``, ten days ago).
NOW = RECENT + timedelta(days=5)


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    #: Expected status per role; roles not named get ``default``.
    allowed: dict[str, int]
    default: int = 403
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def expected(self, role: str) -> int:
        if role == "anonymous":
            return 401
        return self.allowed.get(role, self.default)

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"


PROGRAM = """\
name = "{name}"
[[steps]]
duration_s = 30
[[steps.layers]]
type = "tone"
frequency_hz = 440
gain = 0.2
"""
ALL = {"admin": 200, "clinician": 200, "other_clinician": 200, "auditor": 200}
ADMIN = {"admin": 200}
ADMIN_CREATES = {"admin": 201}
OWN = {"clinician": 200, "other_clinician": 404}
CASES = [
    Case("GET", "/auth/me", ALL),
    Case("POST", "/auth/logout", {r: 204 for r in ALL}, body={"refresh_token": "not-a-token"}),
    Case("GET", "/users", ADMIN),
    Case(
        "POST",
        "/users",
        ADMIN_CREATES,
        body={"email": "new@example.org", "password": "long enough pass", "role": "clinician"},
    ),
    Case("GET", "/users/{clinician_id}", ADMIN),
    Case("PATCH", "/users/{auditor_id}", ADMIN, body={"unlock": True}),
    Case("GET", "/devices", ADMIN),
    Case("POST", "/devices", ADMIN_CREATES, body={"id": "dev-new"}),
    Case("GET", "/devices/{device}", ADMIN),
    Case("PATCH", "/devices/{device}", ADMIN, body={"note": "checked"}),
    Case("POST", "/devices/{device}/revoke", ADMIN),
    Case("GET", "/assignments", ADMIN),
    Case(
        "POST",
        "/assignments",
        ADMIN_CREATES,
        body={"device_id": "dev-free", "patient_id": "{patient}", "valid_from": NOW.isoformat()},
    ),
    Case("PATCH", "/assignments/{assignment_id}", ADMIN, body={"valid_to": NOW.isoformat()}),
    Case(
        "POST",
        "/patients",
        {"admin": 201, "clinician": 201, "other_clinician": 201},
        body={"name": "New Patient", "birth_date": "1990-02-03"},
    ),
    Case("GET", "/patients", {"admin": 200, "clinician": 200, "other_clinician": 200}),
    Case("GET", "/patients/{patient}", {"admin": 200, **OWN}),
    Case("PATCH", "/patients/{patient}", {"admin": 200, **OWN}, body={"notes": "n"}),
    Case("POST", "/patients/{patient}/clinicians", {"admin": 204}, body={"user_id": "{other_id}"}),
    Case("DELETE", "/patients/{patient}/clinicians/{clinician_id}", {"admin": 204}),
    # The patient still has a device (409 for the admin); restoring one in care is a 409 too.
    Case("POST", "/patients/{patient}/archive", {"admin": 409}),
    Case("POST", "/patients/{patient}/restore", {"admin": 409}),
    Case("GET", "/patients/{patient}/sessions", OWN),
    Case("GET", "/patients/{patient}/safety-events", OWN),
    Case("GET", "/patients/{patient}/dose", OWN),
    Case("GET", "/patients/{patient}/adherence", OWN),
    Case("GET", "/patients/{patient}/desired", OWN),
    Case(
        "PUT",
        "/patients/{patient}/desired",
        OWN,
        body={"sessions_per_week": 3},
        headers={"If-Match": '"0"'},
    ),
    Case(
        "POST",
        "/patients/{patient}/dose-ledger/reset",
        {"admin": 202, "clinician": 202, "other_clinician": 404},
        body={"reason": "ledger corrupted after a power cut"},
    ),
    Case("GET", "/patients/{patient}/dose-ledger/reset", {"admin": 200, **OWN}),
    Case("GET", "/sessions", {"clinician": 200, "other_clinician": 200}),
    Case("GET", "/audit", {"auditor": 200}),
    Case("GET", "/programs", ALL),
    # Roles run in a fixed order: the first writer takes the name (the others get 409) or moves
    # the program to version 2 (the others' If-Match "1" is then stale: 412).
    Case(
        "POST",
        "/programs",
        {"other_clinician": 201, "admin": 409, "clinician": 409},
        body={"document": PROGRAM.format(name="new")},
    ),
    Case("GET", "/programs/{program}", ALL),
    Case(
        "PUT",
        "/programs/{program}",
        {"other_clinician": 200, "admin": 412, "clinician": 412},
        body={"document": PROGRAM.format(name="edited")},
        headers={"If-Match": '"1"'},
    ),
    Case("GET", "/programs/{program}/preview.wav", ALL),
    Case("GET", "/programs/{program}/versions", ALL),
    Case("GET", "/programs/{program}/versions/{version}", ALL),
    # JSON is not a sound file: writers get as far as the check (422), nothing is kept.
    Case(
        "POST",
        "/backgrounds",
        {"admin": 422, "clinician": 422, "other_clinician": 422},
        body={"not": "a sound file"},
    ),
    # Devices only, by their client certificate: no user token is enough.
    Case("GET", "/device/backgrounds/{sha256}", {}, default=401),
    Case("POST", "/updates/bundles", {"admin": 422}, body={"not": "a bundle"}),
    Case("GET", "/updates/bundles", ADMIN),
    Case("POST", "/updates/rollouts", {"admin": 404}, body={"version": "9.9.9", "percentage": 10}),
    Case("GET", "/updates/rollouts", ADMIN),
    Case("POST", "/updates/rollouts/{rollout_id}/{action}", {"admin": 404}),
    Case("GET", "/updates/versions", ADMIN),
    Case("PUT", "/devices/{device}/cohort", ADMIN, body={"cohort": "pilot"}),
    Case("GET", "/device/updates/{sha256}", {}, default=401),
    Case("GET", "/patients/{patient}/export/fhir", {"admin": 200, **OWN}),
    Case("GET", "/patients/{patient}/export/sessions.csv", {"admin": 200, **OWN}),
    Case("GET", "/patients/{patient}/outcomes", {"admin": 200, **OWN}),
    Case("GET", "/patients/{patient}/export/checkins.csv", {"admin": 200, **OWN}),
    Case("GET", "/cohort/outcomes", {"admin": 200, "clinician": 200, "other_clinician": 200}),
]
#: Reachable without a token, on purpose.
#: No user token: sign-in, and devices enrolling (one-time code) or renewing (their current key).
PUBLIC = {
    ("POST", "/auth/login"),
    ("POST", "/auth/refresh"),
    ("POST", "/enroll"),
    ("POST", "/enroll/renew"),
}


def _fill(value: Any, names: dict[str, Any]) -> Any:
    if isinstance(value, str):
        if value.startswith("{") and value.endswith("}") and value[1:-1] in names:
            return names[value[1:-1]]
        return value.format(**names)
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    return value


def _audit_count(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(AuditRow)).one())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_role_matrix(case: Case, client: TestClient, world: Any, engine: Engine) -> None:
    with Session(engine) as session:
        session.add(DeviceRow(id="dev-free", created_at=NOW))
        session.commit()
        assignment = session.exec(
            select(AssignmentRow).where(AssignmentRow.device_id == world.device)
        ).one()
    with Session(engine) as session:
        program = programs.create_program(
            session, actor_user_id=world.admin.id, document=PROGRAM.format(name="lib"), fmt="toml"
        )
    names = {
        "patient": world.patient,
        "device": world.device,
        "clinician_id": world.clinician.id,
        "auditor_id": world.auditor.id,
        "other_id": world.other_clinician.id,
        "assignment_id": assignment.id,
        "program": program.id,
        "version": 1,
        "sha256": "ab" * 32,
        "rollout_id": "0" * 36,
        "action": "pause",
    }
    path = API + _fill(case.path, names)
    body = _fill(case.body, names)
    got: dict[str, int] = {}
    for role in ROLES:
        actor = world.by_name(role)
        headers = {**case.headers, **(actor.headers if actor else {})}
        before = _audit_count(engine)
        response = client.request(case.method, path, json=body, headers=headers)
        got[role] = response.status_code
        if response.status_code >= 400:
            assert set(response.json()) == {"type", "title", "status", "detail", "error"}, (
                response.text
            )
            assert _audit_count(engine) == before, f"{role} was refused but something was written"
    assert got == {role: case.expected(role) for role in ROLES}


def test_the_matrix_covers_every_route(client: TestClient, world: Any) -> None:
    paths = client.get("/openapi.json", headers=world.auditor.headers).json()["paths"]
    routes = {
        (method.upper(), path.removeprefix(API))
        for path, operations in paths.items()
        if path.startswith(API)
        for method in operations
    }
    covered = {(c.method, c.path) for c in CASES}
    normalise = {
        "{clinician_id}": "{user_id}",
        "{auditor_id}": "{user_id}",
        "{device}": "{device_id}",
        "{patient}": "{patient_id}",
        "{program}": "{program_id}",
    }
    for old, new in normalise.items():
        covered = {(m, p.replace(old, new)) for m, p in covered}
    assert routes - PUBLIC == covered
    assert routes >= PUBLIC
