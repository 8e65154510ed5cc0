"""Helpers of the dashboard tests and benchmark.

``seed_world``: users of every role with a known password, two clinicians with a patient and a
device each, and ``days`` of sessions, a safety event and telemetry for the first patient, all
stored through ``IngestProcessor`` as devices send them (so ``dose_daily`` is ingest's own)."""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
from factories import OUTCOME_QUESTIONS, OutcomePlan, event_body, outcome_plan
from fastapi import FastAPI
from fastapi.testclient import TestClient
from playwright.sync_api import Page, Response
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.server.crypto import FieldCipher, HmacSigner
from resonera.server.desired import DesiredService, MemoryPublisher
from resonera.server.ingest import IngestProcessor, Received
from resonera.server.models import ClinicianPatientRow, DeviceRow, DoseDailyRow, UserRow
from resonera.server.outcomes import store_checkins
from resonera.server.schemas import DesiredIn
from resonera.server.security import hash_password

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
PASSWORD = "correct horse battery staple"
READINGS: dict[str, Any] = {
    "amp_temp_c": 71.5,
    "supply_current_a": 0.42,
    "output_vrms": 0.8,
    "dc_offset_mv": 1.0,
    "ear_spl_db": 0.0,
    "clip": False,
    "headphones": True,
    "muted": True,
    "armed": False,
    "fault_code": 3,
}
_HASH: list[str] = []


def server_helpers() -> ModuleType:
    """``tests/server/conftest.py`` as a module (``add_patient``, ``add_device``, ``session_body``
    and its fixtures); a plain import would find the ``server`` package of the source tree."""
    name = "resonera_server_test_helpers"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "server" / "conftest.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@dataclass(frozen=True)
class Seeded:
    clinician: str
    other_clinician: str
    admin: str
    auditor: str
    patient: str
    other_patient: str
    device: str
    other_device: str
    patient_name: str
    other_name: str

    def dose_by_day(self, engine: Engine) -> dict[date, float]:
        with Session(engine) as session:
            rows = session.exec(
                select(DoseDailyRow).where(DoseDailyRow.patient_id == self.patient)
            ).all()
            return {row.day: row.dose_fraction for row in rows}


def _user(session: Session, email: str, role: str) -> int:
    if not _HASH:  # argon2id is slow on purpose: once per process
        _HASH.append(hash_password(PASSWORD))
    user = UserRow(email=email, password_hash=_HASH[0], role=role, created_at=datetime.now(UTC))
    session.add(user)
    session.flush()
    assert user.id is not None
    return user.id


def daily_dose(days_ago: int) -> float:
    """The seeded dose of one session ``days_ago`` days back (varies, so days differ)."""
    return round(0.01 * (1 + days_ago % 7), 4)


def seed_world(
    engine: Engine,
    cipher: FieldCipher,
    *,
    days: int = 90,
    sessions_per_day: int = 2,
    now: datetime | None = None,
) -> Seeded:
    helpers = server_helpers()
    now = now or datetime.now(UTC)
    with Session(engine) as session:
        clinician = _user(session, "clinician@example.org", "clinician")
        other = _user(session, "other@example.org", "clinician")
        _user(session, "admin@example.org", "admin")
        _user(session, "auditor@example.org", "auditor")
        session.commit()
    patient = helpers.add_patient(engine, cipher, clinician, "Ada Lovelace")
    other_patient = helpers.add_patient(engine, cipher, other, "Grace Hopper")
    since = now - timedelta(days=days + 30)
    helpers.add_device(engine, "dev-a", patient_id=patient, since=since)
    helpers.add_device(engine, "dev-b", patient_id=other_patient, since=since)

    messages: list[Envelope] = []
    seq = 0

    def put(device: str, kind: topics.UpKind, body: dict[str, Any]) -> None:
        nonlocal seq
        messages.append(Envelope.create(device=device, seq=seq, kind=kind, body=body))
        seq += 1

    today = now.date()
    for days_ago in range(1, days):
        midnight = datetime.combine(today - timedelta(days=days_ago), time(8), UTC)
        for k in range(sessions_per_day if days_ago % 4 else 0):
            outcome: dict[str, Any] = (
                {"outcome": "stopped", "reason": "the person stopped it"} if k == 1 else {}
            )
            if days_ago == 2 and k == 0:
                outcome["underruns"] = 3
            put(
                "dev-a",
                "session",
                helpers.session_body(
                    start=midnight + timedelta(hours=2 * k),
                    minutes=20,
                    dose_fraction=daily_dose(days_ago),
                    hardware_board="hwsim-1 fw 1.4.2",
                    **outcome,
                ),
            )
    put(
        "dev-a",
        "event",
        event_body(
            at=(now - timedelta(hours=3)).isoformat(), cause="amplifier hot", readings=READINGS
        ),
    )
    put("dev-a", "metrics", {"telemetry": {"outbox_depth": 3, "amp_temp_c": 41.5}})
    put(
        "dev-b",
        "session",
        helpers.session_body(
            start=datetime.combine(today - timedelta(days=1), time(9), UTC),
            minutes=10,
            dose_fraction=0.05,
        ),
    )
    received = [Received(topics.up(m.device, m.kind), m.to_bytes()) for m in messages]
    received.append(
        Received(topics.status("dev-a"), b"online")
    )  # presence, as the broker relays it
    IngestProcessor(engine).process(received)
    with Session(engine) as session:
        assert session.get(DeviceRow, "dev-a") is not None
        assert session.get(ClinicianPatientRow, (clinician, patient)) is not None
    return Seeded(
        clinician="clinician@example.org",
        other_clinician="other@example.org",
        admin="admin@example.org",
        auditor="auditor@example.org",
        patient=patient,
        other_patient=other_patient,
        device="dev-a",
        other_device="dev-b",
        patient_name="Ada Lovelace",
        other_name="Grace Hopper",
    )


def seed_outcomes(engine: Engine, seeded: Seeded, today: date) -> OutcomePlan:
    """The first patient's check-in questions (``factories.OUTCOME_QUESTIONS``, 5 sessions a
    week prescribed, as version 1 by their clinician) and ``factories.outcome_plan``'s sessions
    and check-ins, stored as devices send them."""
    plan = outcome_plan(seeded.device, today, server_helpers().session_body)
    with Session(engine) as session:
        clinician = session.exec(select(UserRow.id).where(UserRow.email == seeded.clinician)).one()
        assert clinician is not None
        body = DesiredIn.model_validate(
            {"profile": {"checkins": OUTCOME_QUESTIONS}, "sessions_per_week": 5}
        )
        DesiredService(HmacSigner(b"seed"), MemoryPublisher()).set(
            session,
            patient_id=seeded.patient,
            expected_version=0,
            values=body.model_dump(),
            user_id=clinician,
            now=datetime.now(UTC),
        )
        session.commit()
    envelopes = [
        Envelope.create(device=seeded.device, seq=10**5 + i, kind="session", body=body)
        for i, body in enumerate(plan.bodies)
    ]
    result = IngestProcessor(engine).process(
        [Received(topics.up(seeded.device, "session"), e.to_bytes()) for e in envelopes]
    )
    assert result.stored == len(plan.bodies)
    with engine.begin() as conn:
        store_checkins(conn, seeded.device, seeded.patient, plan.records, now=datetime.now(UTC))
    return plan


def report_applied(engine: Engine, device: str, version: int) -> None:
    """The device says it applied desired-state ``version`` (a ``reported`` message)."""
    envelope = Envelope.create(
        device=device,
        seq=10**6 + version,
        kind="reported",
        body={"desired_version": version, "status": "applied"},
    )
    IngestProcessor(engine).process([Received(topics.up(device, "reported"), envelope.to_bytes())])


def create_program(
    client: TestClient, csrf: str, document: str, fmt: str = "toml", tags: str = ""
) -> str:
    """Add a program to the library through its page's form (``tags`` comma-separated); its id."""
    response = client.post(
        "/programs",
        data={"document": document, "format": fmt, "tags": tags, "csrf_token": csrf},
    )
    assert response.status_code == 303, response.text
    found = re.match(r"/programs/([0-9a-f-]+)\?saved=1$", response.headers["location"])
    assert found
    return found.group(1)


def form_token(html: str) -> str:
    """The CSRF token of the first form on a page."""
    found = CSRF.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def html_client(app: FastAPI) -> TestClient:
    """A browser-like client: asks for HTML, keeps cookies, does not follow redirects."""
    return TestClient(
        app, raise_server_exceptions=False, follow_redirects=False, headers={"Accept": "text/html"}
    )


def post_login(
    client: TestClient, email: str, page: str | None, *, password: str = PASSWORD, **more: str
) -> httpx.Response:
    """Post the sign-in form as a browser does from ``page``, the login page's HTML (None: without
    its CSRF token); ``more`` are further fields (``next``)."""
    data = {"email": email, "password": password, **more}
    if page is not None:
        data["csrf_token"] = form_token(page)
    response: httpx.Response = client.post("/login", data=data)
    return response


def sign_in_as(client: TestClient, email: str) -> str:
    """Sign ``email`` in on a browser-like TestClient (another person's cookie dropped first);
    returns where the sign-in sends them."""
    client.cookies.clear()
    response = post_login(client, email, client.get("/login").text)
    assert response.status_code == 303, response.text
    location: str = response.headers["location"]
    return location


def table_cells(html: str, table_id: str) -> list[list[str]]:
    """The text of each body row's cells of table ``table_id`` (tags and extra spaces dropped)."""
    table = html.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
    body = table.split("<tbody>", 1)[1]
    cell = re.compile(r"<t[hd][^>]*>(.*?)</t[hd]>", re.S)
    return [
        [" ".join(re.sub(r"<[^>]+>", " ", text).split()) for text in cell.findall(row)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)
    ]


@dataclass
class Browsing:
    """A Chromium page on the live server; ``shot`` saves a screenshot in the artifacts folder."""

    page: Page
    base_url: str
    artifacts: Path
    test_name: str
    console_errors: list[str]

    def goto(self, path: str) -> Response | None:
        return self.page.goto(self.base_url + path)

    def shot(self, name: str) -> Path:
        path = self.artifacts / f"{self.test_name}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def shot_fold(self, name: str) -> Path:
        """A screenshot of what the window shows before any scrolling (above the fold)."""
        path = self.artifacts / f"{self.test_name}-{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def shot_of(self, selector: str, name: str) -> Path:
        """A screenshot of one part of the page (the whole page of a patient is long)."""
        path = self.artifacts / f"{self.test_name}-{name}.png"
        self.page.locator(selector).screenshot(path=str(path))
        return path

    def sign_in(self, email: str) -> None:
        self.goto("/login")
        self.page.get_by_label("Email").fill(email)
        self.page.get_by_label("Password").fill(PASSWORD)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_load_state()
