"""The admin's pages without curl (issue 23, deliverable 4), through TestClient as a browser
without script sends them: patients by name (add, correct, link a clinician), a device assigned
with days in the server's time zone, accounts (add, new password, lock, unlock), revoking only
after a confirmation, and a revocation left unfinished shown as a failure. The same in Chromium:
``test_dashboard_admin_browser.py``."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dashboard.helpers import (
    PASSWORD,
    Seeded,
    form_token,
    html_client,
    post_login,
    sign_in_as,
    table_cells,
)
from enrolled_fleet import add_admin, enrolled, fleet_app, run_fleet
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.server.models import AssignmentRow, AuditRow, DeviceRow, UserRow


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The server's time zone is Europe/Berlin (UTC+1 in winter, +2 in summer)."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _admin(client: TestClient, seeded: Seeded, path: str) -> str:
    sign_in_as(client, seeded.admin)
    page = client.get(path)
    assert page.status_code == 200, page.text
    return form_token(page.text)


def test_the_admin_sees_patients_by_name_and_no_health_data(
    client: TestClient, seeded: Seeded
) -> None:
    _admin(client, seeded, "/admin/patients")
    page = client.get("/admin/patients").text
    rows = {row[0]: row for row in table_cells(page, "admin-patients")}
    assert rows[seeded.patient_name][2] == seeded.device
    assert rows[seeded.patient_name][3] == seeded.clinician
    assert rows[seeded.other_name][2] == seeded.other_device
    one = client.get(f"/admin/patients/{seeded.patient}").text
    for clinical in ("dose", "Dose", "safety event", "calm-40hz", "amplifier hot"):
        assert clinical not in one
    devices = client.get("/devices").text
    patients_column = {row[0]: row[5] for row in table_cells(devices, "devices")}
    assert patients_column == {
        seeded.device: seeded.patient_name,
        seeded.other_device: seeded.other_name,
    }
    assert seeded.patient not in re.sub(r'href="[^"]*"', "", devices)  # names, not ids


def test_add_a_patient_correct_the_name_and_link_a_clinician(
    client: TestClient, seeded: Seeded, engine: Engine
) -> None:
    csrf = _admin(client, seeded, "/admin/patients")
    with Session(engine) as db:
        other = db.exec(select(UserRow).where(UserRow.email == seeded.other_clinician)).one()
    refused = client.post(
        "/admin/patients",
        data={"csrf_token": csrf, "name": "  ", "birth_date": "1980-13-01", "clinician_id": ""},
    )
    assert refused.status_code == 400
    assert 'aria-invalid="true"' in refused.text and "birth-error" in refused.text
    made = client.post(
        "/admin/patients",
        data={
            "csrf_token": csrf,
            "name": "Katherine Johnson",
            "birth_date": "1918-08-26",
            "clinician_id": str(other.id),
        },
    )
    assert made.status_code == 303
    where = made.headers["location"]
    assert "Katherine" not in where  # the address names the patient by id only
    page = client.get(where)
    assert "The patient was added." in page.text
    assert "Katherine Johnson" in page.text and seeded.other_clinician in page.text
    patient_id = where.split("/")[-1].split("?")[0]
    saved = client.post(
        f"/admin/patients/{patient_id}",
        data={"csrf_token": csrf, "name": "Katherine G. Johnson", "birth_date": "1918-08-26"},
    )
    assert saved.status_code == 303
    assert "Katherine G. Johnson" in client.get("/admin/patients").text
    unlinked = client.post(
        f"/admin/patients/{patient_id}/clinicians",
        data={"csrf_token": csrf, "unlink": str(other.id)},
    )
    assert unlinked.status_code == 303
    assert (
        "No clinician cares for this patient yet" in client.get(unlinked.headers["location"]).text
    )
    with Session(engine) as db:
        actions = {
            (r.action, r.resource)
            for r in db.exec(select(AuditRow).where(AuditRow.patient_id == patient_id))
        }
    assert {
        ("create", "patient"),
        ("update", "patient"),
        ("link", "clinician_patient"),
        ("unlink", "clinician_patient"),
    } <= actions


@pytest.mark.usefixtures("berlin")
def test_assign_a_device_with_days_in_the_servers_time_zone(
    client: TestClient, seeded: Seeded, engine: Engine
) -> None:
    with Session(engine) as db:
        db.add(DeviceRow(id="dev-new", created_at=datetime.now(UTC)))
        db.commit()
    csrf = _admin(client, seeded, "/devices/dev-new/assign")
    form = client.get("/devices/dev-new/assign").text
    assert "server&#39;s time zone (CET)" in form or "server's time zone (CET)" in form
    assert f"{seeded.patient_name} (born" in form
    made = client.post(
        "/devices/dev-new/assign",
        data={
            "csrf_token": csrf,
            "patient_id": seeded.other_patient,
            "valid_from": "2026-12-06",
            "last_day": "2027-06-30",
        },
    )
    assert made.status_code == 303, made.text
    with Session(engine) as db:
        row = db.exec(select(AssignmentRow).where(AssignmentRow.device_id == "dev-new")).one()
    # The first day from its midnight in Berlin, the last to its end (summer time: UTC+2).
    assert row.valid_from == datetime(2026, 12, 5, 23, tzinfo=UTC)
    assert row.valid_to == datetime(2027, 6, 30, 22, tzinfo=UTC)
    landed = client.get(made.headers["location"]).text
    assert (
        f"Device dev-new is assigned to {seeded.other_name} from 2026-12-06 to 2027-06-30."
        in landed
    )
    overlap = client.post(
        "/devices/dev-new/assign",
        data={
            "csrf_token": csrf,
            "patient_id": seeded.patient,
            "valid_from": "2027-01-01",
            "last_day": "",
        },
    )
    assert overlap.status_code == 409
    assert "assigned in an overlapping period" in overlap.text
    backwards = client.post(
        "/devices/dev-new/assign",
        data={
            "csrf_token": csrf,
            "patient_id": seeded.patient,
            "valid_from": "2028-01-02",
            "last_day": "2027-12-01",
        },
    )
    assert (
        backwards.status_code == 400
        and "The last day must not be before the first day." in backwards.text
    )


def test_accounts_added_given_a_password_locked_and_unlocked(
    client: TestClient, seeded: Seeded, engine: Engine
) -> None:
    csrf = _admin(client, seeded, "/admin/users")
    short = client.post(
        "/admin/users",
        data={
            "csrf_token": csrf,
            "email": "new@example.org",
            "role": "auditor",
            "password": "short",
        },
    )
    assert short.status_code == 400 and "password-error" in short.text
    made = client.post(
        "/admin/users",
        data={
            "csrf_token": csrf,
            "email": "new@example.org",
            "role": "auditor",
            "password": PASSWORD,
            "display_name": "Nora Newcomb",
        },
    )
    assert made.status_code == 303
    assert "new@example.org: The account was added" in client.get(made.headers["location"]).text
    taken = client.post(
        "/admin/users",
        data={
            "csrf_token": csrf,
            "email": "new@example.org",
            "role": "clinician",
            "password": PASSWORD,
        },
    )
    assert taken.status_code == 409 and "exists" in taken.text
    with Session(engine) as db:
        new = db.exec(select(UserRow).where(UserRow.email == "new@example.org")).one()
    assert new.display_name == "Nora Newcomb"
    one_line = client.post(
        f"/admin/users/{new.id}",
        data={"csrf_token": csrf, "action": "name", "display_name": "Nora\nNewcomb"},
    )
    assert one_line.status_code == 400
    assert f'id="display_name-{new.id}-error"' in one_line.text and "one line" in one_line.text
    renamed = client.post(
        f"/admin/users/{new.id}",
        data={"csrf_token": csrf, "action": "name", "display_name": "Nora Newcomb-Hale"},
    )
    assert renamed.status_code == 303
    assert "The name is saved" in client.get(renamed.headers["location"]).text
    with Session(engine) as db:
        assert db.get(UserRow, new.id).display_name == "Nora Newcomb-Hale"  # type: ignore[union-attr]
    locked = client.post(f"/admin/users/{new.id}", data={"csrf_token": csrf, "action": "lock"})
    assert locked.status_code == 303
    rows = {row[0]: row for row in table_cells(client.get("/admin/users").text, "users")}
    assert rows["new@example.org"][2] == "locked"
    with TestClient(client.app, follow_redirects=False) as owner:
        page = owner.get("/login").text
        assert post_login(owner, "new@example.org", page).status_code == 401
    client.post(f"/admin/users/{new.id}", data={"csrf_token": csrf, "action": "unlock"})
    client.post(
        f"/admin/users/{new.id}",
        data={"csrf_token": csrf, "action": "password", "password": "another long password"},
    )
    with TestClient(client.app, follow_redirects=False) as owner:
        page = owner.get("/login").text
        signed = post_login(owner, "new@example.org", page, password="another long password")
        assert signed.status_code == 303 and signed.headers["location"] == "/audit"


def test_revoke_asks_first_and_an_unfinished_revocation_is_a_failure(
    client: TestClient, seeded: Seeded, engine: Engine
) -> None:
    _admin(client, seeded, "/devices")
    devices = client.get("/devices").text
    assert 'action="/devices/dev-a/revoke"' not in devices  # no one-click revocation
    question = client.get("/devices/dev-a/revoke")
    assert question.status_code == 200
    assert "Revoke dev-a?" in question.text and 'action="/devices/dev-a/revoke"' in question.text
    with Session(engine) as db:
        assert not db.get(DeviceRow, "dev-a").revoked  # type: ignore[union-attr]
    done = client.post("/devices/dev-a/revoke", data={"csrf_token": form_token(question.text)})
    assert done.status_code == 303
    landed = client.get(done.headers["location"]).text
    # No issuing CA on this server: its certificate must still be revoked by hand.
    assert re.search(r'<p class="error" role="alert" id="outcome">Device dev-a is revoked', landed)
    assert "resonera-provision device revoke" in landed
    ok = client.get("/devices?revoked=dev-a&outcome=blocked").text
    assert '<p class="notice" role="status" id="outcome">' in ok


def test_a_failed_broker_reload_is_styled_as_a_failure(tmp_path: Path) -> None:
    """A real fleet (issuing CA on the server, mutual-TLS mosquitto, an enrolled device) whose
    broker reload command fails: the page says so as an alert in the failure style, never as
    the success notice."""
    with run_fleet(tmp_path) as fleet:
        enrolled(fleet, "dev-52", "SN-52")
        email, _token = add_admin(fleet, PASSWORD)
        with html_client(fleet_app(fleet, ["false"])) as client:
            sign_in_as(client, email)
            question = client.get("/devices/dev-52/revoke")
            assert question.status_code == 200
            pressed = client.post(
                "/devices/dev-52/revoke", data={"csrf_token": form_token(question.text)}
            )
            landed = client.get(pressed.headers["location"]).text
    failure = re.search(r'<p class="error" role="alert" id="outcome">([^<]*)</p>', landed)
    assert failure is not None, landed
    assert "the broker reload command failed" in failure.group(1)
    assert 'class="notice"' not in landed
