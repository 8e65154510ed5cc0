"""``resonera-device`` as a person runs it: clear one-line errors, offline-first play."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from device_peer import ServerKey
from support import free_port

from resonera.common.prescription import prescribe
from resonera.common.program import parse_program
from resonera.common.settings import load_settings
from resonera.device.desired_state import DesiredStateApplier
from resonera.device.settings import DeviceSettings
from resonera.engine.audio.calibration import packaged_calibration

BIN = Path(sys.executable).parent / "resonera-device"


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "device.toml"
    path.write_text(
        f'device_id = "cli-dev"\ndata_dir = "{tmp_path / "data"}"\nsink = "wav"\n'
        f'wav_path = "{tmp_path / "out.wav"}"\ncalibration_file = "{packaged_calibration()}"\n'
        f"[mqtt]\nport = {free_port()}\n{extra}"
    )
    return path


def test_malformed_config_is_one_line_and_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('device_id = "x"\nblock_frames = "many"\n')
    result = run("play", "--config", bad)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("resonera-device: error: config file")
    assert "block_frames" in line
    assert "Traceback" not in result.stderr


def test_refuses_to_play_without_safety_mcu_unless_simulation(tmp_path: Path) -> None:
    result = run("play", "--config", config(tmp_path))
    assert result.returncode == 1
    assert "no safety MCU configured" in result.stderr
    assert not (tmp_path / "out.wav").exists()


def test_unreachable_serial_port_is_a_clear_error(tmp_path: Path) -> None:
    result = run("play", "--config", config(tmp_path), "--serial", tmp_path / "no-such-tty")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()[-1:]
    assert "no-such-tty" in line
    assert "Traceback" not in result.stderr


def test_plays_offline_and_keeps_the_record_for_later(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    result = run("play", "--config", cfg, "--simulation", "--sync-timeout", "0.5")
    assert result.returncode == 0, result.stderr
    assert "simulation mode" in result.stdout
    assert "not synced yet" in result.stdout
    # the session and its safety events (simulation mode, state transitions) all wait
    assert "record(s) wait in the outbox" in result.stdout
    assert "expected to use" in result.stdout
    assert (tmp_path / "out.wav").stat().st_size > 1000
    status = run("status", "--config", cfg)
    assert "outbox: 0 record(s)" not in status.stdout
    assert "demo-alpha" in status.stdout
    assert "[simulation]" in status.stdout
    dose = run("dose", "--config", cfg)
    assert dose.returncode == 0
    assert "rolling 7 days:" in dose.stdout
    assert "h of sound" in dose.stdout


def test_play_takes_the_prescribed_programs_first_by_default_and_others_by_name(
    tmp_path: Path,
) -> None:
    """With programs prescribed, ``play`` alone plays the first, ``play NAME`` any of them (any
    case), and anything else is refused naming what was prescribed."""
    key = ServerKey()
    cfg = config(tmp_path)
    cfg.write_text(f'server_public_key = "{key.public_b64}"\n' + cfg.read_text())
    settings = load_settings(DeviceSettings, cfg)
    store = settings.open_store()
    programs = [
        prescribed("lib-evening", "Evening calm"),
        prescribed("lib-morning", "Morning lift"),
    ]
    applier = DesiredStateApplier(store, "cli-dev", settings.pinned_server_key(), settings.profile)
    assert applier.handle(key.payload("cli-dev", 1, programs=programs)).outcome == "applied"
    store.close()

    first = run("play", "--config", cfg, "--simulation", "--sync-timeout", "0.5")
    assert first.returncode == 0, first.stderr
    assert "played 'Evening calm'" in first.stdout
    named = run("play", "morning LIFT", "--config", cfg, "--simulation", "--sync-timeout", "0.5")
    assert named.returncode == 0, named.stderr
    assert "played 'Morning lift'" in named.stdout
    other = run("play", "demo-alpha", "--config", cfg, "--simulation", "--sync-timeout", "0.5")
    assert other.returncode != 0
    assert "'demo-alpha' is not among the programs prescribed here" in other.stderr
    assert "'Evening calm', 'Morning lift'" in other.stderr


def prescribed(library_id: str, name: str) -> dict[str, object]:
    program = parse_program(
        {
            "name": name,
            "fade_in_s": 0.1,
            "fade_out_s": 0.1,
            "steps": [
                {
                    "duration_s": 0.5,
                    "layers": [{"type": "tone", "frequency_hz": 440.0, "gain": 0.2}],
                }
            ],
        },
        "test",
    )
    return prescribe(library_id, 1, program).model_dump(mode="json")
