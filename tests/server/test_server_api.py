"""The HTTP API through FastAPI's TestClient, on SQLite and on PostgreSQL: auth, errors, patients,
the clinical views, the desired state, assignments, audit. The role matrix has its own file."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from http import HTTPStatus
from typing import Any

import pytest
from factories import RECENT, event_body
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.server.desired import MemoryPublisher
from resonera.server.ingest import IngestProcessor, Received
from resonera.server.models import AuditRow, DoseDailyRow, PatientConfigRow
from resonera.server.settings import ServerSettings

API = "/api/v1"
PASSWORD = "correct horse battery staple"
T0 = RECENT


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    # RFC 9457 problem details, with the error shape clients read before as its extension member
    assert response.headers["content-type"] == "application/problem+json"
    assert set(body) == {"type", "title", "status", "detail", "error"}
    assert body["status"] == status and body["type"] == "about:blank"
    assert body["title"] == HTTPStatus(status).phrase
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["detail"] == body["error"]["message"]
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


def _audit(engine: Engine) -> list[AuditRow]:
    with Session(engine) as session:
        return list(session.exec(select(AuditRow).order_by(AuditRow.id)).all())  # type: ignore[arg-type]


@pytest.fixture
def server_settings(server_settings: ServerSettings) -> ServerSettings:
    """Sign-in delays of a minute from the first: five slow failed logins on a loaded machine (or
    under faketime) must not outlast the delay they start (1 s by default)."""
    login = server_settings.login.model_copy(update={"first_delay_s": 60.0})
    return server_settings.model_copy(update={"login": login})


@pytest.fixture
def store(engine: Engine, make_body: Callable[..., dict[str, Any]]) -> Callable[..., Envelope]:
    """Ingest a session as a device would (through IngestProcessor)."""
    processor = IngestProcessor(engine)
    seqs: dict[str, int] = {}

    def put(device: str = "dev-a", **body: Any) -> Envelope:
        seqs[device] = seqs.get(device, -1) + 1
        envelope = Envelope.create(
            device=device, seq=seqs[device], kind="session", body=make_body(**body)
        )
        result = processor.process([Received(topics.up(device, "session"), envelope.to_bytes())])
        assert result.stored == 1
        return envelope

    return put


# -- health ----------------------------------------------------------------------------------


def test_healthz_and_readyz(client: TestClient, publisher: MemoryPublisher) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "database": "ok"}
    ready = client.get("/readyz")
    assert (ready.status_code, ready.json()["broker"]) == (200, "ok")
    publisher.up = False
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json() == {"status": "unavailable", "database": "ok", "broker": "unavailable"}


def test_metrics_in_prometheus_format(client: TestClient, engine: Engine, world: Any) -> None:
    IngestProcessor(engine).process([Received(topics.status("dev-a"), b"online")])
    IngestProcessor(engine).process([Received(topics.up("dev-a", "session"), b"junk")])
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text_ = response.text
    assert "resonera_devices_online 1.0" in text_
    assert "resonera_quarantine_rows 1.0" in text_
    assert "resonera_ingest_quarantined_total" in text_
    assert "resonera_ingest_lag_seconds_bucket" in text_


# -- auth ------------------------------------------------------------------------------------


def _login(client: TestClient, email: str, password: str = PASSWORD) -> Any:
    return client.post(f"{API}/auth/login", json={"email": email, "password": password})


def test_login_me_refresh_logout(client: TestClient, world: Any) -> None:
    response = _login(client, world.clinician.email.upper())
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 900
    me = client.get(f"{API}/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert (me.json()["email"], me.json()["role"]) == (world.clinician.email, "clinician")
    refreshed = client.post(f"{API}/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200
    new = refreshed.json()
    # the used refresh token is spent; reusing it revokes the new one too (theft detection)
    reuse = client.post(f"{API}/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    _error(reuse, 401, "unauthorized")
    again = client.post(f"{API}/auth/refresh", json={"refresh_token": new["refresh_token"]})
    _error(again, 401, "unauthorized")
    # a fresh login, then logout revokes its refresh token
    fresh = _login(client, world.clinician.email).json()
    out = client.post(
        f"{API}/auth/logout",
        json={"refresh_token": fresh["refresh_token"]},
        headers={"Authorization": f"Bearer {fresh['access_token']}"},
    )
    assert out.status_code == 204
    gone = client.post(f"{API}/auth/refresh", json={"refresh_token": fresh["refresh_token"]})
    _error(gone, 401, "unauthorized")


def test_wrong_password_and_unknown_email_look_the_same(client: TestClient, world: Any) -> None:
    wrong = _error(_login(client, world.clinician.email, "not the password"), 401, "unauthorized")
    unknown = _error(_login(client, "nobody@example.org"), 401, "unauthorized")
    assert wrong["message"] == unknown["message"] == "wrong email or password"


def test_repeated_failures_slow_down_the_address_and_an_admin_lifts_the_accounts_delay(
    client: TestClient, world: Any, engine: Engine
) -> None:
    """The sign-in limits in short (every request here comes from one address, ``testclient``);
    tests/server/test_api_access_limits.py has them from several addresses under uvicorn."""
    for _ in range(5):
        _error(_login(client, world.clinician.email, "wrong password!"), 401, "unauthorized")
    waiting = _login(client, world.clinician.email)  # the right password waits too
    error = _error(waiting, 429, "too_many_requests")
    assert error["details"] == {"retry_after_s": int(waiting.headers["Retry-After"])}
    assert "from this address" in error["message"]
    # unlock forgets the account's failures (which are this address's too): in at once
    unlock = client.patch(
        f"{API}/users/{world.clinician.id}", json={"unlock": True}, headers=world.admin.headers
    )
    assert unlock.status_code == 200, unlock.text
    assert _login(client, world.clinician.email).status_code == 200
    assert [a.action for a in _audit(engine)].count("login_failed") == 5


@pytest.mark.parametrize(
    "header",
    [None, "Bearer nope", "Basic abc", "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0."],
    ids=["missing", "garbage", "basic", "alg-none"],
)
def test_bad_tokens_are_401_with_a_challenge(
    client: TestClient, world: Any, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    response = client.get(f"{API}/sessions", headers=headers)
    _error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


def test_deactivated_user_loses_access_at_once(client: TestClient, world: Any) -> None:
    assert client.get(f"{API}/sessions", headers=world.clinician.headers).status_code == 200
    response = client.patch(
        f"{API}/users/{world.clinician.id}", json={"active": False}, headers=world.admin.headers
    )
    assert response.status_code == 200
    _error(client.get(f"{API}/sessions", headers=world.clinician.headers), 401, "unauthorized")


def test_admin_cannot_lock_themselves_out(client: TestClient, world: Any) -> None:
    response = client.patch(
        f"{API}/users/{world.admin.id}", json={"active": False}, headers=world.admin.headers
    )
    _error(response, 409, "conflict")


def test_create_user_then_login_duplicate_is_409_and_nothing_written(
    client: TestClient, world: Any, engine: Engine
) -> None:
    body = {"email": "New@Example.org", "password": "a long enough pw", "role": "auditor"}
    created = client.post(f"{API}/users", json=body, headers=world.admin.headers)
    assert created.status_code == 201, created.text
    assert created.json()["email"] == "new@example.org"
    audits = len(_audit(engine))
    _error(client.post(f"{API}/users", json=body, headers=world.admin.headers), 409, "conflict")
    assert len(_audit(engine)) == audits
    assert _login(client, "new@example.org", "a long enough pw").status_code == 200
    short = {**body, "email": "x@example.org", "password": "short"}
    error = _error(
        client.post(f"{API}/users", json=short, headers=world.admin.headers),
        422,
        "validation_error",
    )
    assert error["details"][0]["loc"] == ["body", "password"]


# -- errors ----------------------------------------------------------------------------------


def test_unknown_route_and_method_use_the_error_shape(client: TestClient, world: Any) -> None:
    _error(client.get(f"{API}/nope"), 404, "not_found")
    _error(client.delete(f"{API}/audit", headers=world.auditor.headers), 405, "method_not_allowed")


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 1001},
        {"offset": -1},
        {"from": "2026-01-01T00:00:00"},
        {"program": "a\x00b"},
    ],
    ids=["limit-0", "limit-big", "offset-neg", "naive-time", "nul"],
)
def test_bad_query_is_422_with_details(
    client: TestClient, world: Any, params: dict[str, Any]
) -> None:
    response = client.get(f"{API}/sessions", params=params, headers=world.clinician.headers)
    error = _error(response, 422, "validation_error")
    assert error["details"]


def test_oversized_body_is_413_before_anything_is_read(client: TestClient, world: Any) -> None:
    big = {"name": "x" * 300_000, "birth_date": "1970-01-01"}
    response = client.post(f"{API}/patients", json=big, headers=world.clinician.headers)
    _error(response, 413, "payload_too_large")

    def chunks() -> Any:
        for _ in range(100):
            yield b"x" * 4096

    chunked = client.post(
        f"{API}/patients",
        content=chunks(),
        headers={**world.clinician.headers, "Content-Type": "application/json"},
    )
    _error(chunked, 413, "payload_too_large")


def test_malformed_json_is_422(client: TestClient, world: Any) -> None:
    response = client.post(
        f"{API}/patients",
        content=b'{"name": ',
        headers={**world.clinician.headers, "Content-Type": "application/json"},
    )
    _error(response, 422, "validation_error")


def test_unexpected_error_is_a_500_in_the_same_shape(app: FastAPI) -> None:
    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret detail")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    error = _error(response, 500, "internal_error")
    assert "secret" not in json.dumps(error)


# -- patients --------------------------------------------------------------------------------


def test_clinician_creates_a_patient_stored_encrypted(
    client: TestClient, world: Any, engine: Engine
) -> None:
    body = {"name": "Émilie du Châtelet", "birth_date": "1706-12-17", "notes": "likes 40 Hz"}
    created = client.post(f"{API}/patients", json=body, headers=world.clinician.headers)
    assert created.status_code == 201, created.text
    patient = created.json()
    assert patient["name"] == body["name"] and patient["clinician_ids"] == [world.clinician.id]
    with engine.connect() as conn:
        raw = conn.execute(
            text("SELECT name_enc, notes_enc FROM patient WHERE id = :id"), {"id": patient["id"]}
        ).one()
    assert "Châtelet" not in raw[0] and raw[0].startswith("t1:") and "40 Hz" not in raw[1]
    got = client.get(f"{API}/patients/{patient['id']}", headers=world.clinician.headers)
    assert got.json()["birth_date"] == "1706-12-17"
    patched = client.patch(
        f"{API}/patients/{patient['id']}",
        json={"notes": "prefers mornings"},
        headers=world.clinician.headers,
    )
    assert patched.json()["notes"] == "prefers mornings"
    assert patched.json()["name"] == body["name"]
    actions = [
        (a.action, a.resource, a.actor_id) for a in _audit(engine) if a.patient_id == patient["id"]
    ]
    assert actions == [
        ("create", "patient", world.clinician.id),
        ("read", "patient", world.clinician.id),
        ("update", "patient", world.clinician.id),
    ]
    row = next(a for a in _audit(engine) if a.action == "update")
    assert row.client and row.method == "PATCH" and row.path.endswith(patient["id"])


def test_clinician_lists_only_their_patients(client: TestClient, world: Any) -> None:
    listed = client.get(f"{API}/patients", headers=world.clinician.headers).json()
    assert [p["id"] for p in listed] == [world.patient]
    assert len(client.get(f"{API}/patients", headers=world.admin.headers).json()) == 2


def test_admin_links_and_unlinks_a_clinician(client: TestClient, world: Any) -> None:
    url = f"{API}/patients/{world.other_patient}"
    _error(client.get(url, headers=world.clinician.headers), 404, "not_found")
    link = client.post(
        f"{url}/clinicians", json={"user_id": world.clinician.id}, headers=world.admin.headers
    )
    assert link.status_code == 204
    assert client.get(url, headers=world.clinician.headers).status_code == 200
    unlink = client.delete(f"{url}/clinicians/{world.clinician.id}", headers=world.admin.headers)
    assert unlink.status_code == 204
    _error(client.get(url, headers=world.clinician.headers), 404, "not_found")
    not_clinician = client.post(
        f"{url}/clinicians", json={"user_id": world.auditor.id}, headers=world.admin.headers
    )
    _error(not_clinician, 404, "not_found")


# -- clinical views --------------------------------------------------------------------------


def test_patient_sessions_newest_first_with_filters(
    client: TestClient, world: Any, store: Callable[..., Envelope]
) -> None:
    old = store(start=T0)
    mid = store(start=T0 + timedelta(days=1), program_name="deep-sleep")
    new = store(start=T0 + timedelta(days=2))
    store("dev-b", start=T0)  # the other clinician's patient
    url = f"{API}/patients/{world.patient}/sessions"
    rows = client.get(url, headers=world.clinician.headers).json()
    assert [r["message_id"] for r in rows] == [new.id, mid.id, old.id]
    assert {r["patient_id"] for r in rows} == {world.patient}
    by_program = client.get(url, params={"program": "deep-sleep"}, headers=world.clinician.headers)
    assert [r["message_id"] for r in by_program.json()] == [mid.id]
    window = {
        "from": (T0 + timedelta(days=1)).isoformat(),
        "to": (T0 + timedelta(days=2)).isoformat(),
    }
    assert [
        r["message_id"]
        for r in client.get(url, params=window, headers=world.clinician.headers).json()
    ] == [mid.id]
    paged = client.get(url, params={"limit": 1, "offset": 1}, headers=world.clinician.headers)
    assert [r["message_id"] for r in paged.json()] == [mid.id]
    everything = client.get(f"{API}/sessions", headers=world.clinician.headers).json()
    assert {r["device_id"] for r in everything} == {"dev-a"}


def test_safety_events(client: TestClient, world: Any, engine: Engine) -> None:
    events = [
        Envelope.create(
            device="dev-a",
            seq=i,
            kind="event",
            body=event_body(type=t, cause="x"),
            time=T0 + timedelta(minutes=i),
        )
        for i, t in enumerate(["fault", "warning", "fault"])
    ]
    IngestProcessor(engine).process(
        [Received(topics.up("dev-a", "event"), e.to_bytes()) for e in events]
    )
    url = f"{API}/patients/{world.patient}/safety-events"
    rows = client.get(url, headers=world.clinician.headers).json()
    assert [r["message_id"] for r in rows] == [e.id for e in reversed(events)]
    faults = client.get(url, params={"type": "fault"}, headers=world.clinician.headers).json()
    assert len(faults) == 2


def test_dose_daily_and_rolling_7_days(client: TestClient, world: Any, engine: Engine) -> None:
    today = datetime.now(UTC).date()
    with Session(engine) as session:
        for back, dose in [(0, 0.1), (3, 0.2), (6, 0.3), (7, 0.4), (10, 0.5)]:
            session.add(
                DoseDailyRow(
                    patient_id=world.patient,
                    day=today - timedelta(days=back),
                    dose_fraction=dose,
                    sessions=1,
                    played_s=60.0,
                )
            )
        session.commit()
    response = client.get(
        f"{API}/patients/{world.patient}/dose", params={"days": 8}, headers=world.clinician.headers
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["allowance_fraction"] == 1.0
    assert report["rolling_7d"] == pytest.approx(0.6)
    assert report["remaining_fraction"] == pytest.approx(0.4)
    days = {date.fromisoformat(d["day"]): d for d in report["days"]}
    assert len(days) == 8
    assert days[today - timedelta(days=7)]["rolling_7d"] == pytest.approx(0.4 + 0.5)
    assert days[today - timedelta(days=1)]["dose_fraction"] == 0.0


def test_adherence_against_the_prescription(
    client: TestClient, world: Any, store: Callable[..., Envelope]
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    monday = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0)
    # Right after the week begins and short, so never later than the receive time (plus the
    # 300 s ingest believes) even when the test runs just after midnight on a Monday.
    store(start=monday, minutes=0.05)
    store(start=monday + timedelta(seconds=5), minutes=0.05)
    put = client.put(
        f"{API}/patients/{world.patient}/desired",
        json={"sessions_per_week": 4},
        headers={**world.clinician.headers, "If-Match": '"0"'},
    )
    assert put.status_code == 200, put.text
    report = client.get(
        f"{API}/patients/{world.patient}/adherence",
        params={"weeks": 2},
        headers=world.clinician.headers,
    ).json()
    assert report["sessions_per_week"] == 4
    assert report["weeks"][-1] == {
        "week_start": monday.date().isoformat(),
        "done": 2,
        "prescribed": 4,
        "ratio": 0.5,
    }
    assert report["weeks"][0]["done"] == 0


# -- desired state ---------------------------------------------------------------------------


def test_desired_state_versions_etag_409_and_signed_publish(
    client: TestClient, world: Any, publisher: MemoryPublisher, engine: Engine
) -> None:
    url = f"{API}/patients/{world.patient}/desired"
    headers = world.clinician.headers
    first = client.get(url, headers=headers)
    assert (first.json()["version"], first.headers["etag"]) == (0, '"0"')
    body = {
        "profile": {"voice": "calm"},
        "limits": {"max_level_dba": 70},
        "programs": [],
    }
    _error(client.put(url, json=body, headers=headers), 428, "precondition_required")
    put = client.put(url, json=body, headers={**headers, "If-Match": '"0"'})
    assert put.status_code == 200, put.text
    assert (put.json()["version"], put.headers["etag"]) == (1, '"1"')
    assert put.json()["devices"] == {"dev-a": 1}
    document = json.loads(publisher.documents["dev-a"])
    assert (document["device"], document["version"], document["patient_config_version"]) == (
        "dev-a",
        1,
        1,
    )
    assert document["limits"]["max_level_dba"] == 70
    assert document["sig"]["alg"] == "hmac-sha256"
    stale = client.put(url, json=body, headers={**headers, "If-Match": '"0"'})
    assert _error(stale, 409, "conflict")["details"] == {"current_version": 1}
    second = client.put(url, json=body, headers={**headers, "If-Match": 'W/"1"'})
    assert second.json()["version"] == 2
    assert json.loads(publisher.documents["dev-a"])["version"] == 2
    assert "dev-b" not in publisher.documents
    with Session(engine) as session:
        versions = session.exec(
            select(PatientConfigRow.version).where(PatientConfigRow.patient_id == world.patient)
        ).all()
    assert sorted(versions) == [1, 2]


@pytest.mark.parametrize(
    "body",
    [
        {"limits": {"max_level_dba": 120}},
        {"limits": {"surprise": 1}},
        {"profile": {"deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}}},
        {"sessions_per_week": -1},
        {"programs": [{"library_id": "0190a000-0000-7000-8000-000000000000"}] * 21},
        {"programs": [{"name": "calm-tone"}]},
        {"profile": {"builtin_when_unassigned": "no"}},
    ],
    ids=["loud", "unknown-limit", "too-deep", "negative", "too-many", "free-form", "builtin"],
)
def test_invalid_desired_state_changes_nothing(
    client: TestClient, world: Any, publisher: MemoryPublisher, body: dict[str, Any]
) -> None:
    url = f"{API}/patients/{world.patient}/desired"
    response = client.put(url, json=body, headers={**world.clinician.headers, "If-Match": '"0"'})
    _error(response, 422, "validation_error")
    assert client.get(url, headers=world.clinician.headers).json()["version"] == 0
    assert publisher.documents == {}


# -- admin: devices and assignments ----------------------------------------------------------


def test_register_revoke_and_inspect_a_device(client: TestClient, world: Any) -> None:
    created = client.post(
        f"{API}/devices",
        json={"id": "dev-new", "cert_fingerprint": "ab:cd"},
        headers=world.admin.headers,
    )
    assert created.status_code == 201, created.text
    _error(
        client.post(f"{API}/devices", json={"id": "dev-new"}, headers=world.admin.headers),
        409,
        "conflict",
    )
    revoked = client.patch(
        f"{API}/devices/dev-new", json={"revoked": True}, headers=world.admin.headers
    )
    assert revoked.json()["revoked"] is True
    _error(
        client.post(f"{API}/devices", json={"id": "bad id!"}, headers=world.admin.headers),
        422,
        "validation_error",
    )


def test_assignment_attributes_earlier_sessions_and_publishes(
    client: TestClient, world: Any, store: Callable[..., Envelope], publisher: MemoryPublisher
) -> None:
    client.post(f"{API}/devices", json={"id": "dev-c"}, headers=world.admin.headers)
    earlier = store("dev-c", start=T0, dose_fraction=0.125)
    url = f"{API}/patients/{world.patient}/desired"
    client.put(url, json={}, headers={**world.clinician.headers, "If-Match": '"0"'})
    body = {
        "device_id": "dev-c",
        "patient_id": world.patient,
        "valid_from": (T0 - timedelta(days=1)).isoformat(),
    }
    created = client.post(f"{API}/assignments", json=body, headers=world.admin.headers)
    assert created.status_code == 201, created.text
    assert created.json()["attributed_sessions"] == 1
    assert "dev-c" in publisher.documents
    sessions = client.get(
        f"{API}/patients/{world.patient}/sessions", headers=world.clinician.headers
    ).json()
    assert earlier.id in {s["message_id"] for s in sessions}
    overlap = client.post(f"{API}/assignments", json=body, headers=world.admin.headers)
    _error(overlap, 409, "conflict")
    ended = client.patch(
        f"{API}/assignments/{created.json()['id']}",
        json={"valid_to": T0.isoformat()},
        headers=world.admin.headers,
    )
    assert ended.json()["valid_to"].startswith(T0.strftime("%Y-%m-%dT%H:%M:%S"))


def test_audit_is_read_only_and_for_auditors(client: TestClient, world: Any) -> None:
    client.get(f"{API}/patients/{world.patient}/dose", headers=world.clinician.headers)
    rows = client.get(
        f"{API}/audit", params={"patient_id": world.patient}, headers=world.auditor.headers
    ).json()
    assert rows[0]["action"] == "read" and rows[0]["resource"] == "dose"
    assert rows[0]["actor_id"] == world.clinician.id
    for method in ("put", "patch", "delete", "post"):
        response = getattr(client, method)(f"{API}/audit", headers=world.auditor.headers)
        _error(response, 405, "method_not_allowed")
    _error(client.get(f"{API}/audit/1", headers=world.auditor.headers), 404, "not_found")


def test_openapi_documents_every_error_in_one_shape(client: TestClient, world: Any) -> None:
    schema = client.get("/openapi.json", headers=world.clinician.headers).json()
    assert schema["info"]["title"] == "Resonera server"
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    responses = schema["paths"]["/api/v1/sessions"]["get"]["responses"]
    assert responses["422"]["content"]["application/problem+json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }


def test_the_schema_is_for_signed_in_people_only(client: TestClient, world: Any) -> None:
    _error(client.get("/openapi.json"), 401, "unauthorized")
    _error(client.get("/openapi.json", headers={"Authorization": "Bearer x"}), 401, "unauthorized")
    for actor in (world.admin, world.clinician, world.auditor):
        assert client.get("/openapi.json", headers=actor.headers).status_code == 200
    # FastAPI's own pages (Swagger UI and ReDoc from a CDN) are gone; ours sends to the sign-in.
    assert client.get("/redoc").status_code == 404
    signed_out = client.get("/docs", headers={"Accept": "text/html"}, follow_redirects=False)
    assert signed_out.status_code == 303
    assert signed_out.headers["location"] == "/login?next=%2Fdocs"
