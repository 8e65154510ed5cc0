"""Every played sample reaches the dose (issue 22, item 5): the last, incomplete second of a
session through the real session path into the persisted ledger, and of a file through
``resonera-device measure``. The issue measured 5 sessions of 0.8 s at 89 dBA adding 0.00 %."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile
from dose_clocks import SYNCED

from resonera.common.dose import allowance_pa2s, dose_fraction, pressure_squared
from resonera.common.profile import HearingProfile
from resonera.common.program import load_program_toml
from resonera.device.safety.dose_ledger import DoseLedger
from resonera.device.session import Session, SessionWatch, standalone_parts
from resonera.device.settings import DeviceSettings
from resonera.device.store import DeviceStore
from resonera.engine.audio.sinks import NullSink
from resonera.engine.safety.measure import (
    MeasureError,
    measure_file,
    spl_at_unit_rms_from_full_scale,
)

#: A full-scale sine is 100 dB SPL at the ear (1 V rms, 100 dB SPL per volt).
LOUD_HEADPHONES = """
name = "loud test headphones"
output = "headphones"
dac_full_scale_vrms = 1.0
sensitivity_db_spl_per_v = 100.0
"""
LEVEL_DBA = 89.0
#: A centred tone of gain g is g/√2 per ear: 100 + 20·log10(g/√2) = 89 dB SPL at 1 kHz.
GAIN = math.sqrt(2.0) * 10 ** ((LEVEL_DBA - 100.0) / 20.0)
SHORT_TONE = f"""
name = "short tone"
fade_in_s = 0
fade_out_s = 0
[[steps]]
duration_s = 0.8
[[steps.layers]]
type = "tone"
frequency_hz = 1000
gain = {GAIN:.6f}
"""


def test_five_sessions_of_0_8_s_at_89_dba_add_their_share_to_the_ledger(tmp_path: Path) -> None:
    calibration = tmp_path / "loud.toml"
    calibration.write_text(LOUD_HEADPHONES, encoding="utf-8")
    settings = DeviceSettings.model_validate(
        {
            "device_id": "every-sample",
            "data_dir": tmp_path,
            "simulation": True,
            "calibration_file": calibration,
            "profile": HearingProfile(max_level_dba=90.0).model_dump(),
        }
    )
    store = DeviceStore(settings.store_path)
    program = load_program_toml(SHORT_TONE)
    with standalone_parts(settings, store) as parts:  # a device with network time: no cap
        synced = replace(parts, time_sources=SYNCED)
        records = [Session(synced).run(program, NullSink()) for _ in range(5)]
    assert all(record.outcome == "completed" for record in records)
    ledger = DoseLedger.for_settings(settings, read_only=True)
    try:
        week = ledger.status(time.time() + 60)
    finally:
        ledger.close()
    played = 5 * 0.8
    nominal = pressure_squared(LEVEL_DBA) * played
    # 4 s at 89 dBA, less what the chain's onset ramp and the A-weighting filter's start take
    # from each 0.8 s (a few per cent): not the 0.00 % the issue measured
    assert 0.9 * nominal <= week.pa2s <= 1.01 * nominal
    assert f"{week.measured_fraction * 100:.2f}" == "0.02"
    # every session's record carries its share, and the ledger holds what the records say
    for record in records:
        assert record.dose_fraction == pytest.approx(dose_fraction(LEVEL_DBA, 0.8), rel=0.1)
    recorded = sum(record.dose_fraction for record in records)
    assert week.measured_fraction == pytest.approx(recorded, rel=1e-9)


def write_tone(path: Path, level_dba: float, seconds: float, rate: int = 48_000) -> Path:
    """A 1 kHz sine at ``level_dba`` when a full-scale sine is 100 dB SPL."""
    t = np.arange(round(seconds * rate)) / rate
    x = 10 ** ((level_dba - 100.0) / 20.0) * np.sin(2 * np.pi * 1000 * t)
    soundfile.write(str(path), np.stack([x, x], axis=1), rate, subtype="FLOAT")
    return path


@pytest.mark.parametrize("seconds", [0.8, 3.4])
def test_measure_counts_a_files_last_partial_second_for_its_length(
    tmp_path: Path, seconds: float
) -> None:
    wav = write_tone(tmp_path / "tone.wav", LEVEL_DBA, seconds)
    result = measure_file(wav, spl_at_unit_rms_from_full_scale(100.0))
    assert result.seconds_metered == math.ceil(seconds)
    # for its own length: a whole second would be 25 % (0.8 s) or 3 % (3.4 s) too much
    assert result.dose_mode1 == pytest.approx(dose_fraction(LEVEL_DBA, seconds), rel=0.01)
    assert result.laeq_dba == pytest.approx(LEVEL_DBA, abs=0.1)


@pytest.mark.parametrize("level", [20.0, 59.9, 135.1, 247.0, math.nan])
def test_measure_refuses_an_implausible_full_scale_level_naming_it(level: float) -> None:
    with pytest.raises(MeasureError, match=r"--spl-at-full-scale .* is not a plausible level"):
        spl_at_unit_rms_from_full_scale(level)


def test_100_percent_reached_in_a_sessions_last_partial_second_is_told(tmp_path: Path) -> None:
    calibration = tmp_path / "loud.toml"
    calibration.write_text(LOUD_HEADPHONES, encoding="utf-8")
    profile = HearingProfile(max_level_dba=90.0, refuse_over_allowance=False)
    settings = DeviceSettings.model_validate(
        {
            "device_id": "every-sample",
            "data_dir": tmp_path,
            "simulation": True,
            "calibration_file": calibration,
            "profile": profile.model_dump(),
        }
    )
    ledger = DoseLedger.for_settings(settings)
    ledger.add_energy(time.time() - 60, 0.99998 * allowance_pa2s(1), 3600)  # 0.002 % left
    ledger.close()
    store = DeviceStore(settings.store_path)
    said: list[str] = []
    with standalone_parts(settings, store) as parts:  # 0.8 s at 89 dBA: 0.004 %, all partial
        session = Session(replace(parts, time_sources=SYNCED), watch=SessionWatch(said.append))
        session.run(load_program_toml(SHORT_TONE), NullSink())
    assert any("you have used 100 % of this week's safe listening allowance" in m for m in said)
    assert [event.type for event in store.events()].count("dose_reached") == 1
