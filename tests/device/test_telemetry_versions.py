"""What a device says about its software in telemetry (issue 8): the agent's version and the safety
MCU's firmware version reach the server in every ``metrics`` message, also after a session held
the MCU's port, so the dashboard's devices page can show them."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from device_peer import Peer, device_settings, service_on_mcu
from support import Mosquitto, wait_until

# Times the safety MCU's watchdogs or measures recorded sound against real time: the main pass
# only (the dates of their sessions are checked under faketime by the sessions' other tests).
pytestmark = pytest.mark.realtime


def _telemetry(peer: Peer) -> list[dict[str, Any]]:
    return [e.body["telemetry"] for e in peer.of_kind("metrics")]


def test_metrics_carry_the_agent_version_and_the_mcu_firmware_version(
    mosquitto: Mosquitto, peer: Peer, tmp_path: Path
) -> None:
    from resonera.hardware.firmware.config import BoardConfig

    with service_on_mcu(
        mosquitto,
        tmp_path,
        f"tel-mcu-{tmp_path.name[-6:]}",
        BoardConfig(board_id="tel-board", firmware_version="2.7.1"),
    ) as (_sim, _settings, service):
        wait_until(lambda: service.status()["safety_link"] == "up", what="the MCU link")
        service.queue_telemetry()
        wait_until(
            lambda: any(t["firmware_version"] == "2.7.1" for t in _telemetry(peer)),
            what="telemetry with the firmware version",
        )
        # a session opens the port itself: the version stays known while it plays
        assert service.command("play demo-alpha").startswith("ok")
        service.queue_telemetry()
        wait_until(lambda: service.status()["playing"] is None, timeout=20, what="the end")
        service.queue_telemetry()
        wait_until(lambda: len(_telemetry(peer)) >= 4, what="the later telemetry")
    telemetry = _telemetry(peer)
    assert all(t["agent_version"] == version("resonera") for t in telemetry)
    assert all(t["firmware_version"] == "2.7.1" for t in telemetry[-3:])


def test_without_a_safety_mcu_the_firmware_version_is_unknown_not_made_up(
    mosquitto: Mosquitto, peer: Peer, tmp_path: Path
) -> None:
    from resonera.device.cli import resolve_program
    from resonera.device.service import DeviceService

    settings = device_settings(mosquitto, tmp_path, f"tel-sim-{tmp_path.name[-6:]}")
    service = DeviceService(settings, resolve_program)
    service.start()
    try:
        wait_until(lambda: bool(_telemetry(peer)), what="the first telemetry")
    finally:
        service.close()
    [first, *_] = _telemetry(peer)
    assert first["agent_version"] == version("resonera")
    assert first["firmware_version"] is None
