"""The admin's Updates page in headless Chromium against the real server (issue 25): an admin
uploads a bundle (and sees a broken one refused with its reason), puts devices in a cohort, starts
a rollout to it, sees the devices fail and the rollout paused with its reason, resumes and cancels
it; per version the page counts the devices running it, updating (with their step) and failed
(with their reasons, each device linked). At 1280 and 390 px nothing is wider than the screen,
and every state leaves a screenshot."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from dashboard.helpers import Browsing, Seeded, table_cells
from dashboard.test_dashboard_admin_browser import _both_widths
from playwright.sync_api import expect
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.server.ingest import IngestProcessor, Received
from resonera.server.models import DeviceRow, DeviceUpdateRow, RolloutRow, UpdateReportRow
from resonera.server.settings import ServerSettings

OLD, NEW = "0.8.0", "0.9.0"


def _bundle_maker() -> ModuleType:
    """``tests/server/update_bundles.py`` by path (a plain import would find the source tree's
    ``server`` package)."""
    name = "resonera_update_bundles"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "server" / "update_bundles.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


bundles = _bundle_maker()


@pytest.fixture(scope="module")
def update_key() -> Any:
    return bundles.UpdateKey.new()


@pytest.fixture
def server_settings(server_settings: ServerSettings, update_key: Any) -> ServerSettings:
    return server_settings.model_copy(update={"update_public_keys": [update_key.public_b64]})


def _send(engine: Engine, device: str, kind: topics.UpKind, body: dict[str, Any], seq: int) -> None:
    """A device's message, stored by ingest as it comes from the broker."""
    envelope = Envelope.create(device=device, seq=seq, kind=kind, body=body)
    IngestProcessor(engine).process([Received(topics.up(device, kind), envelope.to_bytes())])


def _report(state: str, rollout: str, reason: str | None = None) -> dict[str, Any]:
    return {
        "state": state,
        "from_version": OLD,
        "to_version": NEW,
        "rollout": rollout,
        "reason": reason,
    }


def test_an_admin_uploads_rolls_out_and_sees_the_rollout_pause(
    browsing: Browsing, seeded: Seeded, engine: Engine, update_key: Any, tmp_path: Path
) -> None:
    pilots = ["dev-pilot-1", "dev-pilot-2", "dev-pilot-3"]
    with Session(engine) as db:
        for device in pilots:
            db.add(DeviceRow(id=device, created_at=datetime.now(UTC)))
        db.commit()
    for device in [*pilots, seeded.device, seeded.other_device]:
        _send(engine, device, "metrics", {"agent_version": OLD}, 1000)
    good = bundles.write_bundle(tmp_path, update_key, NEW)
    broken = tmp_path / "broken.tar"
    broken.write_bytes(bundles.bundle_bytes(update_key, "0.9.1", broken="corrupt"))

    b = browsing
    b.sign_in(seeded.admin)
    b.page.get_by_role("navigation", name="Main").get_by_role("link", name="Updates").click()
    expect(b.page.get_by_role("heading", level=1)).to_have_text("Updates")
    _both_widths(b, "updates-empty")

    b.page.get_by_label("Bundle (.tar)").set_input_files(str(broken))
    b.page.get_by_role("button", name="Upload and check").click()
    expect(b.page.locator("#bundle-error")).to_contain_text(
        "is not the file the manifest lists (SHA-256 differs)"
    )
    # The refusal is answered 400, which Chromium logs as a resource that failed: expected.
    assert [e for e in b.console_errors if "400 (Bad Request)" not in e] == []
    b.console_errors.clear()
    b.page.get_by_label("Bundle (.tar)").set_input_files(str(good))
    b.page.get_by_role("button", name="Upload and check").click()
    expect(b.page.get_by_role("status")).to_have_text(
        f"The bundle is checked and kept: version {NEW}."
    )
    expect(b.page.locator("#bundles-table")).to_contain_text(seeded.admin)

    for device in pilots:
        b.page.get_by_label("Device", exact=True).select_option(device)
        b.page.get_by_label("Cohort (empty: none)").fill("pilot")
        b.page.get_by_role("button", name="Set the cohort").click()
        expect(b.page.get_by_role("status")).to_have_text(f"Device {device} is in its new cohort.")
    b.goto("/devices")  # the devices page names each one's cohort
    for device in pilots:
        expect(b.page.locator(f"#device-{device}")).to_contain_text("pilot")
    b.goto("/updates")

    b.page.get_by_label("Version", exact=True).select_option(NEW)
    b.page.get_by_label("To", exact=True).select_option("cohort")
    b.page.get_by_label("Cohort", exact=True).fill("pilot")
    b.page.get_by_label("Pause when more than (%) fail").fill("20")
    b.page.get_by_role("button", name="Start the rollout").click()
    expect(b.page.get_by_role("status")).to_contain_text(f"Rollout of version {NEW} started")
    row = b.page.locator("#rollouts-table tbody tr").first
    expect(row).to_contain_text("cohort pilot")
    expect(row).to_contain_text("3 targeted: 0 installed, 3 to update, 0 failed")
    _both_widths(b, "updates-rollout-active")

    with Session(engine) as db:
        rollout = db.exec(select(RolloutRow)).one().id
    _send(engine, "dev-pilot-1", "update", _report("downloading", rollout), 1001)
    _send(
        engine,
        "dev-pilot-2",
        "update",
        _report("failed", rollout, "bundle signature refused"),
        1001,
    )
    _send(
        engine,
        "dev-pilot-3",
        "update",
        _report("rolled_back", rollout, "health check: no MCU"),
        1001,
    )
    b.goto("/updates")
    state = b.page.locator("#rollouts-table tbody tr").first.locator(".state")
    expect(state).to_contain_text("paused: 2 of 3 targeted devices failed or rolled back")
    version = b.page.locator(f'#versions-table tr[data-version="{NEW}"]')
    expect(version.locator(".updating")).to_have_text("dev-pilot-1: downloading")
    expect(version.locator(".failed")).to_contain_text(
        "dev-pilot-2 failed: bundle signature refused"
    )
    expect(version.locator(".failed")).to_contain_text(
        "dev-pilot-3 rolled back: health check: no MCU"
    )
    expect(b.page.locator(f'#versions-table tr[data-version="{OLD}"] .running')).to_have_text(
        "5 devices"
    )
    _both_widths(b, "updates-paused")

    b.page.get_by_role("button", name=f"Resume the rollout of {NEW}").click()
    expect(b.page.get_by_role("status")).to_have_text(f"Rollout of version {NEW} resumed.")
    b.page.get_by_role("button", name=f"Cancel the rollout of {NEW}").click()
    expect(b.page.get_by_role("status")).to_have_text(f"Rollout of version {NEW} cancelled.")
    expect(b.page.locator("#rollouts-table tbody tr").first.locator(".state")).to_have_text(
        "cancelled"
    )
    # The failed device is a link to its row on the devices page.
    version.get_by_role("link", name="dev-pilot-2").click()
    expect(b.page.get_by_role("heading", level=1)).to_have_text("Devices")
    assert b.page.url.endswith("/devices#device-dev-pilot-2")
    assert b.console_errors == []


def test_the_mcus_firmware_reports_have_their_own_table_and_leave_the_agent_alone(
    client: Any, sign_in: Any, seeded: Seeded, engine: Engine
) -> None:
    """A bundle's MCU firmware is reported with ``component: mcu``: stored as such, shown per
    firmware version (running from telemetry, failed with the reason), and never taken for the
    agent's own version or update state."""
    for seq, (device, firmware) in enumerate(
        ((seeded.device, "1.6.0"), (seeded.other_device, "1.5.0")), start=1
    ):
        body = {"agent_version": OLD, "firmware_version": firmware}
        _send(engine, device, "metrics", body, 10**6 + seq)  # newer than the seeded telemetry
    mcu = {"from_version": "1.5.0", "to_version": "1.6.0", "rollout": "r-fw", "component": "mcu"}
    _send(
        engine, seeded.device, "update", {**mcu, "state": "installed", "reason": None}, 10**6 + 10
    )
    _send(
        engine,
        seeded.other_device,
        "update",
        {**mcu, "state": "failed", "reason": "bad signature"},
        10,
    )
    with Session(engine) as db:
        stored = db.exec(select(UpdateReportRow)).all()
        assert sorted((r.device_id, r.component, r.state) for r in stored) == sorted(
            [(seeded.device, "mcu", "installed"), (seeded.other_device, "mcu", "failed")]
        )
        for device in (seeded.device, seeded.other_device):
            row = db.get(DeviceUpdateRow, device)
            assert row is not None and row.agent_version == OLD and row.state is None
    sign_in(seeded.admin)
    rows = {row[0]: row for row in table_cells(client.get("/updates").text, "firmware-table")}
    assert rows["1.6.0"][1] == "1 device"
    failed = rows["1.6.0"][2]  # (the cell's text nodes joined by spaces)
    assert failed.startswith(f"{seeded.other_device} failed") and failed.endswith("bad signature")
    assert rows["1.5.0"][1:] == ["1 device", "none"]
