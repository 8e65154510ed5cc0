"""The whole path with every hop real: safety MCU simulator on a pty → device agent → WAV sink →
local store → mosquitto → server ingest → SQLite → REST API."""

from __future__ import annotations

import os
import re
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
from resonera.device.session import play_standalone
from resonera.device.settings import DeviceSettings
from resonera.device.store import DeviceStore
from resonera.device.sync import DeviceSync
from resonera.engine.audio.calibration import packaged_calibration
from resonera.engine.audio.sinks import WavSink
from resonera.hardware.sim import Simulator
from resonera.server.bootstrap import demo_setup
from resonera.server.crypto import new_key_line
from resonera.server.runner import run_server_in_thread
from resonera.server.settings import ServerSettings
from resonera.stack.demo import KEEP_RUNNING_HINT

PASSWORD = "e2e clinician password"
BIN = Path(sys.executable).parent
#: A log line (``common.cli.LOG_FORMAT``) below WARNING from a logger that is not ours.
LIBRARY_LOG_LINE = re.compile(r"^\S+ \S+ (?:DEBUG|INFO) (?!resonera[.:])\S+: .*$", re.MULTILINE)
#: What ALSA and JACK write to stderr while PortAudio probes (no sound card, no sound server).
#: The sound libraries' probe noise; not ALSA's "underrun occurred", which says a real event (a
#: block late on a loaded machine) that the device's log should show.
SOUND_LIBRARY_LINE = re.compile(
    r"^(?:ALSA lib (?!pcm\.c:\d+:\(snd_pcm_recover\) underrun occurred$)|jack server |"
    r"Cannot connect to server).*$",
    re.MULTILINE,
)


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
        record = play_standalone(device, store, program, WavSink(wav_path))
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
@pytest.mark.parametrize(
    ("broker", "sink"),
    [
        ("mosquitto", ["--sink", "wav"]),
        # as `make demo` runs it: the sound card when there is one (PortAudio probes), else a WAV
        ("amqtt", []),
    ],
)
def test_make_demo_command_prints_only_its_own_lines_and_ends_with_the_session(
    broker: str, sink: list[str], tmp_path: Path
) -> None:
    if broker == "mosquitto":
        from support import require_tool

        require_tool("mosquitto")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    workdir = tmp_path / "d"
    result = subprocess.run(
        [BIN / "resonera", "demo", "--broker", broker, *sink, "--workdir", workdir],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Only the demo's own lines: no library's INFO (amqtt and transitions run in the demo's
    # process), no ALSA/JACK probe noise; the children's logs are in the workdir.
    output = result.stdout + result.stderr
    assert not LIBRARY_LOG_LINE.findall(output), output
    assert not SOUND_LIBRARY_LINE.findall(output), output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"[broker]   {broker} on 127.0.0.1:")
    # ... and it ends with the sessions the server holds, then how to keep the stack up: no API
    # address, password or curl commands for a stack that is already stopped
    # the loop: a library program added and prescribed through the API, applied by the device
    # from the signed state, played on request, and held by the server with its version
    assert any(
        line.startswith("[server]   library program 'Evening wind-down' v1") for line in lines
    )
    assert any("reported it applied" in line for line in lines), result.stdout
    [session] = [
        line for line in lines if line.startswith("  demo-device-1  Evening wind-down v1  7.0 s")
    ]
    assert lines[-4:] == ["The server holds 1 session(s):", session, "", KEEP_RUNNING_HINT]
    assert "password" not in result.stdout and "curl" not in result.stdout
    for log in ("server.log", "hwsim.log", "device.log"):
        text = (workdir / log).read_text()
        assert not LIBRARY_LOG_LINE.findall(text), text
        assert not SOUND_LIBRARY_LINE.findall(text), text  # a one-line summary at most
    # the demo's database holds exactly that session
    db = workdir / "server.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "select device_id, program_name, program_version, outcome from session_record"
        ).fetchall()
    assert rows == [("demo-device-1", "Evening wind-down", 1, "completed")]
