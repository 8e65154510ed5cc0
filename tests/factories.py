"""Factories for test data, shared by the suites."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from resonera.common import serial_link as sl
from resonera.common.ids import new_id
from resonera.common.records import CheckInRecord, SessionRecord

#: A valid library program (ten minutes of a 10 Hz binaural beat) for the program tests.
ALPHA_TOML = """\
name = "Alpha drift"
description = "ten minutes of alpha"

[[steps]]
duration_s = 600
[[steps.layers]]
type = "binaural"
carrier_hz = 200
beat_hz = 10
gain = 0.3
"""


#: A morning ten days before the tests started, by the real clock read once: where fixed data of
#: the server's tests sits, recent enough for ingest to believe it (``TimeBounds``: device times
#: up to 90 days old by default) on any day. A test on an injected clock sets it from this.
RECENT = datetime.combine(datetime.now(UTC).date() - timedelta(days=10), time(9), UTC)


def make_record(**changes: object) -> SessionRecord:
    start = RECENT
    values: dict[str, object] = {
        "session_id": new_id(),
        "program_name": "demo-alpha",
        "program_digest": "0" * 64,
        "started_at": start,
        "ended_at": start + timedelta(seconds=3),
        "planned_s": 3.0,
        "played_s": 3.0,
        "outcome": "completed",
        "sink": "null",
        "sample_rate": 48000,
        "peak_dbfs": -12.0,
        "rms_dbfs": -15.0,
        "simulation": True,
    }
    values.update(changes)
    return SessionRecord.model_validate(values)


def event_body(**changes: Any) -> dict[str, Any]:
    """A ``SafetyEventRecord`` body as a device sends it (JSON types); valid unless ``changes``
    make it invalid."""
    values: dict[str, Any] = {
        "event_id": new_id(),
        "at": RECENT.isoformat(),
        "type": "fault",
        "cause": "amp too hot",
        "simulation": True,
    }
    values.update(changes)
    return values


# -- session effectiveness: check-ins whose trends are known -------------------------------------

#: Two questions, one of each direction: relaxation (higher is better), tinnitus (lower is better).
OUTCOME_QUESTIONS: list[dict[str, str]] = [
    {
        "id": "relax",
        "text": "How relaxed do you feel?",
        "low_label": "not at all",
        "high_label": "completely",
    },
    {
        "id": "tinnitus",
        "text": "How loud is your tinnitus?",
        "low_label": "silent",
        "high_label": "unbearable",
        "better": "lower",
    },
]


def checkin(  # noqa: PLR0917 - one answer reads best as one positional call
    device: str,
    session_id: str,
    question: str,
    phase: str,
    value: int | None,
    at: datetime,
    better: str = "higher",
    skip_reason: str | None = None,
) -> CheckInRecord:
    """A check-in answer (``value``) or skip (None, ``skip_reason`` why) as a device records it."""
    return CheckInRecord.model_validate(
        {
            "id": new_id(),
            "session_id": session_id,
            "device_id": device,
            "question_id": question,
            "phase": phase,
            "value": value,
            "skipped": value is None,
            "answered_at": at,
            "better": better,
            "skip_reason": skip_reason,
        }
    )


#: Why ``outcome_plan``'s one skip was skipped: a device's error text, markup characters and all.
PLAN_SKIP_REASON = "no spoken prompt for it: <espeak-ng> failed & exited"


@dataclass(frozen=True)
class OutcomePlan:
    """Sessions and check-ins with known trends (``outcome_plan``)."""

    #: The Mondays of the three seeded weeks, oldest first.
    mondays: list[date]
    #: ``SessionRecord`` bodies as the device sends them.
    bodies: list[dict[str, Any]]
    records: list[CheckInRecord]


def outcome_plan(
    device: str, today: date, session_body: Callable[..., dict[str, Any]]
) -> OutcomePlan:
    """In each of the three full ISO weeks before ``today``'s: 3 sessions (Mon and Wed "calm",
    Fri "sleep", 20 min at 09:00 UTC, 1 % dose each). Before each: relaxation 2 + week (0, 1, 2)
    and tinnitus 8 − week; after: relaxation +2, tinnitus −1 (better: lower), except the first
    Friday's tinnitus after, skipped (``PLAN_SKIP_REASON``). ``session_body(start=, minutes=,
    program_name=, dose_fraction=)`` makes a session body."""
    this_monday = today - timedelta(days=today.weekday())
    mondays = [this_monday - timedelta(weeks=3 - k) for k in range(3)]
    bodies: list[dict[str, Any]] = []
    records: list[CheckInRecord] = []
    for week, monday in enumerate(mondays):
        for offset, program in ((0, "calm"), (2, "calm"), (4, "sleep")):
            start = datetime.combine(monday + timedelta(days=offset), time(9), UTC)
            body = session_body(start=start, minutes=20, program_name=program, dose_fraction=0.01)
            bodies.append(body)
            sid = body["session_id"]
            before, after = start - timedelta(minutes=1), start + timedelta(minutes=21)
            skipped = week == 0 and program == "sleep"
            records += [
                checkin(device, sid, "relax", "before", 2 + week, before),
                checkin(device, sid, "relax", "after", 4 + week, after),
                checkin(device, sid, "tinnitus", "before", 8 - week, before, "lower"),
                checkin(
                    device,
                    sid,
                    "tinnitus",
                    "after",
                    None if skipped else 7 - week,
                    after,
                    "lower",
                    PLAN_SKIP_REASON if skipped else None,
                ),
            ]
    return OutcomePlan(mondays, bodies, records)


class ManualClock:
    """A clock the test sets (``now``, seconds), for pure logic that takes a ``clock``."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class WallClock:
    """A wall clock the test sets and moves (``now``, aware), for code that takes a ``Clock``."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def press(button: int, long: bool = False) -> sl.ButtonPress:
    """A button press as the safety MCU reports it (``serial_link.BUTTON_*``)."""
    return sl.ButtonPress(button, sl.PRESS_LONG if long else sl.PRESS_SHORT, 0)
