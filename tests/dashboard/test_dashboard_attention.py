"""The patients page's attention list (``server/web/glance.attention``): each reason at its
threshold, as the docs name them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from resonera.server.web.glance import DOSE_ATTENTION, OFFLINE_AFTER, attention

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)
CALM = {
    "faults": 0,
    "dose_7d": 0.1,
    "allowance": 1.0,
    "done_7d": 5,
    "per_week": 5,
    "last_sync": NOW - timedelta(hours=1),
    "has_device": True,
    "now": NOW,
}


def reasons(**changes: object) -> tuple[str, ...]:
    return attention(**{**CALM, **changes}).reasons  # type: ignore[arg-type]


def test_a_calm_patient_is_not_listed() -> None:
    assert reasons() == ()


def test_each_reason_at_its_threshold() -> None:
    assert reasons(faults=2) == ("2 faults in 7 days",)
    # Above 80 % of the patient's own allowance (half the default here): 0.41 of 0.5 is 82 %.
    assert reasons(dose_7d=0.41, allowance=0.5) == ("dose at 82 % of the allowance",)
    assert reasons(dose_7d=DOSE_ATTENTION * 0.5, allowance=0.5) == ()
    assert reasons(done_7d=3) == ("2 sessions missed in 7 days",)
    assert reasons(done_7d=9) == ()
    assert reasons(last_sync=NOW - OFFLINE_AFTER - timedelta(days=1)) == (
        "device offline for 3 days",
    )
    assert reasons(last_sync=NOW - OFFLINE_AFTER + timedelta(minutes=1)) == ()
    assert reasons(last_sync=None) == ("device never heard from",)
    assert reasons(last_sync=None, has_device=False) == ()
