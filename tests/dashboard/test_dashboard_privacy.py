"""No patient data in the server's logs (issue 23, deliverable 7): a whole dashboard session in
Chromium against the real server (uvicorn on a loopback port, its access log on) while every
logger's records are captured; none of them names a seeded patient."""

from __future__ import annotations

import logging
import re

import pytest
from dashboard.helpers import Browsing, Seeded
from playwright.sync_api import expect

from resonera.server.runner import ACCESS_LOGGER, QueryStringDropped


def _seen_names(caplog: pytest.LogCaptureFixture, seeded: Seeded) -> list[str]:
    """Every captured line that carries a seeded patient's name, or a part of it."""
    parts = {
        word.lower() for name in (seeded.patient_name, seeded.other_name) for word in name.split()
    }
    lines = [record.getMessage() for record in caplog.records]
    return [line for line in lines if any(part in line.lower() for part in parts)]


def test_a_dashboard_session_leaves_no_patient_name_in_the_logs(
    browsing: Browsing, seeded: Seeded, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    b = browsing
    b.sign_in(seeded.clinician)
    expect(b.page.get_by_role("heading", name="Patients")).to_be_visible()
    # The search, as a clinician types it: the name may go in a query string (GET) or a body.
    b.page.get_by_label("Search by name").fill(seeded.patient_name)
    b.page.get_by_label("Search by name").press("Enter")
    b.page.wait_for_load_state()
    b.page.get_by_role("link", name=seeded.patient_name).first.click()
    expect(b.page.get_by_role("heading", level=1)).to_have_text(seeded.patient_name)
    b.page.get_by_role("link", name=re.compile("^Outcomes")).click()
    expect(b.page.get_by_role("heading", level=1)).to_contain_text(seeded.patient_name)
    for path in ("sessions.csv", "checkins.csv", "fhir.json"):
        got = b.page.request.get(f"{b.base_url}/patients/{seeded.patient}/{path}")
        assert got.status == 200, path
    b.page.request.get(f"{b.base_url}/patients?q={seeded.other_name}&sort=name")
    b.page.request.get(
        f"{b.base_url}/api/v1/patients?name={seeded.patient_name}", fail_on_status_code=False
    )

    access = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert len(access) >= 8, "uvicorn's access log wrote nothing: the test would prove nothing"
    assert any("/patients" in r.getMessage() for r in access)
    assert _seen_names(caplog, seeded) == []


def test_the_access_log_filter_keeps_the_path_and_drops_the_query() -> None:
    record = logging.LogRecord(
        ACCESS_LOGGER,
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/patients?q=Ada%20Lovelace&sort=name", "1.1", 200),
        None,
    )
    assert QueryStringDropped().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "GET /patients HTTP/1.1" 200'
