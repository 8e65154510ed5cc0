"""The figures ``server/analytics.py`` gives, each against a value computed here by its definition:
Student's t quantile at any df (not a table's next row), the ear level from a dose, silence."""

from __future__ import annotations

import math

import pytest

from resonera.server.analytics import change_summary, ear_level_dba, is_silent, t95


@pytest.mark.parametrize(
    ("df", "quantile"),
    # Two-sided 95 % quantiles of Student's t (R: qt(0.975, df)); df 31 was 2.021 from a table.
    [(4, 2.7764451), (31, 2.0395134), (45, 2.0141034), (200, 1.9718962)],
)
def test_t_quantile_at_every_df(df: int, quantile: float) -> None:
    assert t95(df) == pytest.approx(quantile, abs=1e-6)


def test_interval_of_32_pairs_uses_the_quantile_of_31_df() -> None:
    values = [float(v % 7) for v in range(32)]
    n, total, squares = len(values), sum(values), sum(v * v for v in values)
    mean = total / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    summary = change_summary(n, total, squares)
    assert summary.ci95_high == pytest.approx(mean + 2.0395134 * sd / math.sqrt(n), rel=1e-6)


def test_ear_level_from_the_dose() -> None:
    # 80 dB(A) for 40 h is the whole allowance: 1 h at 80 dB(A) is 1/40 of it.
    assert ear_level_dba(1 / 40, 3600.0) == pytest.approx(80.0)
    # 3 dB more is twice the dose in the same time.
    assert ear_level_dba(2 / 40, 3600.0) == pytest.approx(80.0 + 10 * math.log10(2))
    assert ear_level_dba(0.0, 600.0) is None
    assert ear_level_dba(0.01, 0.0) is None


def test_silence_placeholder_is_silent() -> None:
    assert is_silent(-200.0)
    assert not is_silent(-90.0)
