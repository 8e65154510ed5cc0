"""``resonera-device run`` as systemd runs it: a subprocess with a real mosquitto, driven through its
control socket, stopped with SIGTERM, killed with SIGKILL; and the commands that show what it did."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from device_peer import Peer, ServerKey, config_file, device_settings, service_on_mcu
from support import Mosquitto, wait_until

from resonera.device.service import ServiceUnavailable, send_command
from resonera.device.settings import DeviceSettings

# Times the safety MCU's watchdogs or measures recorded sound against real time: the main pass
# only (the dates of their sessions are checked under faketime by the sessions' other tests).
pytestmark = pytest.mark.realtime

BIN = Path(sys.executable).parent / "resonera-device"


def _start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN), "run", "--config", str(cfg)], stdout=log.open("wb"), stderr=subprocess.STDOUT
    )


def _status(settings: DeviceSettings) -> dict[str, object]:
    value = json.loads(send_command(settings.control_socket_path, "status"))
    assert isinstance(value, dict)
    return value


def _answers(settings: DeviceSettings) -> bool:
    try:
        return bool(_status(settings))
    except (ServiceUnavailable, ValueError):
        return False


def _cli(cfg: Path, *args: str) -> str:
    result = subprocess.run(
        [str(BIN), *args, "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_service_plays_on_command_syncs_reports_and_stops_cleanly_on_sigterm(
    mosquitto: Mosquitto, peer: Peer, tmp_path: Path
) -> None:
    key = ServerKey()
    settings = device_settings(
        mosquitto, tmp_path, f"svc-{tmp_path.name[-6:]}", server_public_key=key.public_b64
    )
    cfg = config_file(settings, tmp_path / "device.toml")
    peer.publish_desired(settings.device_id, key.payload(settings.device_id, 4))
    service = _start(cfg, tmp_path / "run.log")
    try:
        wait_until(lambda: _answers(settings), timeout=20, what="the control socket")
        wait_until(lambda: _status(settings)["link"] == "connected", what="the broker link")
        wait_until(lambda: _status(settings)["desired_version"] == 4, what="desired state 4")
        reply = send_command(settings.control_socket_path, "play demo-alpha")
        assert reply.startswith("ok playing 'demo-alpha'"), reply
        wait_until(lambda: len(peer.of_kind("session")) == 1, timeout=20, what="the session")
        wait_until(lambda: _status(settings)["outbox_depth"] == 0, timeout=20, what="a drain")
        assert send_command(settings.control_socket_path, "stop") == "ok nothing is playing"
        assert send_command(settings.control_socket_path, "dance").startswith("error")
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=30) == 0
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
    assert not settings.control_socket_path.exists()
    [session] = peer.of_kind("session")
    assert session.body["program_name"] == "demo-alpha"
    applied = [r for r in peer.reports() if r["status"] == "applied"]
    assert [r["desired_version"] for r in applied] == [0, 4]  # the engine, then the document
    assert all(r["programs"] == [] and "capabilities" in r for r in applied)
    telemetry = [e.body["telemetry"] for e in peer.of_kind("metrics")]
    assert telemetry and all("outbox_depth" in t for t in telemetry)
    # a normal start and end are counted, not recorded as safety events (docs/safety-events.md)
    assert [e for e in peer.of_kind("event") if e.body["type"] == "transition"] == []
    assert telemetry[-1]["routine"]["session_transitions"] == 3  # idle → arming → playing → idle

    status = _cli(cfg, "status")
    for label in ("link", "safety state", "dose this week", "outbox", "last sync", "desired state"):
        assert f"  {label}" in status
    assert "service not running" in status
    assert "version 4, applied" in status
    assert "idle (service not running)" in status
    history = _cli(cfg, "history")
    assert "demo-alpha" in history and "completed" in history
    logs = _cli(cfg, "logs")
    assert "simulation mode" in logs  # what the session recorded; its normal end is no event
    assert "playing -> idle" not in logs


def test_after_a_sigkill_the_service_starts_again_and_keeps_its_records(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    settings = device_settings(mosquitto, tmp_path, f"svc-kill-{tmp_path.name[-6:]}")
    cfg = config_file(settings, tmp_path / "device.toml")
    first = _start(cfg, tmp_path / "run1.log")
    try:
        wait_until(lambda: _answers(settings), timeout=20, what="the control socket")
        assert send_command(settings.control_socket_path, "play demo-alpha").startswith("ok")
        wait_until(lambda: _status(settings)["playing"] is None, timeout=20, what="the session")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert settings.control_socket_path.exists()  # left behind by the killed process
    second = _start(cfg, tmp_path / "run2.log")
    try:
        wait_until(lambda: _answers(settings), timeout=20, what="the control socket again")
        status = _status(settings)
        assert isinstance(status["outbox_depth"], int) and status["outbox_depth"] >= 1
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    store = settings.open_store()
    assert [s.program_name for s in store.sessions()] == ["demo-alpha"]


def test_play_via_service_without_a_service_is_a_clear_error(tmp_path: Path) -> None:
    settings = device_settings(None, tmp_path, "svc-none")
    cfg = config_file(settings, tmp_path / "device.toml")
    result = subprocess.run(
        [str(BIN), "play", "--via-service", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "no resonera-device run answers on" in result.stderr


def test_with_a_safety_mcu_the_service_watches_it_between_sessions_and_plays_with_consent(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    from resonera.hardware.firmware.config import BoardConfig

    with service_on_mcu(
        mosquitto,
        tmp_path,
        f"svc-mcu-{tmp_path.name[-6:]}",
        BoardConfig(board_id="svc-board", firmware_version="1.2.3"),
    ) as (_sim, settings, service):
        wait_until(lambda: service.status()["safety_link"] == "up", what="the MCU link")
        assert service.command("play demo-alpha").startswith("ok")
        wait_until(lambda: service.status()["playing"] is None, timeout=20, what="the end")
        wait_until(lambda: service.status()["safety_link"] == "up", what="the idle monitor")
        routine = service.status()["routine"]
    assert routine["link_up"] >= 1 and routine["consent_granted"] >= 1  # counted, not recorded
    store = settings.open_store()
    [session] = store.sessions()
    assert session.outcome == "completed", session.reason
    assert not session.simulation and session.hardware_board.startswith("svc-board")
    assert not {"link_up", "consent_granted"} & {e.type for e in store.events(limit=100)}
