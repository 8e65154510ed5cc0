"""Calibrations within what real chains have (issue 22, item 7): each field in its own range could
add up to 247 dB SPL at full scale; now the sensitivity per volt and the full-scale level at the
ear are bounded, and the error names the value and the fields it came from."""

from __future__ import annotations

import pytest

from resonera.common.errors import ConfigError
from resonera.engine.audio.calibration import (
    PLAUSIBLE_FULL_SCALE_SPL,
    default_calibration,
    load_calibration_toml,
)

pytestmark = pytest.mark.dateless


def calibration(output: str = "headphones", **fields: float) -> str:
    lines = [f'name = "test"\noutput = "{output}"']
    lines += [f"{name} = {value}" for name, value in fields.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        # the schema's old corner: 50 V, +60 dB, 150 dB/V = 247 dB SPL at full scale
        (
            calibration(dac_full_scale_vrms=50, amplifier_gain_db=60, sensitivity_db_spl_per_v=150),
            "sensitivity_db_spl_per_v = 150 is not a plausible headphones sensitivity",
        ),
        # a per-volt figure given per milliwatt into 32 Ω: 155 dB SPL per volt
        (
            calibration(dac_full_scale_vrms=1, sensitivity_db_spl_per_mw=140, impedance_ohm=32),
            "sensitivity_db_spl_per_mw = 140 at impedance_ohm = 32: 154.9 dB SPL per volt",
        ),
        # plausible parts, an implausible sum: 2 V, +20 dB, 120 dB/V = 146 dB SPL
        (
            calibration(dac_full_scale_vrms=2, amplifier_gain_db=20, sensitivity_db_spl_per_v=120),
            "a full-scale sine would be 146.0 dB SPL at the ear (dac_full_scale_vrms = 2, "
            "amplifier_gain_db = 20, sensitivity_db_spl_per_v = 120)",
        ),
        # a gain with the wrong sign: full scale 40 dB SPL, no profile's ceiling ever reached
        (
            calibration(dac_full_scale_vrms=1, amplifier_gain_db=-60, sensitivity_db_spl_per_v=100),
            "a full-scale sine would be 40.0 dB SPL",
        ),
        (
            calibration(
                "speaker",
                dac_full_scale_vrms=1,
                sensitivity_db_spl_per_v=125,
                listening_distance_m=1,
            ),
            "not a plausible speaker sensitivity (60–110 dB SPL per volt)",
        ),
    ],
)
def test_an_implausible_calibration_is_refused_naming_the_value(text: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_calibration_toml(text, source="cal.toml")
    assert str(info.value).startswith("cal.toml")
    assert named in str(info.value)


def test_real_chains_are_accepted() -> None:
    for text in (
        # studio headphones 250 Ω, 96 dB SPL/mW, on a 1 V DAC: 102 dB SPL at full scale
        calibration(dac_full_scale_vrms=1, sensitivity_db_spl_per_mw=96, impedance_ohm=250),
        # sensitive in-ear monitors, 2 V DAC, −10 dB: 120 dB SPL/V → 116 dB SPL
        calibration(dac_full_scale_vrms=2, amplifier_gain_db=-10, sensitivity_db_spl_per_v=120),
        # a bookshelf speaker at 2 m, 80 dB SPL/V, 10 V amplifier: 94 dB SPL
        calibration(
            "speaker",
            dac_full_scale_vrms=1,
            amplifier_gain_db=20,
            sensitivity_db_spl_per_v=80,
            listening_distance_m=2,
        ),
    ):
        full_scale = load_calibration_toml(text).spl_at_unit_rms - 3.0103
        assert PLAUSIBLE_FULL_SCALE_SPL[0] <= full_scale <= PLAUSIBLE_FULL_SCALE_SPL[1]
    assert default_calibration().spl_at_unit_rms == pytest.approx(83.01, abs=0.01)
