"""Archiving a patient from the admin pages (issue 23, part 4), through TestClient as a browser
without script sends the forms: the question first, refused while the patient holds a device,
then gone from the clinician's list and attention list, given no device, every record kept and
exported, shown again with "show archived", restored; in Chromium at 1280 and 390 px below."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dashboard.helpers import Browsing, Seeded, form_token, sign_in_as, table_cells
from fastapi.testclient import TestClient
from playwright.sync_api import expect
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.server.models import AssignmentRow, AuditRow, DeviceRow, PatientRow


def _assignment_of(engine: Engine, patient_id: str) -> int:
    with Session(engine) as db:
        row = db.exec(select(AssignmentRow).where(AssignmentRow.patient_id == patient_id)).one()
    assert row.id is not None
    return row.id


def test_archive_asks_waits_for_the_device_hides_the_patient_and_restores(
    client: TestClient, seeded: Seeded, engine: Engine
) -> None:
    sign_in_as(client, seeded.admin)
    page = f"/admin/patients/{seeded.patient}"
    csrf = form_token(client.get(page).text)
    question = client.get(f"{page}/archive").text
    assert f"Archive {seeded.patient_name}?" in question
    assert f"still has <strong>{seeded.device}</strong> (last day open)" in question
    assert f'action="{page}/archive"' not in question  # no button while the device is held
    refused = client.post(f"{page}/archive", data={"csrf_token": csrf})
    assert refused.status_code == 409
    assert f"The patient still has device {seeded.device} assigned after today" in refused.text

    today = datetime.now().astimezone().date().isoformat()  # the End form's own default
    ended = client.post(
        f"/admin/assignments/{_assignment_of(engine, seeded.patient)}/end",
        data={"csrf_token": csrf, "last_day": today},
    )
    assert ended.status_code == 303
    question = client.get(f"{page}/archive").text
    assert f'action="{page}/archive"' in question  # now it can be done
    with Session(engine) as db:
        assert db.get(PatientRow, seeded.patient).archived_at is None  # type: ignore[union-attr]
    done = client.post(f"{page}/archive", data={"csrf_token": csrf})
    assert done.status_code == 303 and done.headers["location"] == f"{page}?done=archived"
    landed = client.get(done.headers["location"]).text
    assert "The patient is archived" in landed and f"Restore {seeded.patient_name}" in landed

    in_care = {row[0] for row in table_cells(client.get("/admin/patients").text, "admin-patients")}
    assert in_care == {seeded.other_name}
    shown = table_cells(client.get("/admin/patients?archived=true").text, "admin-patients")
    care = {row[0]: row[4] for row in shown}
    assert care[seeded.patient_name] == f"archived {today} Restore"
    assert care[seeded.other_name].startswith("in care")

    # No device for an archived patient, and the assign form does not offer them.
    with Session(engine) as db:
        db.add(DeviceRow(id="dev-new", created_at=datetime.now(UTC)))
        db.commit()
    form = client.get("/devices/dev-new/assign").text
    assert seeded.patient_name not in form and seeded.other_name in form
    assign = client.post(
        "/devices/dev-new/assign",
        data={"csrf_token": csrf, "patient_id": seeded.patient, "valid_from": today},
    )
    assert assign.status_code == 409
    assert "The patient is archived (since" in assign.text
    assert "restore them before assigning a device" in assign.text

    # The clinician's list and attention list leave them out; the record and exports stay.
    sign_in_as(client, seeded.clinician)
    listed = client.get("/patients").text
    assert seeded.patient_name not in listed
    record = client.get(f"/patients/{seeded.patient}")
    assert record.status_code == 200
    assert f"Archived since {today}" in record.text  # at the top, under the name
    assert record.text.index("Archived since") < record.text.index('id="glance"')
    assert client.get(f"/patients/{seeded.patient}/fhir.json").status_code == 200
    sessions_csv = client.get(f"/patients/{seeded.patient}/sessions.csv")
    assert sessions_csv.status_code == 200
    assert sessions_csv.text.count("\n") > 60  # the 90 days' sessions, every one kept

    sign_in_as(client, seeded.admin)
    csrf = form_token(client.get(page).text)
    back = client.post(f"{page}/restore", data={"csrf_token": csrf})
    assert back.status_code == 303
    assert "The patient is back in care" in client.get(back.headers["location"]).text
    sign_in_as(client, seeded.clinician)
    assert seeded.patient_name in client.get("/patients").text
    assert "Archived since" not in client.get(f"/patients/{seeded.patient}").text
    with Session(engine) as db:
        actions = [
            row.action
            for row in db.exec(select(AuditRow).where(AuditRow.patient_id == seeded.patient))
            if row.action in ("archive", "restore")
        ]
    assert actions == ["archive", "restore"]


def test_an_assignment_not_begun_is_cancelled_from_the_patients_admin_page(
    client: TestClient, seeded: Seeded, engine: Engine
) -> None:
    sign_in_as(client, seeded.admin)
    page = f"/admin/patients/{seeded.patient}"
    csrf = form_token(client.get(page).text)
    ended = client.post(
        f"/admin/assignments/{_assignment_of(engine, seeded.patient)}/end",
        data={"csrf_token": csrf, "last_day": datetime.now().astimezone().date().isoformat()},
    )
    assert ended.status_code == 303
    with Session(engine) as db:
        db.add(DeviceRow(id="dev-next", created_at=datetime.now(UTC)))
        db.commit()
    next_month = (datetime.now().astimezone().date() + timedelta(days=30)).isoformat()
    assigned = client.post(
        "/devices/dev-next/assign",
        data={"csrf_token": csrf, "patient_id": seeded.patient, "valid_from": next_month},
    )
    assert assigned.status_code == 303, assigned.text
    assert "still has <strong>dev-next</strong>" in client.get(f"{page}/archive").text
    with Session(engine) as db:
        planned = db.exec(select(AssignmentRow).where(AssignmentRow.device_id == "dev-next")).one()
    shown = client.get(page).text
    assert "Cancel the assignment of dev-next" in shown
    assert shown.count("Cancel the assignment of") == 1  # not for the one that has begun
    cancelled = client.post(
        f"/admin/assignments/{planned.id}/end", data={"csrf_token": csrf, "cancel": "1"}
    )
    assert cancelled.status_code == 303
    landed = client.get(cancelled.headers["location"]).text
    assert "The assignment was cancelled before it began." in landed
    assert 'data-assignment="' + str(planned.id) + '"' not in landed
    assert f'action="{page}/archive"' in client.get(f"{page}/archive").text  # may be archived


def test_an_admin_archives_a_patient_in_chromium(
    browsing: Browsing, seeded: Seeded, engine: Engine
) -> None:
    with Session(engine) as db:
        held = db.get(AssignmentRow, _assignment_of(engine, seeded.other_patient))
        assert held is not None
        held.valid_to = datetime.now(UTC)  # the device is back
        db.add(held)
        db.commit()
    b = browsing
    b.sign_in(seeded.admin)
    b.goto("/admin/patients")
    b.page.get_by_role("link", name=f"Archive {seeded.other_name}").click()
    expect(b.page.get_by_role("heading", level=1)).to_have_text(f"Archive {seeded.other_name}?")
    b.shot("question-1280")
    b.page.set_viewport_size({"width": 390, "height": 844})
    assert b.page.evaluate("document.documentElement.scrollWidth") <= 390
    b.shot("question-390")
    b.page.get_by_role("button", name=f"Archive {seeded.other_name}").click()
    expect(b.page.get_by_role("status")).to_contain_text("The patient is archived")
    assert b.page.evaluate("document.documentElement.scrollWidth") <= 390
    b.shot("archived-390")
    b.page.set_viewport_size({"width": 1280, "height": 900})
    b.shot("archived-1280")
    # Their clinician still opens the record, which says so at the top.
    b.page.context.clear_cookies()
    b.sign_in(seeded.other_clinician)
    b.goto(f"/patients/{seeded.other_patient}")
    expect(b.page.locator("#archived")).to_contain_text("Archived since")
    b.shot_fold("clinician-page-1280")
    b.page.set_viewport_size({"width": 390, "height": 844})
    assert b.page.evaluate("document.documentElement.scrollWidth") <= 390
    b.shot_fold("clinician-page-390")
    b.page.context.clear_cookies()
    b.sign_in(seeded.admin)
    b.page.set_viewport_size({"width": 390, "height": 844})
    b.goto("/admin/patients")
    expect(b.page.locator("#admin-patients")).not_to_contain_text(seeded.other_name)
    b.page.get_by_label("Show archived patients").check()
    b.page.get_by_role("button", name="Show").click()
    row = b.page.locator("#admin-patients tbody tr").filter(has_text=seeded.other_name)
    expect(row).to_contain_text("archived")
    assert b.page.evaluate("document.documentElement.scrollWidth") <= 390
    b.shot("list-390")
    b.page.set_viewport_size({"width": 1280, "height": 900})
    b.shot("list-1280")
    row.get_by_role("button", name=f"Restore {seeded.other_name}").click()
    expect(b.page.get_by_role("status")).to_contain_text("back in care")
    assert b.console_errors == []
