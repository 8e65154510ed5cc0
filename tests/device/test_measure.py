from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from resonera.common.dose import dose_fraction
from resonera.engine.safety.measure import (
    MeasureError,
    measure_file,
    spl_at_unit_rms_from_full_scale,
)

BIN = Path(sys.executable).parent / "resonera-device"


def write_sine(
    path: Path, peak: float, seconds: float, rate: int = 48_000, subtype: str = "PCM_24"
) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    x = peak * np.sin(2 * np.pi * 1000 * t)
    soundfile.write(str(path), np.stack([x, x], axis=1), rate, subtype=subtype)
    return path


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_a_calibrated_sine_measures_its_level_and_dose(tmp_path: Path, subtype: str) -> None:
    wav = write_sine(tmp_path / "tone.wav", peak=0.1, seconds=10.5, subtype=subtype)
    result = measure_file(wav, spl_at_unit_rms_from_full_scale(100.0))  # full scale sine = 100 dB
    assert result.laeq_dba == pytest.approx(80.0, abs=0.2)
    assert result.max_mel_dba == pytest.approx(80.0, abs=0.2)
    assert result.duration_s == pytest.approx(10.5)
    assert result.seconds_metered == 11
    assert result.dose_mode1 == pytest.approx(dose_fraction(80.0, 10.5, 1), rel=0.05)
    assert result.dose_mode2 == pytest.approx(result.dose_mode1 * 1.6 / 0.51, rel=1e-9)
    assert {"laeq_dba", "max_mel_dba", "dose_mode1", "dose_mode2", "duration_s"} <= set(
        result.as_json()
    )


def test_not_audio_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    with pytest.raises(MeasureError, match="not a readable audio file"):
        measure_file(bad, 100.0)


def test_measure_command_prints_json_with_the_documented_keys(tmp_path: Path) -> None:
    wav = write_sine(tmp_path / "tone.wav", peak=0.1, seconds=3.0)
    result = subprocess.run(
        [str(BIN), "measure", str(wav), "--spl-at-full-scale", "100", "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["laeq_dba"] == pytest.approx(80.0, abs=0.2)
    assert {"laeq_dba", "max_mel_dba", "dose_mode1", "dose_mode2", "duration_s"} <= set(data)


def test_measure_command_needs_exactly_one_calibration(tmp_path: Path) -> None:
    wav = write_sine(tmp_path / "tone.wav", peak=0.1, seconds=1.0)
    result = subprocess.run(
        [str(BIN), "measure", str(wav)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "exactly one of --calibration FILE or --spl-at-full-scale DB" in result.stderr
