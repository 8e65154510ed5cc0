"""The running API (uvicorn on a loopback port, SQLite and PostgreSQL) answers 422, never 500,
to times without a UTC equivalent and to text that is not valid Unicode (issue 26, finding 3);
a CSV download is never a 200 cut short."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.server.crypto import write_signing_key
from resonera.server.desired import MemoryPublisher
from resonera.server.ingest import IngestProcessor, Received
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


def test_a_period_bound_without_a_utc_equivalent_is_a_422_naming_it(api: str, world: Any) -> None:
    """Every route with a period, each bound, each end of the calendar: one server, all cases,
    every failure reported together."""
    failures = []
    for role, path in PERIOD_ROUTES:
        url = api + path.format(p=world.patient)
        for bound in ("from", "to"):
            for when in NO_UTC_EQUIVALENT:
                try:
                    response = httpx.get(
                        url, params={bound: when}, headers=world.by_name(role).headers
                    )
                except httpx.HTTPError as exc:  # e.g. a 200 whose body stopped short
                    failures.append(f"{path}?{bound}={when}: {type(exc).__name__}: {exc}")
                    continue
                expected = {
                    "loc": ["query", bound],
                    "msg": f"is out of range: {when} is outside the years 1 to 9999 in UTC",
                    "type": "datetime_out_of_range",
                }
                if response.status_code != 422 or response.json()["error"]["details"] != [expected]:
                    failures.append(
                        f"{path}?{bound}={when}: {response.status_code} {response.text}"
                    )
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    ("path", "rows"),
    [("/patients/{p}/export/sessions.csv", 3), ("/patients/{p}/export/checkins.csv", 0)],
)
def test_a_csv_export_of_the_whole_calendar_is_whole(
    *,
    api: str,
    world: Any,
    engine: Engine,
    make_envelope: Callable[..., Envelope],
    make_body: Callable[..., dict[str, Any]],
    path: str,
    rows: int,
) -> None:
    """The widest period there is, in UTC: a complete download, every row and the header."""
    now = datetime.now(UTC)
    sessions = [
        make_envelope(world.device, body=make_body(start=now - timedelta(hours=h + 1)), seq=h)
        for h in range(3)
    ]
    IngestProcessor(engine).process(
        Received(topics.up(world.device, "session"), e.to_bytes()) for e in sessions
    )
    url = api + path.format(p=world.patient)
    params = {"from": "0001-01-01T00:00:00Z", "to": "9999-12-31T23:59:59.999999Z"}
    with httpx.stream("GET", url, params=params, headers=world.clinician.headers) as response:
        assert response.status_code == 200
        body = response.read().decode()
    assert body.endswith("\r\n") and body.count("\r\n") == 1 + rows
    with Session(engine) as session:
        audited = session.exec(
            select(func.count()).select_from(AuditRow).where(AuditRow.action == "export")
        ).one()
    assert audited == 1


def test_a_csv_export_whose_query_fails_is_an_error_not_a_200_cut_short(
    api: str, world: Any, engine: Engine
) -> None:
    """Whatever fails in the query (here its table is gone) fails before the status is sent."""
    url = f"{api}/patients/{world.patient}/export/sessions.csv"
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE session_record RENAME TO session_record_away"))
    try:
        response = httpx.get(url, headers=world.clinician.headers)
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE session_record_away RENAME TO session_record"))
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"


def _patients(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(PatientRow)).one()


#: (role, method, path, body, where the 422 points): text that is not valid Unicode in every kind
#: of text input, a time without a UTC equivalent in a body. ``{p}`` is the world's patient.
REFUSED_BODIES: list[tuple[str, str, str, dict[str, Any], tuple[str, ...]]] = [
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
    ("clinician", "PUT", "/patients/{p}/desired", {"profile": {"\udfff": 1}}, ("body", "profile")),
    ("clinician", "POST", "/programs", {"document": 'name = "\ud800"\n'}, ("body", "document")),
    (
        "clinician",
        "POST",
        "/patients/{p}/dose-ledger/reset",
        {"reason": "a\ud800"},
        ("body", "reason"),
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
]


def test_text_that_is_not_unicode_or_a_time_out_of_range_is_a_422_and_changes_nothing(
    api: str, world: Any, engine: Engine
) -> None:
    failures = []
    patients = _patients(engine)
    for role, method, path, body, where in REFUSED_BODIES:
        actor = world.by_name(role)
        headers = actor.headers if actor is not None else {}
        sent = json.loads(json.dumps(body).replace("{p}", world.patient))
        response = _request(method, api + path.format(p=world.patient), headers, sent)
        if response.status_code != 422:
            failures.append(f"{method} {path} {body!r}: {response.status_code} {response.text}")
            continue
        error = response.json()["error"]
        if error["code"] != "validation_error" or list(where) not in [
            d["loc"] for d in error["details"]
        ]:
            failures.append(f"{method} {path} {body!r}: {error}")
    assert not failures, "\n".join(failures)
    assert _patients(engine) == patients
