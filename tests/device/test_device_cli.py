"""``resonera-device`` as a person runs it: clear one-line errors, offline-first play."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support import free_port

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
