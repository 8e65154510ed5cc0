"""Dose arithmetic against the figures of ITU-T H.870 and IEC 62368-1 (docs/safety.md), not our own."""

from __future__ import annotations

import pytest

from resonera.common.dose import (
    allowance_pa2s,
    crossed_hundreds,
    dose_fraction,
    level_db,
    mode_fraction,
    pressure_squared,
    seconds_to_allowance,
)

HOUR = 3600.0


def test_94_db_spl_is_one_pascal() -> None:
    assert pressure_squared(94.0) == pytest.approx(1.0, rel=0.005)
    assert level_db(1.0) == pytest.approx(93.98, abs=0.01)


def test_80_dba_for_40_hours_is_the_mode_1_allowance() -> None:
    assert dose_fraction(80.0, 40 * HOUR, mode=1) == pytest.approx(1.0, rel=0.01)
    assert allowance_pa2s(1) == pytest.approx(5760.0)


def test_75_dba_for_40_hours_is_the_mode_2_allowance() -> None:
    assert dose_fraction(75.0, 40 * HOUR, mode=2) == pytest.approx(1.0, rel=0.01)


def test_android_per_second_formula_agrees() -> None:
    mel = 87.0
    aosp = 4e-10 * 10 ** (mel / 10) * 1.0 / 5760.0
    assert dose_fraction(mel, 1.0, mode=1) == pytest.approx(aosp, rel=1e-9)


def test_three_db_exchange_rate_halves_the_time() -> None:
    assert seconds_to_allowance(83.0) == pytest.approx(seconds_to_allowance(80.0) / 2, rel=0.01)
    assert seconds_to_allowance(80.0) == pytest.approx(40 * HOUR, rel=0.01)


def test_niosh_week_is_about_three_times_the_allowance() -> None:
    assert dose_fraction(85.0, 40 * HOUR) == pytest.approx(3.16, rel=0.01)


def test_mode_conversion_and_silence() -> None:
    assert mode_fraction(1.0, 1, 2) == pytest.approx(1.6 / 0.51)
    assert dose_fraction(float("-inf")) < 1e-15
    assert seconds_to_allowance(70.0, remaining_fraction=0.0) == 0.0


def test_warnings_at_each_further_hundred_percent() -> None:
    assert crossed_hundreds(0.95, 1.02) == [1]
    assert crossed_hundreds(1.02, 1.5) == []
    assert crossed_hundreds(0.5, 3.1) == [1, 2, 3]
