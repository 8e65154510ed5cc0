"""The dashboard's routes through TestClient (fast): sign-in, cookies, CSRF, roles, pages, forms,
error pages. The browser tests (``test_dashboard_browser.py``) cover the same flows in Chromium."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import date, timedelta
from http.cookies import SimpleCookie

from dashboard.helpers import (
    PASSWORD,
    Seeded,
    daily_dose,
    form_token,
    html_client,
    post_login,
    report_applied,
    seed_world,
    server_helpers,
    sign_in_as,
    table_cells,
)
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from resonera.server.crypto import FieldCipher
from resonera.server.desired import MemoryPublisher
from resonera.server.models import (
    AuditRow,
    DeviceRow,
    FailedAttemptRow,
    PatientConfigRow,
    RefreshTokenRow,
    UserRow,
)
from resonera.server.security import now_utc

SignIn = Callable[[str], str]


def _limits(engine: Engine, patient: str) -> list[PatientConfigRow]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(PatientConfigRow)
                .where(PatientConfigRow.patient_id == patient)
                .order_by(col(PatientConfigRow.version))
            ).all()
        )


# -- signing in and out ----------------------------------------------------------------------


def test_sign_in_sets_a_strict_httponly_session_cookie(client: TestClient, seeded: Seeded) -> None:
    page = client.get("/login")
    assert page.status_code == 200
    assert 'type="password"' in page.text
    response = post_login(client, seeded.clinician, page.text)
    assert response.status_code == 303
    assert response.headers["location"] == "/patients"
    header = next(
        h for h in response.headers.get_list("set-cookie") if h.startswith("resonera_session=")
    )
    flags = {part.strip().lower() for part in header.split(";")}
    assert "httponly" in flags
    assert "samesite=strict" in flags
    assert "secure" not in flags  # plain http (loopback) with web_cookie_secure unset
    cookie = SimpleCookie(header)["resonera_session"].value
    assert cookie and PASSWORD not in header
    assert client.get("/patients").status_code == 200


def test_cookies_are_secure_over_https_or_when_configured(app: FastAPI, seeded: Seeded) -> None:
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as tls:
        page = tls.get("/login", headers={"Accept": "text/html"})
        assert "; secure" in page.headers["set-cookie"].lower()
        response = post_login(tls, seeded.clinician, page.text)
        assert response.status_code == 303
        assert "; secure" in response.headers["set-cookie"].lower()
    settings = app.state.resonera.settings
    app.state.resonera.settings = settings.model_copy(update={"web_cookie_secure": True})
    with TestClient(app, follow_redirects=False) as plain:  # behind a TLS-terminating proxy
        assert "; secure" in plain.get("/login").headers["set-cookie"].lower()


def test_wrong_password_and_missing_login_token_are_refused(
    client: TestClient, seeded: Seeded, engine: Engine
) -> None:
    wrong = post_login(client, seeded.clinician, client.get("/login").text, password="nope")
    assert wrong.status_code == 401
    assert "Wrong email or password." in wrong.text
    assert "resonera_session" not in wrong.headers.get("set-cookie", "")
    client.cookies.clear()
    no_token = post_login(client, seeded.clinician, None)
    assert no_token.status_code == 403
    assert "expired or did not come from this site" in no_token.text
    with Session(engine) as session:  # the API's sign-in limits counted the wrong password
        failed = session.exec(select(FailedAttemptRow)).all()
        assert [(f.kind, f.subject) for f in failed] == [("login", seeded.clinician)]


def test_repeated_wrong_passwords_slow_down_as_in_the_api(
    app: FastAPI, client: TestClient, seeded: Seeded
) -> None:
    for _ in range(app.state.resonera.settings.login.free_failures_per_client):
        post_login(client, seeded.admin, client.get("/login").text, password="nope")
    waiting = post_login(client, seeded.admin, client.get("/login").text)
    assert waiting.status_code == 429
    assert int(waiting.headers["Retry-After"]) >= 1
    assert "Too many failed sign-ins from this address; try again in" in waiting.text


def test_pages_need_a_session_and_come_back_after_sign_in(
    client: TestClient, seeded: Seeded
) -> None:
    response = client.get(f"/patients/{seeded.patient}?days=7")
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("/login?next=")
    page = client.get(location)
    assert f'value="/patients/{seeded.patient}?days=7"' in page.text
    signed_in = post_login(
        client, seeded.clinician, page.text, next=f"/patients/{seeded.patient}?days=7"
    )
    assert signed_in.headers["location"] == f"/patients/{seeded.patient}?days=7"


def test_next_cannot_leave_the_site(client: TestClient, seeded: Seeded) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        response = post_login(client, seeded.clinician, client.get("/login").text, next=target)
        assert response.headers["location"] == "/patients", target


def test_sign_out_ends_the_session(
    client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    csrf = sign_in(seeded.clinician)
    cookie = client.cookies["resonera_session"]
    response = client.post("/logout", data={"csrf_token": csrf})
    assert response.status_code == 303
    client.cookies.set("resonera_session", cookie)  # a copy kept by an attacker is dead too
    assert client.get("/patients").status_code == 303
    with Session(engine) as session:
        rows = session.exec(select(RefreshTokenRow)).all()
        assert rows and all(row.revoked_at is not None for row in rows)


def test_idle_session_times_out(
    client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    sign_in(seeded.clinician)
    with Session(engine) as session:
        for row in session.exec(select(RefreshTokenRow)).all():
            row.expires_at = now_utc() - timedelta(seconds=1)
            session.add(row)
        session.commit()
    response = client.get("/patients")
    assert response.status_code == 303
    assert "reason=timed%20out" in response.headers["location"]
    assert "timed out" in client.get(response.headers["location"]).text


def test_session_expiry_is_the_idle_timeout_not_the_refresh_lifetime(
    app: FastAPI, client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    sign_in(seeded.clinician)
    idle = app.state.resonera.settings.web_idle_timeout_s
    with Session(engine) as session:
        row = session.exec(select(RefreshTokenRow)).one()
        left = (row.expires_at - now_utc()).total_seconds()
    assert idle - 120 < left <= idle


def test_deactivated_user_is_signed_out(
    client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    sign_in(seeded.clinician)
    with Session(engine) as session:
        user = session.exec(select(UserRow).where(UserRow.email == seeded.clinician)).one()
        user.active = False
        session.add(user)
        session.commit()
    assert client.get("/patients").status_code == 303


# -- roles -----------------------------------------------------------------------------------


def test_each_role_lands_on_its_page_and_is_refused_the_others(
    client: TestClient, sign_in: SignIn, seeded: Seeded
) -> None:
    expected = {
        seeded.clinician: {"/patients": 200, "/devices": 403, "/audit": 403},
        seeded.admin: {"/patients": 403, "/devices": 200, "/audit": 200},
        seeded.auditor: {"/patients": 403, "/devices": 403, "/audit": 200},
    }
    for email, pages in expected.items():
        client.cookies.clear()
        sign_in(email)
        for path, status in pages.items():
            response = client.get(path)
            assert response.status_code == status, (email, path)
            if status == 403:
                assert "Not allowed" in response.text
                assert "This page is for the role" in response.text


def test_another_clinicians_patient_is_the_403_page(
    client: TestClient, sign_in: SignIn, seeded: Seeded
) -> None:
    sign_in(seeded.clinician)
    for patient in (seeded.other_patient, "0123abcd"):
        response = client.get(f"/patients/{patient}")
        assert response.status_code == 403
        assert "This patient is not among yours." in response.text
        assert seeded.other_name not in response.text


# -- patients --------------------------------------------------------------------------------


def test_patients_list_shows_own_patients_with_their_week(
    client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    sign_in(seeded.clinician)
    html = client.get("/patients").text
    assert seeded.patient_name in html
    assert seeded.other_name not in html
    [row] = table_cells(html, "patients-table")
    name, device, last_sync, sessions, dose, events = row
    assert name == seeded.patient_name
    assert device == seeded.device
    assert last_sync.endswith("UTC")
    assert sessions.endswith("of 0")  # nothing prescribed yet
    week = seeded.dose_by_day(engine)
    today = now_utc().date()
    expected = sum(v for d, v in week.items() if (today - d).days < 7)
    assert f"{expected * 100:.1f} %" in dose
    assert events == "1"  # the seeded amplifier fault
    assert 'role="search"' in html and "<meter" in html


def test_patients_list_search_and_sort_work_without_script(
    client: TestClient, sign_in: SignIn, seeded: Seeded, cipher: FieldCipher, engine: Engine
) -> None:
    with Session(engine) as session:
        clinician = session.exec(select(UserRow).where(UserRow.email == seeded.clinician)).one()
    for name in ("Charles Babbage", "Alan Turing"):
        server_helpers().add_patient(engine, cipher, clinician.id, name)
    csrf = sign_in(seeded.clinician)

    def names(query: str) -> list[str]:
        return [
            row[0] for row in table_cells(client.get(f"/patients?{query}").text, "patients-table")
        ]

    def search(q: str, **more: str) -> str:
        response = client.post("/patients/search", data={"q": q, "csrf_token": csrf, **more})
        assert response.status_code == 200, response.text
        return str(response.text)

    assert names("") == ["Ada Lovelace", "Alan Turing", "Charles Babbage"]
    assert names("sort=name&dir=desc") == ["Charles Babbage", "Alan Turing", "Ada Lovelace"]
    assert names("sort=dose&dir=desc")[0] == "Ada Lovelace"
    assert names("sort=events&dir=asc")[-1] == "Ada Lovelace"
    # The search is posted: the name typed never goes in an address (nor an access log).
    page = client.get("/patients").text
    assert 'method="post" action="/patients/search"' in page
    assert [row[0] for row in table_cells(search("TURING"), "patients-table")] == ["Alan Turing"]
    assert names("q=TURING") == ["Ada Lovelace", "Alan Turing", "Charles Babbage"]
    # A column header sorts the search again, still posted.
    found = search("a", by="name:desc")
    assert [row[0] for row in table_cells(found, "patients-table")] == [
        "Charles Babbage",
        "Alan Turing",
        "Ada Lovelace",
    ]
    assert 'name="by" value="name:asc"' in found
    assert "No patient matches" in search("nobody")
    assert client.post("/patients/search", data={"q": "Ada"}).status_code == 403  # no CSRF
    assert (
        client.post(
            "/patients/search", data={"q": "a", "by": "birthday:asc", "csrf_token": csrf}
        ).status_code
        == 400
    )
    html = client.get("/patients?sort=dose&dir=desc").text
    assert 'aria-sort="descending"' in html
    assert client.get("/patients?sort=birthday").status_code == 400


def test_patient_page_dose_table_matches_the_data(
    client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    sign_in(seeded.clinician)
    for days in (7, 30, 90):
        html = client.get(f"/patients/{seeded.patient}?days={days}").text
        rows = table_cells(html, "dose-table")
        assert len(rows) == days
        stored = seeded.dose_by_day(engine)
        for day, dose, _rolling, allowance, _sessions, _played in rows:
            assert dose == f"{stored.get(date.fromisoformat(day), 0.0) * 100:.1f} %"
            assert allowance == "100.0 %"
    assert "/static/uPlot.iife.min.js" in html


def test_patient_page_lists_sessions_and_events_with_readings(
    client: TestClient, sign_in: SignIn, seeded: Seeded
) -> None:
    sign_in(seeded.clinician)
    html = client.get(f"/patients/{seeded.patient}?days=7").text
    sessions = table_cells(html, "sessions")
    assert sessions and all(row[1] == "calm-40hz" for row in sessions)
    assert any("stopped: the person stopped it" in row[6] for row in sessions)
    assert sum("completed; 3 audio dropouts" in row[6] for row in sessions) == 1
    # The seeded sessions: 20 minutes, a dose of daily_dose(days ago), −20 / −6 dBFS.
    for row in sessions:
        days_ago = (now_utc().date() - date.fromisoformat(row[0][:10])).days
        dose = daily_dose(days_ago)
        expected = 80 + 10 * math.log10(dose / (1200 / (40 * 3600)))
        assert row[3] == f"{expected:.1f} dB(A)", row
        assert row[4] == "-20.0 dBFS / -6.0 dBFS"
        assert row[5] == f"{dose * 100:.1f} %"
    [event] = table_cells(html, "events")
    assert event[1] == "fault"
    assert event[2] == "amplifier hot"
    # Named, rounded, with units; booleans in words.
    assert "amplifier 71.5 °C" in event[3]
    assert "supply current 0.42 A" in event[3]
    assert "headphones yes" in event[3]


def test_unknown_period_is_a_400_page(client: TestClient, sign_in: SignIn, seeded: Seeded) -> None:
    sign_in(seeded.clinician)
    response = client.get(f"/patients/{seeded.patient}?days=5")
    assert response.status_code == 400
    assert "not valid" in response.text
    assert response.headers["content-type"].startswith("text/html")


def test_reading_pages_is_audited(
    client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    sign_in(seeded.clinician)
    client.get(f"/patients/{seeded.patient}")
    with Session(engine) as session:
        rows = session.exec(select(AuditRow).where(AuditRow.patient_id == seeded.patient)).all()
    assert {(r.action, r.resource) for r in rows} >= {
        ("read", "patient"),
        ("read", "dose"),
        ("read", "sessions"),
        ("read", "safety_events"),
        ("read", "desired_state"),
    }
    assert all(r.actor_email == seeded.clinician for r in rows)


# -- the limits form -------------------------------------------------------------------------


def _limits_form(html: str, **changes: str) -> dict[str, str]:
    fields = dict(
        re.findall(r'<input id="(\w+)" name="\w+" type="number"[^>]*value="([^"]*)"', html)
    )
    version = re.search(r'name="version" value="(\d+)"', html)
    assert version
    form = {
        **fields,
        "profile": "{}",
        "version": version.group(1),
        "csrf_token": form_token(html),
    }
    form.update(changes)
    return form


def test_edit_limits_publishes_a_new_version_pending_until_applied(
    client: TestClient,
    sign_in: SignIn,
    seeded: Seeded,
    engine: Engine,
    publisher: MemoryPublisher,
) -> None:
    sign_in(seeded.clinician)
    url = f"/patients/{seeded.patient}"
    html = client.get(url).text
    assert "Defaults: nothing has been set" in html
    response = client.post(f"{url}/limits", data=_limits_form(html, max_level_dba="70.5"))
    assert response.status_code == 303, response.text
    [config] = _limits(engine, seeded.patient)
    assert config.version == 1
    assert config.limits["max_level_dba"] == 70.5
    assert seeded.device in publisher.documents  # signed and published like the API's PUT
    page = client.get(response.headers["location"]).text
    assert "pending on device" in page and seeded.device in page
    assert 'value="70.5"' in page
    from resonera.server.models import DeviceDesiredRow

    with Session(engine) as session:
        desired = session.get(DeviceDesiredRow, seeded.device)
        assert desired is not None
    report_applied(engine, seeded.device, desired.version)
    page = client.get(url).text
    assert "applied on device" in page and "pending on device" not in page


def test_invalid_limits_are_explained_and_change_nothing(
    client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    sign_in(seeded.clinician)
    url = f"/patients/{seeded.patient}"
    html = client.get(url).text
    for changes, field in (
        ({"max_level_dba": "120"}, "max_level_dba"),
        ({"max_session_minutes": "ten"}, "max_session_minutes"),
        ({"profile": "{not json"}, "profile"),
    ):
        response = client.post(f"{url}/limits", data=_limits_form(html, **changes))
        assert response.status_code == 400, changes
        assert "The settings were not saved" in response.text
        assert f"<li>{field}:" in response.text
    assert _limits(engine, seeded.patient) == []


def test_stale_version_is_a_conflict(
    client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    sign_in(seeded.clinician)
    url = f"/patients/{seeded.patient}"
    form = _limits_form(client.get(url).text)
    assert client.post(f"{url}/limits", data=form).status_code == 303
    again = client.post(f"{url}/limits", data=form)
    assert again.status_code == 409
    assert "changed these settings meanwhile" in again.text
    assert len(_limits(engine, seeded.patient)) == 1


def test_posts_without_the_csrf_token_are_refused(
    client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    sign_in(seeded.clinician)
    url = f"/patients/{seeded.patient}"
    form = _limits_form(client.get(url).text)
    for token in ("", "0" * 64):
        response = client.post(f"{url}/limits", data={**form, "csrf_token": token})
        assert response.status_code == 403
        assert "CSRF" in response.text
    assert client.post("/logout", data={}).status_code == 403
    assert _limits(engine, seeded.patient) == []
    assert client.get("/patients").status_code == 200  # still signed in


def test_clinician_cannot_post_to_another_clinicians_patient(
    client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    csrf = sign_in(seeded.clinician)
    own = _limits_form(client.get(f"/patients/{seeded.patient}").text)
    response = client.post(
        f"/patients/{seeded.other_patient}/limits", data={**own, "csrf_token": csrf}
    )
    assert response.status_code == 403
    assert _limits(engine, seeded.other_patient) == []


# -- devices and audit -----------------------------------------------------------------------


def test_devices_page_shows_telemetry_and_revokes(
    client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    csrf = sign_in(seeded.admin)
    rows = {row[0]: row for row in table_cells(client.get("/devices").text, "devices")}
    device = rows[seeded.device]
    assert device[1] == "online"
    assert device[3] == "hwsim-1 fw 1.4.2"
    assert device[5] == seeded.patient_name  # the patient by name, never a UUID
    assert device[6] == "41.5 °C"
    assert device[7] == "3"
    assert client.post(f"/devices/{seeded.device}/revoke", data={}).status_code == 403
    response = client.post(f"/devices/{seeded.device}/revoke", data={"csrf_token": csrf})
    assert response.status_code == 303
    with Session(engine) as session:
        row = session.get(DeviceRow, seeded.device)
        assert row is not None and row.revoked
        audit = session.exec(select(AuditRow).where(AuditRow.resource == "device")).one()
        assert audit.actor_email == seeded.admin and audit.resource_id == seeded.device
    rows = {row[0]: row for row in table_cells(client.get("/devices").text, "devices")}
    assert rows[seeded.device][1] == "revoked"
    missing = client.post("/devices/no-such-device/revoke", data={"csrf_token": csrf})
    assert missing.status_code == 404


def test_devices_page_shows_the_versions_the_device_reports(
    client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    from resonera.common import topics
    from resonera.common.envelope import Envelope
    from resonera.device.version import agent_version
    from resonera.server.ingest import IngestProcessor, Received

    sign_in(seeded.admin)
    before = {row[0]: row for row in table_cells(client.get("/devices").text, "devices")}
    assert before[seeded.device][4] == "—"  # the seeded telemetry names no agent version
    # the keys of the device service's telemetry (tests/device/test_telemetry_versions.py)
    body = {"telemetry": {"agent_version": agent_version(), "firmware_version": "2.7.1"}}
    envelope = Envelope.create(device=seeded.device, seq=10**6, kind="metrics", body=body)
    received = Received(topics.up(seeded.device, "metrics"), envelope.to_bytes())
    IngestProcessor(engine).process([received])
    rows = {row[0]: row for row in table_cells(client.get("/devices").text, "devices")}
    assert rows[seeded.device][3] == "2.7.1"
    assert rows[seeded.device][4] == agent_version() != "0+unknown"
    assert rows[seeded.other_device][4] == "—"  # it sent no telemetry


def test_audit_log_filters(client: TestClient, sign_in: SignIn, seeded: Seeded) -> None:
    sign_in(seeded.clinician)
    client.get(f"/patients/{seeded.patient}")
    client.cookies.clear()
    sign_in(seeded.auditor)
    everything = table_cells(client.get("/audit").text, "audit")
    assert len(everything) >= 5
    mine = table_cells(client.get(f"/audit?actor={seeded.clinician}&action=read").text, "audit")
    assert mine and all(r[1] == seeded.clinician and r[3] == "read" for r in mine)
    today = now_utc().date()
    dated = client.get(f"/audit?from={today}&to={today}&actor=&action=")
    assert len(table_cells(dated.text, "audit")) == len(everything)
    past = client.get(f"/audit?to={today - timedelta(days=1)}")
    assert "No audit entries match." in past.text
    nobody = client.get("/audit?actor=nobody@example.org")
    assert "No user has the email" in nobody.text
    bad = client.get("/audit?from=yesterday")
    assert bad.status_code == 400 and "YYYY-MM-DD" in bad.text
    # The ends of the calendar are days like any other (the day after the last one is not).
    ends = client.get("/audit?from=0001-01-01&to=9999-12-31")
    assert ends.status_code == 200
    assert len(table_cells(ends.text, "audit")) == len(everything)


# -- pages in general ------------------------------------------------------------------------


def test_unknown_pages_are_html_for_browsers_and_json_for_the_api(client: TestClient) -> None:
    page = client.get("/no-such-page")
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "Not found" in page.text
    api = client.get("/api/v1/no-such-thing")
    assert api.status_code == 404
    assert api.json()["error"]["code"] == "not_found"
    plain = client.get("/no-such-page", headers={"Accept": "application/json"})
    assert plain.json()["error"]["code"] == "not_found"


def test_an_unexpected_error_is_a_page_without_details(app: FastAPI, client: TestClient) -> None:
    def broken() -> None:
        raise RuntimeError("secret detail")

    app.add_api_route("/broken-page", broken, include_in_schema=False)
    page = client.get("/broken-page")
    assert page.status_code == 500
    assert page.headers["content-type"].startswith("text/html")
    assert "An internal error was logged on the server." in page.text
    assert "secret detail" not in page.text and "Traceback" not in page.text


def test_pages_load_nothing_from_outside(
    client: TestClient, sign_in: SignIn, seeded: Seeded
) -> None:
    sign_in(seeded.clinician)
    page = client.get(f"/patients/{seeded.patient}")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)
    for asset in ("uPlot.iife.min.js", "uPlot.min.css", "charts.js", "dashboard.css"):
        response = client.get(f"/static/{asset}")
        assert response.status_code == 200, asset
        assert b"http://" not in response.content.replace(b"https://github.com/leeoniya/uPlot", b"")


def test_every_page_works_on_postgresql(
    pg_app: FastAPI, pg_engine: Engine, cipher: FieldCipher
) -> None:
    seeded = seed_world(pg_engine, cipher, days=30)
    with html_client(pg_app) as client:
        sign_in_as(client, seeded.clinician)
        assert client.get("/patients?sort=dose&dir=desc").status_code == 200
        url = f"/patients/{seeded.patient}"
        page = client.get(f"{url}?days=90")
        assert page.status_code == 200
        assert len(table_cells(page.text, "dose-table")) == 90
        saved = client.post(f"{url}/limits", data=_limits_form(page.text, max_level_dba="66"))
        assert saved.status_code == 303
        assert "pending on device" in client.get(saved.headers["location"]).text
        sign_in_as(client, seeded.admin)
        for path in ("/devices", "/audit?action=update", "/programs"):
            response = client.get(path)
            assert response.status_code == 200, (path, response.text[:300])
        audit = table_cells(client.get("/audit?action=update").text, "audit")
        assert [row[1] for row in audit] == [seeded.clinician]
