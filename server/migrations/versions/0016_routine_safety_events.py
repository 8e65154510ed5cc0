"""Routine hand-overs are no safety events, and a 0.05 s start is no session (issue 21): what
agents sent before is re-read.

Agents before issue 21 recorded every consent hand-over (granted when a session or a prompt armed
the MCU, withdrawn at the device's own MUTE), every link up and orderly close, and the safety
state machine's normal start and end, as safety events; a normal end was even misread as
``idle -> fault``. They became AdverseEvents in the FHIR export and filled the event lists. This
re-classifies the stored ones with the classifier the device and ingest use
(``common.routine_events``): ``event_type`` becomes ``routine:<counter>``; the row and its body
(the record as the device sent it) stay, so nothing is lost and ``downgrade`` puts the type back.
Lists, counts and exports leave ``routine:`` rows out (docs/safety-events.md).

Adherence reads ``dose_daily.sessions``, which counted every session, an accidental 0.05 s start
too ("6 of 5"). The sessions of each day are counted again with ``common.session_count`` under
each patient's latest profile (60 s or 10 % of the plan by default); the dose and the seconds
played stay as they were (every second counts). ``downgrade`` counts every session again.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from pydantic import ValidationError

from resonera.common.profile import HearingProfile
from resonera.common.records import SafetyEventRecord
from resonera.common.routine_events import ROUTINE_TYPE_PREFIX, stored_event_type
from resonera.common.session_count import counting_profile, counts_as_session

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Only the types the classifier can call routine are read (the others cannot change).
_CANDIDATE_TYPES = ("consent_granted", "consent_withdrawn", "link_up", "link_down", "transition")
#: Rows read per round trip: bounded memory on a store of millions of events.
_BATCH = 2000

_events = sa.table(
    "safety_event",
    sa.column("id", sa.Integer),
    sa.column("event_type", sa.String),
    sa.column("body", sa.JSON),
)

_sessions = sa.table(
    "session_record",
    sa.column("patient_id", sa.String),
    sa.column("started_at", sa.DateTime(timezone=True)),
    sa.column("played_s", sa.Float),
    sa.column("planned_s", sa.Float),
)
_days = sa.table(
    "dose_daily",
    sa.column("patient_id", sa.String),
    sa.column("day", sa.Date),
    sa.column("sessions", sa.Integer),
)
_configs = sa.table(
    "patient_config",
    sa.column("patient_id", sa.String),
    sa.column("version", sa.Integer),
    sa.column("profile", sa.JSON),
)

#: Whether a session (seconds played, seconds planned) counts, under a patient's profile.
Counts = Callable[[float, float, HearingProfile], bool]


def _record(body: Any) -> SafetyEventRecord | None:
    """The stored body as a record; one a later model no longer reads is built without checks
    (the classifier reads only type, code, cause and states); None for what is no record."""
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        return None
    try:
        return SafetyEventRecord.model_validate(body)
    except ValidationError:
        return SafetyEventRecord.model_construct(**body)


def upgrade() -> None:
    _tag_routine_events()
    _count_sessions_again(counts_as_session)


def downgrade() -> None:
    _count_sessions_again(lambda _played, _planned, _profile: True)
    _untag_routine_events()


def _tag_routine_events() -> None:
    conn = op.get_bind()
    after = 0
    while True:
        rows = conn.execute(
            sa.select(_events.c.id, _events.c.body)
            .where(_events.c.event_type.in_(_CANDIDATE_TYPES), _events.c.id > after)
            .order_by(_events.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        after = rows[-1].id
        changes: dict[str, list[int]] = {}
        for row in rows:
            record = _record(row.body)
            if record is None:
                continue
            stored = stored_event_type(record)
            if stored.startswith(ROUTINE_TYPE_PREFIX):
                changes.setdefault(stored, []).append(row.id)
        for stored, ids in changes.items():
            conn.execute(sa.update(_events).where(_events.c.id.in_(ids)).values(event_type=stored))


def _untag_routine_events() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(_events.c.id, _events.c.body).where(
            _events.c.event_type.like(f"{ROUTINE_TYPE_PREFIX}%")
        )
    ).all()
    for row in rows:
        body = row.body if isinstance(row.body, dict) else {}
        original = body.get("type")
        conn.execute(
            sa.update(_events)
            .where(_events.c.id == row.id)
            .values(event_type=original if isinstance(original, str) else "unknown")
        )


def _utc_day(value: datetime) -> date:
    """The UTC day of a stored time (naive UTC on SQLite, aware on PostgreSQL)."""
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.date()


def _count_sessions_again(counts: Counts) -> None:
    """Set each ``dose_daily`` row's ``sessions`` to the sessions of that patient and UTC day
    that ``counts`` (the roll-up's days and totals are the sessions', ``server/dose_rollup.py``)."""
    conn = op.get_bind()
    latest: dict[str, Any] = {}
    for patient_id, profile in conn.execute(
        sa.select(_configs.c.patient_id, _configs.c.profile).order_by(
            _configs.c.patient_id, _configs.c.version
        )
    ):
        latest[patient_id] = profile  # the last version wins
    profiles: dict[str, HearingProfile] = {}
    counted: Counter[tuple[str, date]] = Counter()
    rows = conn.execute(
        sa.select(
            _sessions.c.patient_id,
            _sessions.c.started_at,
            _sessions.c.played_s,
            _sessions.c.planned_s,
        ).where(_sessions.c.patient_id.is_not(None))
    )
    for patient_id, started_at, played_s, planned_s in rows:
        profile = profiles.get(patient_id)
        if profile is None:
            profile = profiles[patient_id] = counting_profile(latest.get(patient_id))
        key = (patient_id, _utc_day(started_at))
        counted[key] += 1 if counts(played_s, planned_s, profile) else 0
    for (patient_id, day), sessions in counted.items():
        conn.execute(
            sa.update(_days)
            .where(_days.c.patient_id == patient_id, _days.c.day == day)
            .values(sessions=sessions)
        )
