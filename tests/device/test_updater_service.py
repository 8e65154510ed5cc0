"""The switch to a new agent happens only between sessions (``device/service.py`` with
``device/updater/``): the device service, in process and in simulation, has its slots set up (the
test venv adopted) and a slot already prepared from the target's bundle; a target that arrives
during a session waits for its end, then the trial is written, ``current`` swapped, new sessions
refused, and the service shuts down to exit 75."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from device_peer import device_settings
from support import wait_until

from resonera.common.agent_update import AgentUpdateTarget
from resonera.common.envelope import decode_envelope
from resonera.device.cli import resolve_program
from resonera.device.service import DeviceService, PlayRefused
from resonera.device.updater.launcher import EX_TEMPFAIL
from resonera.device.updater.slots import MARKER, AgentSlots

pytestmark = pytest.mark.real_clock  # a session plays in real time through the null sink

TARGET = AgentUpdateTarget("9.9.9", "f" * 64, 1000, "rollout-service")


def test_a_target_seen_during_a_session_switches_when_it_ends_and_no_session_starts_after(
    tmp_path: Path,
) -> None:
    settings = device_settings(None, tmp_path, "upd-svc")
    slots = AgentSlots.of(settings.data_dir)
    slots.adopt(Path(sys.prefix))
    # slot b as a finished preparation leaves it (its marker is what the switch checks)
    slots.path("b").mkdir()
    marker = {"version": TARGET.version, "sha256": TARGET.sha256, "update_keys": ["k9"]}
    (slots.path("b") / MARKER).write_text(json.dumps(marker))
    service = DeviceService(settings, resolve_program)
    service.start()
    try:
        assert service.play("calm-tone").startswith("ok playing")
        service.updates.desired({"agent_update": TARGET.to_json()})
        wait_until(lambda: service.updates.machine.phase == "ready", 20, "the slot found ready")
        assert slots.state()["trial"] is None  # not during the session
        assert slots.current() == "a"
        service.stop_playing()
        wait_until(service._shutdown.is_set, 30, "the service to leave for the switch")
        trial = slots.state()["trial"]
        assert trial["slot"] == "b" and trial["version"] == TARGET.version
        assert trial["from_version"] == "0.1.0" and trial["update_keys"] == ["k9"]
        assert trial["launches"] == 0 and slots.current() == "b"
        assert service._exit_code == EX_TEMPFAIL
        with pytest.raises(PlayRefused) as refused:  # said to the person, with its light
            service.play("calm-tone")
        assert refused.value.refusal.code == "updating"
        assert refused.value.refusal.message.startswith("The device is updating itself.")
        reports = [body["state"] for kind, body in _queued(service) if kind == "update"]
        assert reports == ["downloading", "switching"]
    finally:
        service.close()


def _queued(service: DeviceService) -> list[tuple[str, dict[str, object]]]:
    return [(m.kind, decode_envelope(m.payload).body) for m in service.store.pending(limit=1000)]
