"""Which patient a device's records belong to: the device's assignments, read once per batch
(``Attribution``), and the records given to a patient when an assignment is made
(``attribute_sessions``)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, select

from resonera.server.dose_rollup import rebuild_dose
from resonera.server.models import AssignmentRow, SafetyEventRow, SessionRow, table_of


@dataclass(frozen=True)
class _Period:
    start: datetime
    end: datetime | None
    patient_id: str


class Attribution:
    """Which patient used a device at a time, from the assignments of a batch's devices: the
    assignment covering the time, else one starting within ``skew`` after it (a device clock
    running behind)."""

    def __init__(self, conn: Connection, devices: set[str], skew: timedelta) -> None:
        self._by_device: dict[str, list[_Period]] = defaultdict(list)
        self._skew = skew
        if not devices:
            return
        table = table_of(AssignmentRow)
        query = select(table.c.device_id, table.c.valid_from, table.c.valid_to, table.c.patient_id)
        for row in conn.execute(query.where(table.c.device_id.in_(devices))):
            self._by_device[row.device_id].append(
                _Period(row.valid_from, row.valid_to, row.patient_id)
            )

    def _owner(self, device_id: str, at: datetime) -> _Period | None:
        periods = self._by_device.get(device_id, ())
        for period in periods:
            if period.start <= at and (period.end is None or at < period.end):
                return period
        for period in periods:
            if period.start - self._skew <= at < period.start:
                return period
        return None

    def patient(self, device_id: str, at: datetime) -> str | None:
        owner = self._owner(device_id, at)
        return owner.patient_id if owner is not None else None

    def refusal(
        self, device_id: str, name: str, start: datetime, end: datetime, received: datetime
    ) -> str | None:
        """Why a record from ``start`` to ``end`` received at ``received`` may not be attributed
        by its device times (check 7 of ``ingest``'s docstring); None if it may."""
        owner = self._owner(device_id, start)
        # Outside every assignment (before the first, in a gap) it is nobody's: stored
        # unattributed, and an assignment made later for that period attributes it.
        if owner is None or owner.end is None:
            return None
        where = (
            f"device time {name} {start.isoformat()} is in an assignment of the device that "
            f"ended at {owner.end.isoformat()}"
        )
        if received > owner.end + self._skew:
            return (
                f"{where}, before the receive time {received.isoformat()}: a device does not "
                "write into a former patient's record"
            )
        if end > owner.end + self._skew:
            return f"{where}, and it runs on to {end.isoformat()} (received {received.isoformat()})"
        return None


def attribute_sessions(conn: Connection, assignment: AssignmentRow) -> int:
    """Give the sessions and events of the assignment's device in its period, not yet attributed,
    to its patient; rebuild the patient's dose. Returns the number of sessions attributed."""
    sessions = table_of(SessionRow)
    events = table_of(SafetyEventRow)
    count = 0
    for table, column in ((sessions, sessions.c.started_at), (events, events.c.device_time)):
        in_period = and_(
            table.c.device_id == assignment.device_id,
            table.c.patient_id.is_(None),
            column >= assignment.valid_from,
        )
        if assignment.valid_to is not None:
            in_period = and_(in_period, column < assignment.valid_to)
        result = conn.execute(
            table.update().where(in_period).values(patient_id=assignment.patient_id)
        )
        if table is sessions:
            count = int(result.rowcount or 0)
    if count:
        rebuild_dose(conn, assignment.patient_id)
    return count
