"""The whole path with every hop real: safety MCU simulator on a pty → device agent → WAV sink →
local store → mosquitto → server ingest → SQLite → REST API."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import wave
from pathlib import Path

import httpx
import pytest
from support import Mosquitto

from resonera.common.program import builtin_program
from resonera.common.settings import MqttSettings
from resonera.device.agent import play_session
from resonera.device.audio.calibration import packaged_calibration
from resonera.device.audio.sinks import WavSink
from resonera.device.settings import DeviceSettings
from resonera.device.store import DeviceStore
from resonera.device.sync import DeviceSync
from resonera.hardware.sim import Simulator
from resonera.server.bootstrap import demo_setup
from resonera.server.crypto import new_key_line
from resonera.server.runner import run_server_in_thread
from resonera.server.settings import ServerSettings

PASSWORD = "e2e clinician password"
BIN = Path(sys.executable).parent


def test_a_played_session_reaches_the_clinician_api_exactly_once(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    mqtt = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    server_settings = ServerSettings(
        database_url=f"sqlite:///{tmp_path / 'server.db'}",
        http_port=0,
        mqtt=mqtt,
        demo=True,  # throwaway JWT secret and signing key; migrates the database
        patient_keys=new_key_line("e2e"),
    )
    program = builtin_program("demo-alpha")
    with Simulator() as sim, run_server_in_thread(server_settings) as server:
        # the device is registered and assigned to a patient of this clinician
        demo_setup(
            server.engine,
            server_settings,
            device_id="e2e-device-1",
            email="clinician@e2e.test",
            password=PASSWORD,
        )
        device = DeviceSettings(
            device_id="e2e-device-1",
            data_dir=tmp_path / "device",
            mqtt=mqtt,
            serial_url=sim.port_path,
            sink="wav",
            calibration_file=packaged_calibration(),
        )
        store = DeviceStore(device.store_path)
        wav_path = tmp_path / "session.wav"
        record = play_session(device, store, program, WavSink(wav_path))
        assert record.outcome == "completed"
        assert not record.simulation
        with DeviceSync(device, store) as sync:
            assert sync.drain(timeout_s=30), sync.last_error
        assert store.outbox_depth() == 0

        login = httpx.post(
            f"{server.api_url}/auth/login",
            json={"email": "clinician@e2e.test", "password": PASSWORD},
        )
        token = login.json()["access_token"]
        response = httpx.get(
            f"{server.url}/api/v1/sessions",
            params={"device_id": "e2e-device-1"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 200
        [stored] = response.json()

    assert stored["session_id"] == record.session_id
    assert stored["program_digest"] == program.digest()
    assert stored["played_s"] == pytest.approx(program.duration_s, abs=0.05)
    assert stored["simulation"] is False
    with wave.open(str(wav_path)) as wav:
        # the whole program, after the safety chain's look-ahead (about 0.11 s of silence first)
        written_s = wav.getnframes() / wav.getframerate()
        assert program.duration_s < written_s <= program.duration_s + 0.15


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_make_demo_command_ends_with_the_session_visible_through_the_api(
    broker: str, tmp_path: Path
) -> None:
    if broker == "mosquitto":
        from support import require_tool

        require_tool("mosquitto")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [
            BIN / "resonera",
            "demo",
            "--broker",
            broker,
            "--sink",
            "wav",
            "--workdir",
            tmp_path / "d",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "The server holds 1 session(s):" in result.stdout
    assert "demo-device-1  demo-alpha" in result.stdout
    assert "/api/v1/sessions" in result.stdout
    # the demo's database holds exactly that session
    db = tmp_path / "d" / "server.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "select device_id, program_name, outcome from session_record"
        ).fetchall()
    assert rows == [("demo-device-1", "demo-alpha", "completed")]
