"""The printed report's dose chart (``server/web/report.py``): its shapes against the geometry
computed here."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from resonera.server.schemas import DoseDay
from resonera.server.web.report import CHART_H, CHART_W, dose_chart


def _days(doses: list[float]) -> list[DoseDay]:
    first = date(2026, 3, 1)
    return [
        DoseDay(
            day=first + timedelta(days=i),
            dose_fraction=dose,
            sessions=1 if dose else 0,
            played_s=600.0 if dose else 0.0,
            rolling_7d=sum(doses[max(0, i - 6) : i + 1]),
        )
        for i, dose in enumerate(doses)
    ]


def test_bars_and_the_allowance_line_share_one_scale() -> None:
    days = _days([0.0] * 29 + [0.5])
    chart = dose_chart(days, allowance=1.0)
    # The scale's top is 110 % of the allowance (nothing is higher); bars stand on the baseline.
    left, bottom, top = 44.0, CHART_H - 24.0, 8.0
    plot_h = bottom - top
    assert chart.allowance_y == pytest.approx(top + plot_h * (1 - 1.0 / 1.1))
    assert len(chart.bars) == 30
    last = chart.bars[-1]
    assert last.height == pytest.approx(plot_h * 0.5 / 1.1)
    assert last.y + last.height == pytest.approx(bottom)
    assert all(b.height == 0 for b in chart.bars[:-1])
    # One slot per day of the period: the last bar ends inside the box.
    slot = (CHART_W - left - 4) / 30
    assert last.x == pytest.approx(left + 29 * slot + 0.15 * slot)
    assert last.x + last.width < CHART_W
    # Round ticks: 0, 25, 50, 75, 100 %.
    assert [label for _, label in chart.y_ticks] == ["0 %", "25 %", "50 %", "75 %", "100 %"]
    assert [(text, anchor) for _, text, anchor in chart.x_labels] == [
        ("2026-03-01", "start"),
        ("2026-03-16", "middle"),
        ("2026-03-30", "end"),
    ]


def test_a_dose_over_the_allowance_raises_the_scale() -> None:
    chart = dose_chart(_days([0.9, 0.9]), allowance=1.0)
    # The rolling 7-day dose (1.8) is the highest value: it is the top.
    heights = [float(point.split(",")[1]) for point in chart.rolling.split()]
    assert min(heights) == pytest.approx(8.0)  # the box's top edge
