"""The data key kept away from the data folder (``data_key_file``): every command that reads the
dose ledger finds it there, as the store does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support import free_port

from resonera.engine.audio.calibration import packaged_calibration

BIN = Path(sys.executable).parent / "resonera-device"


def test_status_and_dose_read_a_ledger_sealed_with_a_data_key_kept_elsewhere(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "secrets" / "device-data.key"
    cfg = tmp_path / "device.toml"
    cfg.write_text(
        f'device_id = "cli-key"\ndata_dir = "{tmp_path / "data"}"\nsink = "wav"\n'
        f'wav_path = "{tmp_path / "out.wav"}"\ncalibration_file = "{packaged_calibration()}"\n'
        f'data_key_file = "{key_file}"\n[mqtt]\nport = {free_port()}\n'
    )

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN), *map(str, args), "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    played = run("play", "--simulation", "--sync-timeout", "0.5")
    assert played.returncode == 0, played.stderr
    assert key_file.exists()
    status = run("status")
    assert status.returncode == 0, status.stderr
    assert "demo-alpha" in status.stdout
    dose = run("dose")
    assert dose.returncode == 0, dose.stderr
    assert "rolling 7 days:" in dose.stdout
    assert "damaged" not in dose.stdout
    # one key for the device, where the settings say: none was made in the default place
    assert not (tmp_path / "data" / "keys" / "data.key").exists()


def test_a_missing_data_key_is_one_clear_line_and_no_command_that_looks_makes_a_new_one(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "secrets" / "device-data.key"
    cfg = tmp_path / "device.toml"
    cfg.write_text(
        f'device_id = "cli-lost"\ndata_dir = "{tmp_path / "data"}"\nsink = "null"\n'
        f'simulation = true\ncalibration_file = "{packaged_calibration()}"\n'
        f'data_key_file = "{key_file}"\n[mqtt]\nport = {free_port()}\n'
    )
    played = subprocess.run(
        [str(BIN), "play", "--config", str(cfg), "--sync-timeout", "0.2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert played.returncode == 0, played.stderr
    key_file.rename(tmp_path / "elsewhere.key")
    for command in ("status", "history", "logs", "dose"):
        result = subprocess.run(
            [str(BIN), command, "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 1, command
        [line] = result.stderr.splitlines()
        assert line.startswith(f"resonera-device: error: the data key {key_file} is missing: ")
        assert "restore the key file" in line
    assert not key_file.exists()  # none was made in its place: the records stay readable
    assert not (tmp_path / "data" / "keys").exists()
