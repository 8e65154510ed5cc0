"""Factories for test data, shared by the suites."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from resonera.common.ids import new_id
from resonera.common.records import SessionRecord


def make_record(**changes: object) -> SessionRecord:
    start = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
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
