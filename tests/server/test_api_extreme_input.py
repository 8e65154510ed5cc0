"""The running API (uvicorn on a loopback port, SQLite and PostgreSQL) answers 422, never 500,
to times without a UTC equivalent and to text that is not valid Unicode (issue 26, finding 3);
a CSV download is never a 200 cut short."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from resonera.server.crypto import write_signing_key
from resonera.server.desired import MemoryPublisher
from resonera.server.models import AuditRow, PatientRow
from resonera.server.runner import run_server_in_thread
from resonera.server.settings import ServerSettings

#: Times that parse but have no UTC equivalent: before year 1 or after year 9999 in UTC.
NO_UTC_EQUIVALENT = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-23:00"]
#: (role, path) of every route with a period; ``{p}`` is the world's patient.
PERIOD_ROUTES = [
    ("clinician", "/sessions"),
    ("clinician", "/patients/{p}/sessions"),
    ("clinician", "/patients/{p}/safety-events"),
    ("clinician", "/patients/{p}/export/fhir"),
    ("clinician", "/patients/{p}/export/sessions.csv"),
    ("clinician", "/patients/{p}/export/checkins.csv"),
    ("auditor", "/audit"),
]


@pytest.fixture
def api(
    engine: Engine, server_settings: ServerSettings, publisher: MemoryPublisher, tmp_path: Path
) -> Iterator[str]:
    """The API of ``engine``'s database served by uvicorn on a free loopback port."""
    key = tmp_path / "desired.pem"
    write_signing_key(key)
    settings = server_settings.model_copy(update={"desired_signing_key_file": key})
    with run_server_in_thread(settings, ingest=False, engine=engine, publisher=publisher) as server:
        yield server.api_url


def _request(method: str, url: str, headers: dict[str, str], body: Any) -> httpx.Response:
    # json.dumps writes a lone surrogate as the escape \ud800, as any JSON client may send it.
    content = json.dumps(body).encode()
    return httpx.request(
        method, url, content=content, headers={**headers, "Content-Type": "application/json"}
    )


def _validation_error(response: httpx.Response, *where: str) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "validation_error"
    assert list(where) in [d["loc"] for d in error["details"]]
    return error


@pytest.mark.parametrize("when", NO_UTC_EQUIVALENT)
@pytest.mark.parametrize("bound", ["from", "to"])
@pytest.mark.parametrize(("role", "path"), PERIOD_ROUTES, ids=[p for _, p in PERIOD_ROUTES])
def test_a_period_bound_without_a_utc_equivalent_is_a_422_naming_it(
    *, api: str, world: Any, role: str, path: str, bound: str, when: str
) -> None:
    url = api + path.format(p=world.patient)
    response = httpx.get(url, params={bound: when}, headers=world.by_name(role).headers)
    error = _validation_error(response, "query", bound)
    (detail,) = error["details"]
    assert detail["msg"] == f"is out of range: {when} is outside the years 1 to 9999 in UTC"


@pytest.mark.parametrize(
    "path", ["/patients/{p}/export/sessions.csv", "/patients/{p}/export/checkins.csv"]
)
def test_a_csv_export_of_the_whole_calendar_is_whole(
    api: str, world: Any, engine: Engine, path: str
) -> None:
    """The widest period there is, in UTC: a complete download (it ends with its last line)."""
    url = api + path.format(p=world.patient)
    params = {"from": "0001-01-01T00:00:00Z", "to": "9999-12-31T23:59:59.999999Z"}
    with httpx.stream("GET", url, params=params, headers=world.clinician.headers) as response:
        assert response.status_code == 200
        body = response.read().decode()
    assert body.endswith("\r\n") and body.count("\r\n") == 1  # the header: no sessions yet
    with Session(engine) as session:
        audited = session.exec(
            select(func.count()).select_from(AuditRow).where(AuditRow.action == "export")
        ).one()
    assert audited == 1


def _patients(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(PatientRow)).one()


@pytest.mark.parametrize(
    ("role", "method", "path", "body", "where"),
    [
        (
            "clinician",
            "POST",
            "/patients",
            {"name": "Ada \ud800", "birth_date": "1970-01-01"},
            ("body", "name"),
        ),
        (
            "clinician",
            "POST",
            "/patients",
            {"name": "Ada", "birth_date": "1970-01-01", "notes": "\udfff"},
            ("body", "notes"),
        ),
        ("clinician", "PATCH", "/patients/{p}", {"name": "\udc00x"}, ("body", "name")),
        (
            "clinician",
            "POST",
            "/patients",
            {"name": "Ada", "birth_date": "1970-01-01", "\ud800": 1},
            ("body",),
        ),
        (
            "clinician",
            "PUT",
            "/patients/{p}/desired",
            {"profile": {"name": {"nested": ["\ud800"]}}},
            ("body", "profile"),
        ),
        (
            "clinician",
            "PUT",
            "/patients/{p}/desired",
            {"profile": {"\udfff": 1}},
            ("body", "profile"),
        ),
        (
            "clinician",
            "POST",
            "/programs",
            {"document": 'name = "\ud800"\n'},
            ("body", "document"),
        ),
        ("admin", "POST", "/devices", {"id": "dev-new", "note": "\ud800"}, ("body", "note")),
        (
            "admin",
            "POST",
            "/assignments",
            {"device_id": "dev-a", "patient_id": "{p}", "valid_from": NO_UTC_EQUIVALENT[0]},
            ("body", "valid_from"),
        ),
        (
            "anonymous",
            "POST",
            "/auth/login",
            {"email": "a@b.org", "password": "\ud800" * 12},
            ("body", "password"),
        ),
    ],
    ids=[
        "patient-name",
        "patient-notes",
        "patient-update",
        "field-name",
        "profile-value",
        "profile-key",
        "program",
        "device-note",
        "assignment-time",
        "login",
    ],
)
def test_text_that_is_not_unicode_or_a_time_out_of_range_is_a_422_and_changes_nothing(
    *,
    api: str,
    world: Any,
    engine: Engine,
    role: str,
    method: str,
    path: str,
    body: dict[str, Any],
    where: tuple[str, ...],
) -> None:
    actor = world.by_name(role)
    headers = actor.headers if actor is not None else {}
    patients = _patients(engine)
    if role != "anonymous":
        body = json.loads(json.dumps(body).replace("{p}", world.patient))
    response = _request(method, api + path.format(p=world.patient), headers, body)
    _validation_error(response, *where)
    assert _patients(engine) == patients
