"""Calibration profiles (dBFS → dB SPL) and the calibrated A-weighted MEL meter."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.typing import NDArray

from resonera.common.errors import ConfigError
from resonera.engine.audio.calibration import Calibration, load_calibration_toml
from resonera.engine.audio.noise import NoiseTables
from resonera.engine.safety.aweighting import a_weighting_db
from resonera.engine.safety.meter import MelMeter

# Sound alone, no dates: left out of the faketime pass (make pytest-future).
pytestmark = pytest.mark.dateless

HEADPHONES = """
name = "test headphones"
output = "headphones"
dac_full_scale_vrms = 1.0
amplifier_gain_db = 0.0
sensitivity_db_spl_per_v = 100.0
"""


def test_headphone_chain_maps_dbfs_to_spl() -> None:
    cal = load_calibration_toml(HEADPHONES)
    # A full-scale sine (−3.01 dBFS rms) is 1 V rms, hence the sensitivity: 100 dB SPL.
    assert cal.spl_at_dbfs(20 * math.log10(1 / math.sqrt(2))) == pytest.approx(100.0)
    assert cal.spl_at_unit_rms == pytest.approx(100.0 + 3.0103, abs=1e-3)
    assert cal.dbfs_for_spl(cal.spl_at_dbfs(-23.0)) == pytest.approx(-23.0)
    assert cal.volts_at_dbfs(-3.0103) == pytest.approx(1.0, rel=1e-4)


def test_per_milliwatt_sensitivity_uses_the_impedance() -> None:
    text = HEADPHONES.replace(
        "sensitivity_db_spl_per_v = 100.0",
        "sensitivity_db_spl_per_mw = 100.0\nimpedance_ohm = 32.0",
    ).replace("amplifier_gain_db = 0.0", "amplifier_gain_db = 6.0")
    cal = load_calibration_toml(text)
    # 1 V into 32 Ω is 31.25 mW: +14.95 dB over 1 mW.
    assert cal.sensitivity_per_volt == pytest.approx(100.0 + 10 * math.log10(1000 / 32))
    assert cal.spl_at_dbfs(-3.0103) == pytest.approx(100.0 + 14.949 + 6.0, abs=1e-3)


def test_speaker_level_falls_6_db_per_doubling_of_distance() -> None:
    base = dict(
        name="room",
        output="speaker",
        dac_full_scale_vrms=2.0,
        sensitivity_db_spl_per_v=85.0,
    )
    near = Calibration.model_validate({**base, "listening_distance_m": 1.0})
    far = Calibration.model_validate({**base, "listening_distance_m": 2.0})
    assert near.spl_at_dbfs(-20.0) - far.spl_at_dbfs(-20.0) == pytest.approx(6.0206, abs=1e-3)


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("dac_full_scale_vrms = 1.0", "dac_full_scale_vrms = -1.0", "dac_full_scale_vrms"),
        ("dac_full_scale_vrms = 1.0", "dac_full_scale_vrms = nan", "dac_full_scale_vrms"),
        ("amplifier_gain_db = 0.0", "amplifier_gain_db = inf", "amplifier_gain_db"),
        ("sensitivity_db_spl_per_v = 100.0", "", "exactly one of"),
        ("sensitivity_db_spl_per_v = 100.0", "sensitivity_db_spl_per_mw = 100.0", "impedance_ohm"),
        ('output = "headphones"', 'output = "speaker"', "listening_distance_m is needed"),
        (
            'output = "headphones"',
            'output = "headphones"\nlistening_distance_m = 1',
            "speakers only",
        ),
        ('output = "headphones"', 'output = "bone"', "output"),
        ("amplifier_gain_db = 0.0", "amplifier_gain = 0.0", "amplifier_gain"),
    ],
)
def test_bad_profiles_are_refused_with_the_field(old: str, new: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_calibration_toml(HEADPHONES.replace(old, new), source="cal.toml")
    assert str(info.value).startswith("cal.toml")
    assert complaint in str(info.value)


def test_mel_of_a_calibrated_1khz_sine_at_a_known_spl() -> None:
    cal = load_calibration_toml(HEADPHONES)
    rate, spl = 48000, 80.0
    amplitude = 10 ** ((spl - 100.0) / 20)  # peak; 100 dB SPL is a full-scale sine
    t = np.arange(4 * rate) / rate
    sine = (amplitude * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    meter = MelMeter(rate, cal)
    mels: list[float] = []
    for start in range(0, len(sine), 1111):
        block = sine[start : start + 1111]
        mels += meter.update(np.stack([block, block * 0.5], axis=1))
    assert len(mels) == 4
    assert meter.unit == "dB(A) SPL"
    for mel in mels[1:]:
        assert mel == pytest.approx(spl, abs=0.2)
    assert meter.block_level == pytest.approx(spl, abs=0.2)


def _expected_a_weighted_db(signal: NDArray[np.float64], rate: int) -> float:
    """A-weighted mean square from the spectrum and the IEC formula (no filter involved)."""
    spectrum = np.abs(np.fft.rfft(signal)) ** 2
    freqs = np.fft.rfftfreq(len(signal), 1 / rate)
    weights = np.zeros_like(freqs)
    weights[1:] = 10 ** (a_weighting_db(freqs[1:]) / 10)
    spectrum[1:-1] *= 2  # one-sided
    return float(10 * np.log10(np.sum(spectrum * weights) / len(signal) ** 2))


@pytest.mark.parametrize("rate", [44100, 48000])
def test_mel_of_pink_noise_matches_the_formula_within_half_a_db(rate: int) -> None:
    cal = load_calibration_toml(HEADPHONES)
    tables = NoiseTables(rate, seed=5)
    noise = tables.read(1, tables.reader((0, 0)), 6 * rate)[0] * 0.1
    meter = MelMeter(rate, cal, channels=1)
    mels = meter.update(noise[:, None].astype(np.float32))
    assert len(mels) == 6
    for second in range(1, 6):
        window = noise[second * rate : (second + 1) * rate]
        expected = _expected_a_weighted_db(window, rate) + cal.spl_at_unit_rms
        assert mels[second] == pytest.approx(expected, abs=0.5)


def test_uncalibrated_meter_reads_dbfs_a_and_silence_is_floored() -> None:
    meter = MelMeter(48000)
    assert meter.unit == "dBFS(A)"
    assert meter.update(np.zeros((48000, 2), np.float32)) == [-200.0]
    assert meter.last_mel == -200.0


@pytest.mark.parametrize("rate", [44100, 48000])
def test_mel_meter_follows_the_a_weighting_formula_across_the_band(rate: int) -> None:
    """Sines through the whole meter (filter, 1-s windows, calibration) against IEC 61672-1."""
    cal = load_calibration_toml(HEADPHONES)
    amplitude = 0.1
    for f in np.geomspace(20.0, 16000.0, 25):
        t = np.arange(2 * rate) / rate
        sine = (amplitude * np.sin(2 * np.pi * f * t)).astype(np.float32)
        meter = MelMeter(rate, cal, channels=1)
        mels = meter.update(sine[:, None])
        expected = cal.spl_at_dbfs(20 * math.log10(amplitude / math.sqrt(2))) + float(
            a_weighting_db(f)
        )
        tolerance = 0.5 if f <= 10000 else 1.0
        assert mels[1] == pytest.approx(expected, abs=tolerance), f
