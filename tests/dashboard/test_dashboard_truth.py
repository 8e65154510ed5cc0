"""Issue 23: the dashboard's figures against values computed here, for a patient whose data is the
awkward kind: one day of data in a 30-day view, a silent session, a dose too small for one
decimal, 500 safety events with float32 readings. Every page the app lists, at 1280 and 390 px in
Chromium: no sideways scrolling, "Sign out" on screen; the charts' time axes span the period asked
for; the printed report read back from its PDF."""

from __future__ import annotations

import html
import math
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from dashboard.helpers import (
    READINGS,
    Browsing,
    Seeded,
    create_program,
    form_token,
    server_helpers,
    sign_in_as,
    table_cells,
)
from factories import ALPHA_TOML, event_body
from fastapi import FastAPI
from fastapi.testclient import TestClient
from playwright.sync_api import Page, expect
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.server.crypto import FieldCipher
from resonera.server.ingest import IngestProcessor, Received
from resonera.server.models import UserRow
from resonera.server.web.glance import EVENTS_PER_PAGE

NAME = "Mary Somerville"
DEVICE = "dev-c"
#: A dose that is there but is 0.004 % of the allowance: one decimal would print "0.0 %".
SMALL_DOSE = 0.00004
WARNINGS, FAULTS = 480, 20
NO_PROMPTS = "no spoken prompts on this device"
#: A float32 reading as a device sends it.
CURRENT = 0.30000001192092896


@dataclass(frozen=True)
class Sparse:
    patient: str
    day: date


def cells(page: str, table_id: str) -> list[list[str]]:
    """``table_cells`` with the entities read (``&lt;`` is "<")."""
    return [[html.unescape(cell) for cell in row] for row in table_cells(page, table_id)]


def _ear(dose: float, seconds: float) -> float:
    """LAeq at the ear by definition: 80 dB(A) for 40 h is the whole weekly allowance."""
    return 80 + 10 * math.log10(dose / (seconds / (40 * 3600)))


@pytest.fixture
def sparse(engine: Engine, cipher: FieldCipher, seeded: Seeded) -> Sparse:
    """The first clinician's third patient: yesterday's two sessions (one silent) and 500
    safety events, nothing else."""
    helpers = server_helpers()
    with Session(engine) as session:
        clinician = session.exec(select(UserRow.id).where(UserRow.email == seeded.clinician)).one()
    patient = helpers.add_patient(engine, cipher, clinician, NAME)
    now = datetime.now(UTC)
    helpers.add_device(engine, DEVICE, patient_id=patient, since=now - timedelta(days=400))
    day = now.date() - timedelta(days=1)
    bodies: list[tuple[topics.UpKind, dict[str, Any]]] = [
        (
            "session",
            helpers.session_body(
                start=datetime.combine(day, time(9), UTC), minutes=10, dose_fraction=SMALL_DOSE
            ),
        ),
        (
            "session",
            helpers.session_body(
                start=datetime.combine(day, time(10), UTC),
                minutes=10,
                dose_fraction=0.0,
                rms_dbfs=-200.0,
                peak_dbfs=-200.0,
            ),
        ),
    ]
    # The device's telemetry, as its status() reports: it cannot speak the check-in questions.
    telemetry = {"safety_state": "idle", "controls": {"paused": False, "checkin": NO_PROMPTS}}
    bodies.append(("metrics", {"telemetry": telemetry}))
    readings = {**READINGS, "supply_current_a": CURRENT}
    for k in range(WARNINGS + FAULTS):
        at = datetime.combine(day, time(12), UTC) + timedelta(seconds=k)
        kind = "fault" if k < FAULTS else "warning"
        bodies.append(
            ("event", event_body(at=at.isoformat(), type=kind, cause=kind, readings=readings))
        )
    received = [
        Received(
            topics.up(DEVICE, kind),
            Envelope.create(device=DEVICE, seq=seq, kind=kind, body=body).to_bytes(),
        )
        for seq, (kind, body) in enumerate(bodies)
    ]
    IngestProcessor(engine).process(received)
    return Sparse(patient, day)


def test_figures_of_a_sparse_patient(
    client: TestClient, seeded: Seeded, sparse: Sparse, engine: Engine
) -> None:
    sign_in_as(client, seeded.clinician)
    page = client.get(f"/patients/{sparse.patient}?days=30").text
    assert "-200" not in page and "−200" not in page
    silent, sounding = cells(page, "sessions")  # newest first
    assert silent[3:5] == ["silent", "silent"]
    assert silent[5] == "0.0 %"
    assert sounding[3] == f"{_ear(SMALL_DOSE, 600):.1f} dB(A)"
    assert sounding[4] == "-20.0 dBFS / -6.0 dBFS"
    assert sounding[5] == "< 0.01 %"
    # The glance: the week's dose, the open issues needing attention first.
    assert re.search(r'id="dose-rolling">&lt; 0.01 %<', page)
    safety = page.split('id="glance-safety"', 1)[1].split("</article>", 1)[0]
    assert f"{WARNINGS} × warning" in safety and f"{FAULTS} × fault" in safety
    assert safety.index("warning") < safety.index("fault")  # the most first
    assert f"{DEVICE} cannot ask the check-in questions: {NO_PROMPTS}." in page
    kinds = cells(page, "event-kinds")
    assert [row[:2] for row in kinds] == [["warning", str(WARNINGS)], ["fault", str(FAULTS)]]
    # Paged: the first page and the last, readings rounded with their units.
    events = cells(page, "events")
    assert len(events) == EVENTS_PER_PAGE
    assert "supply current 0.30 A" in events[0][3]
    assert str(CURRENT) not in page
    pages = -(-(WARNINGS + FAULTS) // EVENTS_PER_PAGE)
    assert f"page 1 of {pages}" in page
    last = client.get(f"/patients/{sparse.patient}?days=30&events={pages}").text
    newest_first = ["warning"] * WARNINGS + ["fault"] * FAULTS
    assert [row[1] for row in cells(last, "events")] == newest_first[
        (pages - 1) * EVENTS_PER_PAGE :
    ]
    # The period's first 29 days have no dose: they are not rows above the sessions.
    assert page.index('id="sessions"') < page.index('id="dose-table"')

    outcomes = client.get(f"/patients/{sparse.patient}/outcomes?days=30").text
    assert "-200" not in outcomes
    [day] = cells(outcomes, "exposure")
    # The day's level is of the session that sounded (the silent one is no −200 in the mean).
    assert day == [
        sparse.day.isoformat(),
        "2",
        "2",
        "20 min 00 s",
        "< 0.01 %",
        f"{_ear(SMALL_DOSE, 1200):.1f} dB(A)",
        "-20.0 dBFS",
        "-6.0 dBFS",
    ]

    patients = client.get("/patients").text
    attention = patients.split('id="attention"', 1)[1].split("</section>", 1)[0]
    assert NAME in attention and f"{FAULTS} faults in 7 days" in attention


# -- every page, two widths ---------------------------------------------------------------------

#: Not pages: API documents, downloads, audio.
_NOT_PAGES = re.compile(r"^/(docs|redoc|openapi)|\.(csv|json|wav)$")


def page_paths(app: FastAPI) -> list[str]:
    """Every GET path of the app that is a page (the dashboard's routes are left out of the API's
    schema), its parameters left in."""

    def walk(routes: Any, prefix: str = "") -> Iterator[str]:
        for route in routes:
            if hasattr(route, "original_router"):  # an included router (FastAPI ≥ 0.160)
                yield from walk(route.original_router.routes, prefix + route.include_context.prefix)
            elif "GET" in (getattr(route, "methods", None) or ()) and not getattr(
                route, "include_in_schema", True
            ):
                yield prefix + route.path

    return sorted({p for p in walk(app.routes) if not _NOT_PAGES.search(p)})


def _overflow(page: Page) -> int:
    return int(page.evaluate("document.documentElement.scrollWidth"))


def test_every_page_fits_a_phone_and_a_desktop(
    browsing: Browsing, app: FastAPI, client: TestClient, seeded: Seeded, sparse: Sparse
) -> None:
    b = browsing
    csrf = form_token(client.get(sign_in_as(client, seeded.clinician)).text)
    program = create_program(client, csrf, ALPHA_TOML)
    values = {"patient_id": sparse.patient, "device_id": DEVICE, "program_id": program}
    paths = page_paths(app)
    assert {"/patients/{patient_id}", "/patients/{patient_id}/report", "/login"} <= set(paths)
    wide: list[str] = []
    broken: list[str] = []
    for width in (1280, 390):
        b.page.set_viewport_size({"width": width, "height": 800})
        for role in (seeded.clinician, seeded.admin, seeded.auditor):
            b.page.context.clear_cookies()
            b.sign_in(role)
            # Every page, and the error pages (a role's 403s come with the pages it may not see).
            for template in [*paths, "/no-such-page"]:
                path = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], template)
                response = b.goto(path)
                if response is None or response.status >= 500:
                    broken.append(f"{path} as {role}")
                shown = _overflow(b.page)
                if shown > width:
                    wide.append(f"{path} as {role} at {width} px: {shown} px wide")
                signout = b.page.get_by_role("button", name="Sign out")
                if signout.count():
                    box = signout.bounding_box()
                    assert box is not None and box["x"] + box["width"] <= width, (path, width)
        for name, path in (
            ("patients", "/patients"),
            ("patient", f"/patients/{sparse.patient}"),
            ("outcomes", f"/patients/{sparse.patient}/outcomes"),
            ("report", f"/patients/{sparse.patient}/report"),
            ("cohort", "/cohort"),
        ):
            b.page.context.clear_cookies()
            b.sign_in(seeded.clinician)
            b.goto(path)
            b.shot(f"{name}-{width}")
            b.shot_fold(f"{name}-{width}-fold")
        b.goto(f"/patients/{sparse.patient}")
        b.shot_of("#events tbody tr:first-child", f"event-{width}")
        b.goto("/login")
        b.page.context.clear_cookies()
        b.goto("/login")
        assert _overflow(b.page) <= width
        b.shot(f"login-{width}")
    assert broken == []
    assert wide == []
    # Pages another role may not see answer 403 (Chromium logs each); no script failed.
    refused = re.compile(r"^Failed to load resource: .* status of 40[345]")
    assert [e for e in b.console_errors if not refused.match(e)] == []


def test_charts_span_the_period_asked_for(
    browsing: Browsing, seeded: Seeded, sparse: Sparse
) -> None:
    b = browsing
    b.sign_in(seeded.clinician)
    today = datetime.now(UTC).date()
    first = datetime.combine(today - timedelta(days=29), time(), UTC).timestamp()
    last = datetime.combine(today, time(), UTC).timestamp()
    for path, selector in (
        (f"/patients/{sparse.patient}?days=30", "#dose-chart"),
        (f"/patients/{sparse.patient}/outcomes?days=30", '.chart[data-table="exposure"]'),
    ):
        b.goto(path)
        chart = b.page.locator(selector)
        expect(chart.locator("canvas")).to_have_count(1)
        expect(chart).to_have_attribute("data-xmax", re.compile(r"^\d"))
        xmin = float(chart.get_attribute("data-xmin") or "nan")
        xmax = float(chart.get_attribute("data-xmax") or "nan")
        # The period, give or take the half day that shows the end days' bars whole.
        assert first - 43200 <= xmin <= first, path
        assert last <= xmax <= last + 43200, path
    b.shot("exposure-30-days")


def _printed_report(b: Browsing, patient: str) -> tuple[Path, str]:
    """The patient's report as Chromium prints it (A4), and its text read back, on one line."""
    b.goto(f"/patients/{patient}")
    b.page.get_by_role("link", name="Report to print").click()
    expect(b.page.get_by_role("heading", level=1)).to_have_text(NAME)
    b.shot("report")
    pdf = b.artifacts / f"{b.test_name}.pdf"
    b.page.pdf(path=str(pdf), format="A4", print_background=True)
    text = subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True, text=True
    ).stdout
    return pdf, " ".join(text.split())


def test_the_report_prints_to_a_pdf_that_reads_back(
    browsing: Browsing, seeded: Seeded, sparse: Sparse
) -> None:
    b = browsing
    b.sign_in(seeded.clinician)
    pdf, flat = _printed_report(b, sparse.patient)
    today = datetime.now(UTC).date()
    assert NAME in flat
    assert f"Period: {(today - timedelta(days=29)).isoformat()} to {today.isoformat()}" in flat
    assert "Sessions in the period 2, of which 2 completed; 20 min 00 s played" in flat
    assert f"{_ear(SMALL_DOSE, 600):.1f} dB(A)" in flat and "silent" in flat
    assert "< 0.01 %" in flat
    assert f"warning {WARNINGS}" in flat and f"fault {FAULTS}" in flat
    # No name set: the email signs.
    assert re.search(r"Prepared by clinician@example\.org \(clinician\) · exported \d{4}-", flat)
    for heading in ("Dose per day", "Sessions", "Adherence per week", "Outcomes", "Safety events"):
        assert heading in flat
    # Nothing of the screen's navigation is printed.
    assert "Sign out" not in flat and "Cohort" not in flat
    pages = subprocess.run(["pdfinfo", str(pdf)], check=True, capture_output=True, text=True)
    assert int(re.search(r"Pages:\s+(\d+)", pages.stdout).group(1)) >= 1  # type: ignore[union-attr]


def test_the_report_is_signed_with_the_name_an_admin_gave_the_clinician(
    browsing: Browsing, seeded: Seeded, sparse: Sparse
) -> None:
    b = browsing
    b.sign_in(seeded.admin)
    b.goto("/admin/users")
    b.page.get_by_label(f"Name of {seeded.clinician}", exact=True).fill("Dr Mary Fairfax")
    b.page.get_by_role("button", name=f"Save the name of {seeded.clinician}").click()
    expect(b.page.get_by_role("status")).to_contain_text("The name is saved")
    expect(b.page.get_by_label(f"Name of {seeded.clinician}", exact=True)).to_have_value(
        "Dr Mary Fairfax"
    )
    b.page.set_viewport_size({"width": 390, "height": 844})
    b.shot("users-390")
    b.page.set_viewport_size({"width": 1280, "height": 900})
    b.shot("users-1280")
    b.page.context.clear_cookies()
    b.sign_in(seeded.clinician)
    _pdf, flat = _printed_report(b, sparse.patient)
    assert re.search(r"Prepared by Dr Mary Fairfax \(clinician\) · exported \d{4}-\d\d-\d\d", flat)
    assert seeded.clinician not in flat  # the name signs, not the email
    assert b.console_errors == []


def test_a_check_in_waiting_for_its_answer_is_said(
    client: TestClient, seeded: Seeded, sparse: Sparse, engine: Engine
) -> None:
    """The device's status says the question it waits on (``Panel.describe``): so does the page."""
    telemetry = {
        "safety_state": "idle",
        "controls": {"paused": False, "checkin_waiting": "calm (before the session)"},
    }
    later = Envelope.create(
        device=DEVICE, seq=10_000, kind="metrics", body={"telemetry": telemetry}
    )
    IngestProcessor(engine).process([Received(topics.up(DEVICE, "metrics"), later.to_bytes())])
    sign_in_as(client, seeded.clinician)
    page = client.get(f"/patients/{sparse.patient}").text
    assert (
        f"{DEVICE} was waiting for the person to answer a check-in question "
        "(calm (before the session)) at its last report." in page
    )
    assert "cannot ask the check-in questions" not in page  # the newer report said nothing of it
