"""Routine hand-overs are no safety events (issue 21): the ones agents sent before are tagged.

Agents before issue 21 recorded every consent hand-over (granted when a session or a prompt armed
the MCU, withdrawn at the device's own MUTE), every link up and orderly close, and the safety
state machine's normal start and end, as safety events; a normal end was even misread as
``idle -> fault``. They became AdverseEvents in the FHIR export and filled the event lists. This
re-classifies the stored ones with the classifier the device and ingest use
(``common.routine_events``): ``event_type`` becomes ``routine:<counter>``; the row and its body
(the record as the device sent it) stay, so nothing is lost and ``downgrade`` puts the type back.
Lists, counts and exports leave ``routine:`` rows out (docs/safety-events.md).

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from pydantic import ValidationError

from resonera.common.records import SafetyEventRecord
from resonera.common.routine_events import ROUTINE_TYPE_PREFIX, stored_event_type

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


def downgrade() -> None:
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
