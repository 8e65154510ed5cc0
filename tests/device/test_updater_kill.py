"""A kill at any moment of an agent update leaves a device that starts on a working slot with its
store intact (issue 25): the device runs as systemd runs it (the launcher, restarted after each
exit), is asked for the bundle of N+1, and is SIGKILLed (launcher, agent and pip together, as a
power loss) 30 times at random points: during the download, the check, the extraction and the pip
install (a few times: installing dominates), and during the switch, the trial's start, its health
check and its confirmation. After each kill the launcher must start an agent that answers, on N or
N+1, and the store must hold every record it held before.

Between kills the device is set back to "N good, no trial" when the update ended (installed or
rolled back); the prepared slot is kept where the state allows, so only the install-phase kills
pay for pip again."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from device_peer import ServerKey, config_file
from factories import make_record
from fleet import PASSPHRASE, run_tls_broker
from support import wait_until
from updates_support import update_key

from resonera.common.agent_update import AgentUpdateTarget, file_digest
from resonera.device.service import ServiceUnavailable, send_command
from resonera.device.settings import DeviceSettings
from resonera.device.updater.launcher import empty_state, write_state
from resonera.device.updater.slots import AgentSlots
from resonera.engine.audio.calibration import packaged_calibration

pytestmark = [
    pytest.mark.slow,
    pytest.mark.real_clock,  # certificates and the launcher's trial deadline
    pytest.mark.timeout(1800),
]

N, NEXT = "0.1.0", "0.1.1"
KILLS = 30
#: Kills while the slot is being made (download, check, extraction, pip): each costs an install.
INSTALL_KILLS = 4
RECORDS = 20


def load_support() -> Any:
    if "test_updater_support" in sys.modules:
        return sys.modules["test_updater_support"]
    path = Path(__file__).with_name("test_updater_support.py")
    spec = importlib.util.spec_from_file_location("test_updater_support", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def answering_version(settings: DeviceSettings) -> str | None:
    try:
        status = json.loads(send_command(settings.control_socket_path, "status", timeout_s=2.0))
    except (ServiceUnavailable, ValueError, OSError):
        return None
    return str(status["agent_version"]) if isinstance(status, dict) else None


def reset(slots: AgentSlots, *, unprepared: bool) -> None:
    """Back to "N good in slot a, no trial, no failure"; ``unprepared``: slot b and the download
    gone too, so the next update downloads, checks and installs again."""
    write_state(slots.directory, {**empty_state(), "good": {"slot": "a", "version": N}})
    current = slots.directory / "current"
    current.unlink(missing_ok=True)
    os.symlink("slots/a", current)
    if unprepared:
        shutil.rmtree(slots.path("b"), ignore_errors=True)
        shutil.rmtree(slots.directory / "downloads", ignore_errors=True)


def test_thirty_kills_at_random_points_of_an_update_always_leave_a_working_slot(
    tmp_path: Path,
) -> None:
    support = load_support()
    rng = random.Random(25)
    bundle = support.agent_bundle(tmp_path / "bundles", NEXT)
    size, sha256 = file_digest(bundle)
    target = AgentUpdateTarget(NEXT, sha256, size, "kill-rollout")
    with run_tls_broker(tmp_path / "fleet") as tls:
        server = support.BundleServer(tls.ca, PASSPHRASE, tmp_path / "https")
        server.state.serve(sha256, bundle)
        peer = support.TlsPeer(tls.server())
        key = ServerKey()
        settings = DeviceSettings.model_validate(
            {
                "device_id": "upd-kill",
                "data_dir": tmp_path / "data",
                "mqtt": tls.device("upd-kill"),
                "simulation": True,  # the MCU's part of the check is the e2e test's
                "sink": "null",
                "calibration_file": packaged_calibration(),
                "server_public_key": key.public_b64,
                "server_url": server.state.url,
                "enroll_ca_file": tls.ca.cert_path,
                "update_public_keys": [update_key().public_key],
                "update_health_timeout_s": 60.0,
                "sync": {"reconnect_jitter_s": 0.0, "resend_after_s": 2.0},
            }
        )
        store = settings.open_store()
        for _ in range(RECORDS):
            store.record_session(settings.device_id, make_record())
        kept = {r.session_id for r in store.sessions(limit=1000)}
        store.close()
        cfg = config_file(settings, tmp_path / "device.toml")
        slots = AgentSlots.of(settings.data_dir)
        slots.adopt(Path(sys.prefix))
        peer.publish_desired(
            settings.device_id, key.payload(settings.device_id, 2, agent_update=target.to_json())
        )
        install_at = set(rng.sample(range(KILLS), INSTALL_KILLS))
        unit = support.Unit(slots.directory / "launch.py", cfg, tmp_path / "device.log").start()
        seen: list[tuple[str, float, str | None]] = []
        try:
            wait_until(lambda: answering_version(settings) is not None, 60, "the first agent")
            for kill in range(KILLS):
                ended = slots.state()["good"]["slot"] == "b" or slots.state()["failure"]
                if kill in install_at or ended:
                    unit.stop()
                    reset(slots, unprepared=kill in install_at)
                    unit = support.Unit(
                        slots.directory / "launch.py", cfg, tmp_path / "device.log"
                    ).start()
                if kill in install_at:  # while the slot is made: download, check, extract, pip
                    delay = rng.uniform(0.5, 20.0)
                else:  # between the start and the confirmation: a prepared slot skips to the switch
                    wait_until(
                        lambda: slots.prepared("b", sha256), 600, "the slot prepared in one go"
                    )
                    delay = rng.uniform(0.2, 7.0)
                time.sleep(delay)
                phase = _phase(slots)
                unit.kill()
                wait_until(
                    lambda: answering_version(settings) in (N, NEXT),
                    120,
                    f"an agent after kill {kill}",
                )
                seen.append((phase, round(delay, 1), answering_version(settings)))
                check = settings.open_store(read_only=True)
                try:
                    assert {r.session_id for r in check.sessions(limit=1000)} >= kept
                    assert check.integrity_check() == "ok"
                finally:
                    check.close()
        finally:
            unit.stop()
            peer.close()
            server.close()
    assert len(kept) == RECORDS
    print("kills (phase, delay s, agent after):", seen)
    phases = {phase for phase, _, _ in seen}
    assert "trial" in phases or "confirmed" in phases, seen  # the switch was reached and killed


def _phase(slots: AgentSlots) -> str:
    """Where the update is, from what the disk shows (for the test's print)."""
    state = slots.state()
    if state.get("trial"):
        return "trial"
    if state["good"]["slot"] == "b":
        return "confirmed"
    downloads = slots.directory / "downloads"
    if slots.marker("b"):
        return "prepared"
    if slots.path("b").exists() or (slots.directory / "work").exists():
        return "installing"
    if downloads.exists() and any(downloads.iterdir()):
        return "downloading"
    return "starting"
