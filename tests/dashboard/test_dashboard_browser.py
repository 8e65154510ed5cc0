"""The dashboard in headless Chromium (Playwright) against the real server on a loopback port, as a
clinician, an admin and an auditor use it. Every page visited leaves a screenshot in the artifacts
folder (see ``conftest.py``)."""

from __future__ import annotations

import re
from datetime import date

from dashboard.helpers import Browsing, Seeded, report_applied
from dashboard.test_dashboard_programs import channel_peaks
from factories import ALPHA_TOML as ALPHA
from playwright.sync_api import expect
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from resonera.server.desired import MemoryPublisher
from resonera.server.models import DeviceDesiredRow, PatientConfigRow

#: Load an <audio> element's source and resolve with its duration (what pressing play fetches).
LOAD_AUDIO = """el => new Promise((resolve, reject) => {
    el.addEventListener("loadedmetadata", () => resolve(el.duration), {once: true});
    el.addEventListener("error", () => reject(new Error("audio error " + el.error.code)));
    el.load();
})"""


def _dose_table(b: Browsing) -> dict[date, tuple[str, str]]:
    """The dose table as the page has it (folded under the chart): day → (dose that day,
    allowance)."""
    out: dict[date, tuple[str, str]] = {}
    for row in b.page.locator("#dose-table tbody tr").all():
        day = date.fromisoformat((row.locator("th").text_content() or "").strip())
        cells = row.locator("td").all_text_contents()
        out[day] = (cells[0].strip(), cells[2].strip())
    return out


def test_clinician_reads_the_dose_chart_of_a_seeded_patient(
    browsing: Browsing, seeded: Seeded, engine: Engine
) -> None:
    b = browsing
    b.sign_in(seeded.clinician)
    expect(b.page).to_have_url(re.compile(r"/patients$"))
    expect(b.page.get_by_role("heading", name="Patients")).to_be_visible()
    rows = b.page.locator("#patients-table tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(seeded.patient_name)
    expect(b.page.get_by_text(seeded.other_name)).to_have_count(0)
    b.shot("patients")

    # Ada is on the attention list too (the seeded fault): her line in the table.
    expect(b.page.locator("#attention")).to_contain_text("1 fault in 7 days")
    rows.first.get_by_role("link", name=seeded.patient_name).click()
    expect(b.page.get_by_role("heading", level=1)).to_have_text(seeded.patient_name)
    b.page.get_by_role("link", name="90 days").click()
    expect(b.page.locator("#dose-table tbody tr")).to_have_count(90)
    # The chart is drawn from the table: one point per day, on a canvas.
    expect(b.page.locator("#dose-chart canvas")).to_have_count(1)
    assert b.page.locator("#dose-chart").get_attribute("data-points") == "90"
    shown = _dose_table(b)
    stored = seeded.dose_by_day(engine)
    assert stored, "the seed stored no dose"
    assert len(shown) == 90
    for day, (dose, allowance) in shown.items():
        assert dose == f"{stored.get(day, 0.0) * 100:.1f} %", day
        assert allowance == "100.0 %"
    assert set(stored) <= set(shown)  # every seeded day is on the page
    expect(b.page.locator("#sessions tbody tr").first).to_contain_text("calm-40hz")
    expect(b.page.locator("#events")).to_contain_text("amplifier hot")
    expect(b.page.locator("#events")).to_contain_text("71.5")
    b.shot("patient-90-days")
    assert b.console_errors == []


def test_edit_a_limit_and_see_it_pending_on_the_device(
    browsing: Browsing, seeded: Seeded, engine: Engine, publisher: MemoryPublisher
) -> None:
    b = browsing
    b.sign_in(seeded.clinician)
    b.goto(f"/patients/{seeded.patient}")
    status = b.page.locator("#config-status")
    expect(status).to_contain_text("nothing has been set")
    b.page.get_by_label("Maximum level (dBA)").fill("68")
    b.page.get_by_role("button", name=re.compile("Save as version 1")).click()
    expect(b.page.get_by_role("status").first).to_contain_text("Saved as version 1")
    expect(status).to_contain_text("pending on device")
    expect(status).to_contain_text(seeded.device)
    expect(b.page.get_by_label("Maximum level (dBA)")).to_have_value("68.0")
    b.shot("limits-pending")
    with Session(engine) as session:
        [config] = session.exec(
            select(PatientConfigRow).where(PatientConfigRow.patient_id == seeded.patient)
        ).all()
        desired = session.get(DeviceDesiredRow, seeded.device)
    assert config.limits["max_level_dba"] == 68.0
    assert desired is not None and seeded.device in publisher.documents

    report_applied(engine, seeded.device, desired.version)
    b.page.reload()
    expect(status).to_contain_text("applied on device")
    b.shot("limits-applied")

    # The browser checks the number ranges itself; the server checks everything again.
    b.page.get_by_label("Profile (JSON)").fill("{not json")
    b.page.get_by_role("button", name=re.compile("Save as version 2")).click()
    expect(b.page.get_by_role("alert")).to_contain_text("profile: not valid JSON")
    b.shot("limits-invalid")
    with Session(engine) as session:
        versions = session.exec(
            select(col(PatientConfigRow.version)).where(
                PatientConfigRow.patient_id == seeded.patient
            )
        ).all()
    assert list(versions) == [1]


def test_clinician_cannot_open_another_clinicians_patient(
    browsing: Browsing, seeded: Seeded
) -> None:
    b = browsing
    b.sign_in(seeded.clinician)
    response = b.goto(f"/patients/{seeded.other_patient}")
    assert response is not None and response.status == 403
    expect(b.page.get_by_role("heading", level=1)).to_have_text("Not allowed")
    expect(b.page.get_by_role("alert")).to_have_text("This patient is not among yours.")
    expect(b.page.get_by_text(seeded.other_name)).to_have_count(0)
    b.shot("forbidden")
    missing = b.goto("/no-such-page")
    assert missing is not None and missing.status == 404
    expect(b.page.get_by_role("heading", level=1)).to_have_text("Not found")
    b.shot("not-found")


def test_a_post_without_the_csrf_token_is_refused(
    browsing: Browsing, seeded: Seeded, engine: Engine
) -> None:
    b = browsing
    b.sign_in(seeded.clinician)
    # The browser's own cookies, but a form that did not come from our page.
    response = b.page.request.post(
        f"{b.base_url}/patients/{seeded.patient}/limits",
        form={"version": "0", "max_level_dba": "80", "max_session_minutes": "60"},
    )
    assert response.status == 403
    assert "CSRF" in response.text()
    with Session(engine) as session:
        rows = session.exec(
            select(PatientConfigRow).where(PatientConfigRow.patient_id == seeded.patient)
        ).all()
    assert rows == []


def test_sign_out(browsing: Browsing, seeded: Seeded) -> None:
    b = browsing
    b.sign_in(seeded.clinician)
    b.page.get_by_role("button", name="Sign out").click()
    expect(b.page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(b.page.get_by_text("You are signed out.")).to_be_visible()
    b.shot("signed-out")
    b.goto("/patients")
    expect(b.page).to_have_url(re.compile(r"/login\?next="))
    cookies = {c["name"]: c for c in b.page.context.cookies()}
    assert "resonera_session" not in cookies


def test_admin_and_auditor_pages(browsing: Browsing, seeded: Seeded) -> None:
    b = browsing
    b.sign_in(seeded.admin)
    expect(b.page).to_have_url(re.compile(r"/devices$"))
    row = b.page.locator(f'tr[data-device="{seeded.device}"]')
    expect(row).to_contain_text("41.5 °C")
    b.shot("devices")
    row.get_by_role("link", name=f"Revoke {seeded.device}").click()  # asks first
    b.page.get_by_role("button", name=f"Revoke {seeded.device}").click()
    expect(b.page.locator(f'tr[data-device="{seeded.device}"]')).to_contain_text("revoked")
    b.shot("devices-revoked")
    b.page.get_by_role("link", name="Audit log").click()
    b.page.get_by_label("Action").fill("update")
    b.page.get_by_role("button", name="Filter").click()
    expect(b.page.locator("#audit tbody tr")).to_have_count(1)
    expect(b.page.locator("#audit tbody tr")).to_contain_text(seeded.device)
    b.shot("audit-admin")
    b.page.get_by_role("button", name="Sign out").click()

    b.sign_in(seeded.auditor)
    expect(b.page).to_have_url(re.compile(r"/audit$"))
    expect(b.page.get_by_role("link", name="Devices")).to_have_count(0)
    b.shot("audit-auditor")
    assert b.console_errors == []


def test_create_a_program_and_play_its_preview(browsing: Browsing, seeded: Seeded) -> None:
    b = browsing
    b.sign_in(seeded.clinician)
    b.page.get_by_role("link", name="Programs").click()
    expect(b.page.get_by_role("heading", name="Program library")).to_be_visible()
    b.shot("programs-empty")
    b.page.get_by_label("Program document").fill(
        ALPHA.replace("beat_hz = 10", "beat_hz = 99")  # a beat the device refuses
    )
    b.page.get_by_role("button", name="Create program").click()
    expect(b.page.get_by_role("alert")).to_contain_text("beat_hz")
    b.shot("program-invalid")
    b.console_errors.clear()  # Chromium logs the refused form's 400 itself
    b.page.get_by_label("Program document").fill(ALPHA)
    b.page.get_by_role("button", name="Create program").click()
    expect(b.page.get_by_role("heading", level=1)).to_have_text("Alpha drift")
    expect(b.page.get_by_role("status")).to_contain_text("Saved as version 1.")

    audio = b.page.locator("audio#preview")
    # Chromium fetches and decodes the WAV with the page's cookie, as a person pressing play.
    duration = audio.evaluate(LOAD_AUDIO)
    assert abs(float(duration) - 2.0) < 0.1  # preview_max_s of the test settings
    src = audio.get_attribute("src")
    assert src is not None
    response = b.page.request.get(b.base_url + src)
    assert response.status == 200 and response.headers["content-type"] == "audio/wav"
    left, right, _rate = channel_peaks(response.body())
    assert abs((left + right) / 2 - 200) < 6 and abs(abs(right - left) - 10) < 1.5
    b.shot("program")
    b.page.get_by_role("link", name="Program library").click()
    expect(b.page.locator("#programs tbody tr")).to_have_count(1)
    b.shot("programs")

    # The same program as the seeded patient would hear it, from the patient's page.
    b.goto(f"/patients/{seeded.patient}")
    b.page.get_by_label("Library program").select_option(label="Alpha drift")
    b.page.get_by_role("button", name="Prepare preview").click()
    duration = b.page.locator("audio#patient-preview").evaluate(LOAD_AUDIO)
    assert abs(float(duration) - 2.0) < 0.1
    b.shot("patient-preview")
    assert b.console_errors == []
