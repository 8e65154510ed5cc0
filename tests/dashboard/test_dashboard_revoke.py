"""The devices page's Revoke button on a server holding the issuing CA (a real fleet: two-tier CA,
mutual-TLS mosquitto, enrolled device): the certificate goes on the CRL, the broker reload command
runs and the broker refuses the device; the page says how it went, a failed reload included."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard.helpers import PASSWORD, form_token, html_client, sign_in_as, table_cells
from enrolled_fleet import (
    Fleet,
    add_admin,
    broker_admits,
    enrolled,
    fleet_app,
    run_fleet,
    sighup_command,
)
from sqlmodel import Session, col, select
from support import wait_until

from resonera.server.models import AuditRow, DeviceRow


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with run_fleet(tmp_path) as running:
        yield running


def press_revoke(fleet: Fleet, command: list[str], device_id: str) -> str:
    """Sign in as an admin, press Revoke on ``device_id``'s row; the page landed on."""
    email, _token = add_admin(fleet, PASSWORD)
    with html_client(fleet_app(fleet, command)) as client:
        sign_in_as(client, email)
        page = client.get("/devices")
        assert page.status_code == 200
        assert f'aria-label="Revoke {device_id}"' in page.text
        pressed = client.post(
            f"/devices/{device_id}/revoke", data={"csrf_token": form_token(page.text)}
        )
        assert pressed.status_code == 303
        landed = client.get(pressed.headers["location"])
        assert landed.status_code == 200
        rows = {row[0]: row for row in table_cells(landed.text, "devices")}
        assert rows[device_id][1] == "revoked"
        text: str = landed.text
        return text


def test_the_revoke_button_makes_the_broker_refuse_the_device(fleet: Fleet) -> None:
    settings = enrolled(fleet, "dev-50", "SN-50")
    assert broker_admits(settings.mqtt, "dev-50")
    page = press_revoke(fleet, sighup_command(fleet.broker), "dev-50")
    assert "Device dev-50 is revoked" in page
    assert "the broker was reloaded and refuses it from now on" in page
    wait_until(
        lambda: not broker_admits(settings.mqtt, "dev-50"), what="the broker to refuse dev-50"
    )
    with Session(fleet.engine) as db:
        device = db.get(DeviceRow, "dev-50")
        assert device is not None and device.revoked  # kept, with what it sent
        actions = [
            (r.action, r.resource) for r in db.exec(select(AuditRow).order_by(col(AuditRow.id)))
        ]
    assert ("update", "device") in actions and ("broker_reload", "broker") in actions


def test_a_failed_broker_reload_is_shown_on_the_page(fleet: Fleet) -> None:
    enrolled(fleet, "dev-51", "SN-51")
    page = press_revoke(fleet, ["false"], "dev-51")
    assert "the broker reload command failed" in page
    assert "reload the broker by hand" in page
    with Session(fleet.engine) as db:
        failed = db.exec(select(AuditRow).where(AuditRow.action == "broker_reload_failed")).all()
        assert [r.resource_id for r in failed] == ["dev-51"]
