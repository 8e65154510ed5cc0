"""An agent update end to end through the real server (issue 25), every hop our own code: an admin
uploads the bundle of N+1 built from this tree to the server's API over HTTPS, puts an enrolled
device in the cohort "pilot" and starts a rollout to it; the server signs the device's desired
state with the target and publishes it on mosquitto (mutual TLS); the device's agent on N, started
by its launcher as systemd starts it and watched by the safety-MCU simulator on its pty, fetches
the bundle from the server with its client certificate, installs it beside itself, switches, and
the new agent proves itself healthy; the server's ingest stores each report and completes the
rollout. What the admin and the device's ``status`` show is what is asserted."""

from __future__ import annotations

import ssl
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from device_peer import config_file
from e2e.test_agent_update import NEXT, N, support
from enrolled_fleet import Fleet, add_admin, enrollment_code, run_fleet
from sqlmodel import Session, col, select
from support import wait_until
from updates_support import build_bundle, update_key

from resonera.device.enroll import enroll
from resonera.device.settings import DeviceSettings
from resonera.device.updater.slots import AgentSlots
from resonera.engine.audio.calibration import packaged_calibration
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.sim import Simulator
from resonera.server.models import AuditRow, UpdateReportRow
from resonera.server.runner import ServerProcess

pytestmark = [
    pytest.mark.slow,
    pytest.mark.real_clock,  # certificates, the launcher's trial deadline
    pytest.mark.realtime,  # the simulated MCU's watchdogs
    pytest.mark.timeout(900),  # builds and installs a real bundle of the locked wheels
]

DEVICE = "upd-real"
SERIAL = "SN-UPD-REAL"


@contextmanager
def update_server(fleet: Fleet, data_dir: Path) -> Iterator[ServerProcess]:
    """The server as an admin runs it for updates: API over HTTPS asking devices for their
    certificate, ingest on the mutual-TLS broker, desired states signed with the fleet's key file
    and published there, bundles checked against the session's update key."""
    settings = fleet.settings.model_copy(
        update={
            "mqtt": fleet.server_mqtt(),
            "update_public_keys": [update_key().public_key],
            "data_dir": data_dir,
        }
    )
    with ServerProcess(settings, engine=fleet.engine) as server:
        yield server


def enrolled_device(fleet: Fleet, server: ServerProcess, sim: Simulator, folder: Path) -> Path:
    """The device enrolled over the server's HTTPS with a one-time code (its certificate from the
    fleet's issuing CA, the server's URL, its desired-state key and the update keys from the
    answer), the simulator's pty its safety link: its configuration file."""
    data_dir = folder / "data"
    code = enrollment_code(fleet, SERIAL, device_id=DEVICE)
    bare = DeviceSettings(device_id=DEVICE, data_dir=data_dir)
    enroll(bare, server.url, code, serial=SERIAL, ca_file=fleet.https_ca)
    settings = DeviceSettings.model_validate(
        {
            "device_id": DEVICE,
            "data_dir": data_dir,
            "serial_url": sim.port_path,
            "sink": "null",
            "calibration_file": packaged_calibration(),
            "update_health_timeout_s": 90.0,
            "sync": {"reconnect_jitter_s": 0.0, "resend_after_s": 2.0},
        }
    )
    assert settings.server_url == server.api_url  # from the enrollment, not from the test
    assert settings.update_public_keys == [update_key().public_key]  # pinned when it enrolled
    return config_file(settings, folder / "device.toml")


def admin_api(fleet: Fleet, server: ServerProcess) -> httpx.Client:
    """An admin's API client, trusting the server's certificate from the fleet root."""
    _email, token = add_admin(fleet, "update admin password 42")
    return httpx.Client(
        base_url=server.api_url,
        headers={"Authorization": f"Bearer {token}"},
        verify=ssl.create_default_context(cafile=str(fleet.https_ca)),
        timeout=120,  # the upload: tens of MiB checked as they arrive on a loaded machine
    )


def rollout_state(admin: httpx.Client, rollout_id: str) -> str:
    [rollout] = [r for r in admin.get("/updates/rollouts").json() if r["id"] == rollout_id]
    return str(rollout["state"])


def running(socket: Path, version: str) -> bool:
    status = support.agent_status(socket)
    return status is not None and status["agent_version"] == version


def test_an_admin_rolls_n_plus_1_out_to_a_pilot_device_through_the_real_server(
    tmp_path: Path,
) -> None:
    bundle = build_bundle(tmp_path / "bundle", NEXT)
    with (
        run_fleet(tmp_path / "fleet") as fleet,
        update_server(fleet, tmp_path / "server-data") as server,
        Simulator(BoardConfig(board_id="upd-real-board")) as sim,
    ):
        device_dir = tmp_path / "device"
        device_dir.mkdir()
        config = enrolled_device(fleet, server, sim, device_dir)
        settings = DeviceSettings.model_validate(
            {"device_id": DEVICE, "data_dir": device_dir / "data"}
        )
        socket = settings.control_socket_path
        slots = AgentSlots.of(settings.data_dir)
        slots.adopt(Path(sys.prefix))
        unit = support.Unit(slots.directory / "launch.py", config, tmp_path / "device.log")
        unit.start()
        try:
            wait_until(lambda: running(socket, N), 60, "the agent N to answer")
            with admin_api(fleet, server) as admin:
                uploaded = admin.post(
                    "/updates/bundles",
                    content=bundle.read_bytes(),
                    headers={"Content-Type": "application/x-tar"},
                )
                assert uploaded.status_code == 201, uploaded.text
                assert uploaded.json()["version"] == NEXT
                sha256 = uploaded.json()["sha256"]
                cohort = admin.put(f"/devices/{DEVICE}/cohort", json={"cohort": "pilot"})
                assert cohort.status_code == 200, cohort.text
                started = admin.post("/updates/rollouts", json={"version": NEXT, "cohort": "pilot"})
                assert started.status_code == 201, started.text
                rollout: dict[str, Any] = started.json()
                assert rollout["state"] == "active" and rollout["targeted"] == 1

                wait_until(lambda: running(socket, NEXT), 400, "the device to run N+1")
                wait_until(
                    lambda: rollout_state(admin, rollout["id"]) == "completed",
                    60,
                    "the rollout to complete",
                )
                versions = {v["version"]: v for v in admin.get("/updates/versions").json()}
                assert versions[NEXT]["running"] == 1
                assert versions[NEXT]["running_devices"] == [DEVICE]
                assert versions[NEXT]["updating"] == []
                assert all(line["failed"] == [] for line in versions.values())
            status = support.agent_status(socket)
            assert status is not None and status["safety_link"] == "up"
            # the ack of ``installed`` reached the server a moment before the agent
            wait_until(lambda: slots.state()["trial"] is None, 30, "the trial to be confirmed")
            assert slots.state()["good"] == {"slot": "b", "version": NEXT}
            assert unit.exits == [75]  # the old agent left for the switch; the new one runs on
        finally:
            unit.stop()
        assert sim.error is None

        with Session(fleet.engine) as db:
            reports = db.exec(
                select(UpdateReportRow)
                .where(UpdateReportRow.device_id == DEVICE)
                .order_by(col(UpdateReportRow.seq))
            ).all()
            downloads = db.exec(
                select(AuditRow).where(
                    AuditRow.resource == "agent_bundle", AuditRow.action == "read"
                )
            ).all()
    assert [r.state for r in reports] == [
        "downloading",
        "verifying",
        "installing",
        "switching",
        "installed",
    ]
    assert {(r.component, r.from_version, r.to_version, r.rollout) for r in reports} == {
        ("agent", N, NEXT, rollout["id"])
    }
    assert [(d.actor_email, d.resource_id) for d in downloads] == [(f"device:{DEVICE}", sha256)]
