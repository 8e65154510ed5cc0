"""The admin's pages and the API docs in headless Chromium against the real server (issue 23,
deliverables 4 and 6), as an admin new to the dashboard uses them, at 1280 and 390 px: nothing
wider than the screen, every page leaves a screenshot. The API docs load with every request
kept to the server itself (anything else aborts and fails the test) and only when signed in."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from dashboard.helpers import PASSWORD, Browsing, Seeded
from playwright.sync_api import Route, ViewportSize, expect
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.server.models import AssignmentRow, DeviceRow, UserRow

PHONE: ViewportSize = {"width": 390, "height": 844}
DESK: ViewportSize = {"width": 1280, "height": 900}


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The server's time zone is Europe/Berlin (UTC+1 in winter)."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _overflow(b: Browsing) -> int:
    """How far the page is wider than the window, in CSS pixels (0: it fits)."""
    width: int = b.page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    return width


def _both_widths(b: Browsing, name: str) -> None:
    """A screenshot at 1280 px and at 390 px; at neither is the page wider than the window."""
    for label, size in (("1280", DESK), ("390", PHONE)):
        b.page.set_viewport_size(size)
        assert _overflow(b) == 0, f"{name} overflows at {label} px"
        b.shot(f"{name}-{label}")
    b.page.set_viewport_size(DESK)


@pytest.mark.usefixtures("berlin")
def test_an_admin_adds_a_patient_assigns_a_device_and_revokes_another(
    browsing: Browsing, seeded: Seeded, engine: Engine
) -> None:
    with Session(engine) as db:
        db.add(DeviceRow(id="dev-new", created_at=datetime.now(UTC)))
        db.commit()
    b = browsing
    b.sign_in(seeded.admin)
    b.page.get_by_role("navigation", name="Main").get_by_role("link", name="Patients").click()
    expect(b.page.get_by_role("heading", level=1)).to_have_text("Patients")
    expect(b.page.locator("#admin-patients")).to_contain_text(seeded.patient_name)
    b.page.get_by_label("Name").fill("Katherine Johnson")
    b.page.get_by_label("Date of birth").fill("1918-08-26")
    b.page.get_by_label("Clinician").select_option(label=seeded.clinician)
    b.page.get_by_role("button", name="Add patient").click()
    expect(b.page.get_by_role("status")).to_have_text("The patient was added.")
    expect(b.page.get_by_role("heading", level=1)).to_have_text("Katherine Johnson")
    _both_widths(b, "admin-patient")
    b.goto("/admin/patients")
    _both_widths(b, "admin-patients")

    b.goto("/devices")
    b.page.get_by_role("link", name="Assign dev-new to a patient").click()
    expect(b.page.get_by_text("server's time zone (CET)")).to_be_visible()
    b.page.get_by_label("Patient").select_option(label="Katherine Johnson (born 1918-08-26)")
    b.page.get_by_label("First day").fill("2026-12-06")
    b.page.get_by_label("Last day (optional)").fill("2027-01-31")
    _both_widths(b, "assign")
    b.page.get_by_role("button", name="Assign dev-new").click()
    expect(b.page.get_by_role("status")).to_have_text(
        "Device dev-new is assigned to Katherine Johnson from 2026-12-06 to 2027-01-31."
    )
    with Session(engine) as db:
        row = db.exec(select(AssignmentRow).where(AssignmentRow.device_id == "dev-new")).one()
    assert row.valid_from == datetime(2026, 12, 5, 23, tzinfo=UTC)  # midnight in Berlin
    assert row.valid_to == datetime(2027, 1, 31, 23, tzinfo=UTC)  # the end of the last day
    patients = b.page.locator("#devices tbody tr")
    expect(patients.filter(has_text=seeded.device)).to_contain_text(seeded.patient_name)
    _both_widths(b, "devices")

    b.page.get_by_role("link", name=f"Revoke {seeded.other_device}").click()
    expect(b.page.get_by_role("heading", level=1)).to_have_text(f"Revoke {seeded.other_device}?")
    _both_widths(b, "revoke-question")
    with Session(engine) as db:
        device = db.get(DeviceRow, seeded.other_device)
        assert device is not None and not device.revoked  # asking changed nothing
    b.page.get_by_role("button", name=f"Revoke {seeded.other_device}").click()
    # No issuing CA on this server: the certificate is left to revoke by hand, a failure.
    failure = b.page.get_by_role("alert")
    expect(failure).to_contain_text(f"Device {seeded.other_device} is revoked")
    expect(failure).to_contain_text("could not revoke all its certificates")
    assert "error" in (failure.get_attribute("class") or "")
    colour = failure.evaluate("el => getComputedStyle(el).color")
    assert colour == "rgb(154, 52, 18)"  # the warning colour, not the success green
    _both_widths(b, "devices-revoke-failed")
    assert b.console_errors == []


def test_an_admin_adds_and_locks_an_account(
    browsing: Browsing, seeded: Seeded, engine: Engine
) -> None:
    b = browsing
    b.sign_in(seeded.admin)
    b.page.get_by_role("link", name="Users").click()
    b.page.get_by_label("Email").fill("new.clinician@example.org")
    b.page.get_by_label("Role").select_option("clinician")
    b.page.get_by_label("Password", exact=True).fill("a long enough password")
    b.page.get_by_role("button", name="Add account").click()
    expect(b.page.get_by_role("status")).to_contain_text("new.clinician@example.org: The account")
    b.page.get_by_role("button", name="Lock new.clinician@example.org").click()
    expect(b.page.get_by_role("status")).to_contain_text("The account is locked")
    row = b.page.locator("#users tbody tr").filter(has_text="new.clinician@example.org")
    expect(row).to_contain_text("locked")
    with Session(engine) as db:
        user = db.exec(select(UserRow).where(UserRow.email == "new.clinician@example.org")).one()
        assert not user.active and user.role == "clinician"
    _both_widths(b, "users")
    assert b.console_errors == []


def test_the_api_docs_load_from_the_server_alone_for_signed_in_people(
    browsing: Browsing, seeded: Seeded
) -> None:
    b = browsing
    served = urlsplit(b.base_url).netloc
    outside: list[str] = []

    def only_this_server(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).netloc == served or url.startswith("data:"):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    b.page.route("**/*", only_this_server)
    b.goto("/docs")
    expect(b.page).to_have_url(re.compile(r"/login\?next=%2Fdocs$"))  # signed out: sign in first
    b.page.get_by_label("Email").fill(seeded.clinician)
    b.page.get_by_label("Password").fill(PASSWORD)
    b.page.get_by_role("button", name="Sign in").click()
    b.page.wait_for_url(re.compile(r"/docs$"))
    expect(b.page.locator(".swagger-ui .info .title")).to_contain_text("Resonera server")
    expect(b.page.locator(".opblock-tag-section").first).to_be_visible()
    expect(b.page.get_by_text("/api/v1/patients/{patient_id}/sessions").first).to_be_attached()
    _both_widths(b, "api-docs")
    b.page.screenshot(path=str(b.artifacts / f"{b.test_name}-api-docs-top.png"))  # the first screen
    assert outside == []
    assert b.console_errors == []
