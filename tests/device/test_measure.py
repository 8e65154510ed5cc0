from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from resonera.common.dose import dose_fraction
from resonera.device.safety.measure import (
    MeasureError,
    measure_file,
    spl_at_unit_rms_from_full_scale,
)


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
