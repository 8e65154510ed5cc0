"""What the devices page (admins) shows of each device: presence, telemetry, the patient it is
with, its clock, and the routine hand-overs its agent counted instead of recording them as safety
events (``routine`` in its telemetry: ``SafetyEventRecorder.routine_counts``,
docs/safety-events.md)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from resonera.server.models import AssignmentRow, DeviceRow, DeviceStateRow, MessageRow, SessionRow


@dataclass(frozen=True)
class DeviceLine:
    id: str
    revoked: bool
    online: bool | None
    last_seen: datetime | None
    firmware: str
    agent_version: str
    patient_id: str | None
    amp_temp_c: float | None
    outbox_depth: int | None
    telemetry_at: datetime | None
    #: Receive time − envelope time of the latest batch (``DeviceStateRow.clock_skew_s``), when
    #: it was measured, and whether it is beyond what ingest believes (``device_time_skew_s``).
    clock_skew_s: float | None = None
    clock_skew_at: datetime | None = None
    clock_skew_large: bool = False
    #: The latest telemetry's routine counters (since the agent started), by name; () when none.
    routine: tuple[tuple[str, int], ...] = ()
    #: The rollout cohort an admin put it in (``device.cohort``), None: none.
    cohort: str | None = None

    @property
    def clock_skew(self) -> str:
        """The skew in words: "12 s behind", "3 h 05 min ahead", "in step"; "—" unmeasured."""
        return skew_text(self.clock_skew_s)


def skew_text(seconds: float | None) -> str:
    """A device clock's skew (receive time − device time, seconds) for a table cell."""
    if seconds is None:
        return "—"
    size = round(abs(seconds))
    if size < 1:
        return "in step"
    days, rest = divmod(size, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        amount = f"{days} d {hours} h"
    elif hours:
        amount = f"{hours} h {minutes:02d} min"
    elif minutes:
        amount = f"{minutes} min {secs:02d} s"
    else:
        amount = f"{secs} s"
    return f"{amount} {'behind' if seconds > 0 else 'ahead'}"


def _found(body: Any, names: frozenset[str], accept: Callable[[Any], bool]) -> Any:
    """The first value ``accept`` takes under one of ``names`` anywhere in a telemetry body
    (formats vary): this level's keys first, then each nested object, where an empty text counts
    as none; None if there is none."""
    if isinstance(body, dict):
        for key, value in body.items():
            if key in names and accept(value):
                return value
        for value in body.values():
            found = _found(value, names, accept)
            if found is not None and found != "":
                return found
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _find_number(body: Any, names: frozenset[str]) -> float | None:
    found = _found(body, names, _is_number)
    return float(found) if found is not None else None


def _find_text(body: Any, names: frozenset[str]) -> str:
    found = _found(body, names, lambda value: isinstance(value, str))
    return str(found) if found is not None else ""


def _routine_counts(body: Any) -> tuple[tuple[str, int], ...]:
    """The ``routine`` counters of a telemetry body, in name order; a value that is no count is
    left out (a device's message is input like any other)."""
    found = _found(body, frozenset({"routine"}), lambda value: isinstance(value, dict))
    if not isinstance(found, dict):
        return ()
    return tuple(
        (str(name)[:40], value)
        for name, value in sorted(found.items())
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0
    )


def latest_telemetry(session: Session, device_id: str) -> tuple[MessageRow | None, Any]:
    """The device's latest ``metrics`` message and its body ({} when none, or not JSON)."""
    metrics = session.exec(
        select(MessageRow)
        .where(MessageRow.device_id == device_id, MessageRow.kind == "metrics")
        .order_by(col(MessageRow.seq).desc())
        .limit(1)
    ).first()
    try:
        body: Any = json.loads(metrics.body) if metrics is not None else {}
    except ValueError:
        body = {}
    return metrics, body


def device_line(
    session: Session, device: DeviceRow, now: datetime, skew_limit: timedelta
) -> DeviceLine:
    """What the devices page shows of ``device``; a clock skew beyond ``skew_limit`` either way
    is marked (ingest quarantines device times ahead by more than that)."""
    state = session.get(DeviceStateRow, device.id)
    skew = state.clock_skew_s if state is not None else None
    metrics, body = latest_telemetry(session, device.id)
    board = session.exec(
        select(SessionRow.hardware_board)
        .where(SessionRow.device_id == device.id, SessionRow.hardware_board != "")
        .order_by(col(SessionRow.started_at).desc())
        .limit(1)
    ).first()
    assignment = session.exec(
        select(AssignmentRow)
        .where(AssignmentRow.device_id == device.id, col(AssignmentRow.valid_from) <= now)
        .order_by(col(AssignmentRow.valid_from).desc())
        .limit(1)
    ).first()
    current = (
        assignment
        if assignment is not None and (assignment.valid_to is None or assignment.valid_to > now)
        else None
    )
    depth = _find_number(body, frozenset({"outbox_depth"}))
    return DeviceLine(
        id=device.id,
        revoked=device.revoked,
        online=state.online if state is not None else None,
        last_seen=state.last_received_at if state is not None else None,
        firmware=_find_text(body, frozenset({"firmware", "firmware_version", "hardware_board"}))
        or (board or ""),
        agent_version=_find_text(body, frozenset({"agent_version", "software_version"})),
        patient_id=current.patient_id if current is not None else None,
        amp_temp_c=_find_number(body, frozenset({"amp_temp_c", "amplifier_temp_c"})),
        outbox_depth=int(depth) if depth is not None else None,
        telemetry_at=metrics.device_time if metrics is not None else None,
        clock_skew_s=skew,
        clock_skew_at=state.clock_skew_at if state is not None else None,
        clock_skew_large=skew is not None and abs(skew) > skew_limit.total_seconds(),
        routine=_routine_counts(body),
        cohort=device.cohort,
    )


def device_lines(session: Session, now: datetime, skew_limit: timedelta) -> list[DeviceLine]:
    rows = session.exec(select(DeviceRow).order_by(col(DeviceRow.id))).all()
    return [device_line(session, row, now, skew_limit) for row in rows]


@dataclass(frozen=True)
class DeviceNow:
    """What a patient's device last said of itself, for the patient page: whether it is
    connected, what its safety state was (``idle``, ``playing``, ...), why check-in questions
    cannot be asked, if it said so, and the question it was waiting for an answer to, as of its
    latest telemetry."""

    device_id: str
    online: bool | None
    telemetry_at: datetime | None
    safety_state: str
    checkin_problem: str
    #: The check-in question the device was waiting for the person to answer ("" when none).
    checkin_waiting: str = ""


def device_now(session: Session, device_id: str) -> DeviceNow:
    state = session.get(DeviceStateRow, device_id)
    metrics, body = latest_telemetry(session, device_id)
    return DeviceNow(
        device_id=device_id,
        online=state.online if state is not None else None,
        telemetry_at=metrics.device_time if metrics is not None else None,
        safety_state=_find_text(body, frozenset({"safety_state"})),
        checkin_problem=_find_text(body, frozenset({"checkin"})),
        checkin_waiting=_find_text(body, frozenset({"checkin_waiting"})),
    )
