"""What the clinicians' dashboard pages show, built from ``crud`` and ``desired`` (no queries of
their own where those have one): the patients list, one patient, the check-in questions form.
Plain data, so pages, tests and the benchmark share it. The admins' devices page is
``device_views``."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from sqlmodel import Session, col, select

from resonera.common.profile import MAX_CHECKIN_QUESTIONS
from resonera.server import crud
from resonera.server.crypto import FieldCipher
from resonera.server.desired import DesiredService, config_document
from resonera.server.models import (
    DeviceDesiredRow,
    DeviceStateRow,
    PatientConfigRow,
    PatientRow,
    SafetyEventRow,
    SessionRow,
)
from resonera.server.schemas import AdherenceWeek, DoseReport, Limits, PatientPublic
from resonera.server.web.device_views import DeviceNow, device_now
from resonera.server.web.glance import (
    EVENTS_PER_PAGE,
    OPEN_WINDOW,
    Attention,
    EventGroup,
    attention,
    event_groups,
    fault_count,
    last_session,
)

PERIODS: Final = (7, 30, 90)
SortKey = Literal["name", "device", "last_sync", "sessions", "dose", "events"]
SORT_KEYS: Final[tuple[SortKey, ...]] = (
    "name",
    "device",
    "last_sync",
    "sessions",
    "dose",
    "events",
)
#: At most this many sessions of one patient on a page (90 days of several a day).
TIMELINE_MAX: Final = 500


# -- the patients list ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PatientLine:
    id: str
    name: str
    devices: tuple[str, ...]
    last_sync: datetime | None
    sessions_done: int
    sessions_prescribed: int
    dose_7d: float
    #: The patient's weekly allowance (a fraction of 80 dB(A) for 40 h).
    allowance: float
    open_events: int
    attention: Attention

    @property
    def dose_percent(self) -> float:
        return self.dose_7d * 100.0


def _last_sync(session: Session, devices: Sequence[str]) -> datetime | None:
    times = [
        state.last_received_at
        for device_id in devices
        if (state := session.get(DeviceStateRow, device_id)) is not None
        and state.last_received_at is not None
    ]
    return max(times, default=None)


def patient_line(
    session: Session, cipher: FieldCipher, patient: PatientRow, now: datetime
) -> PatientLine:
    today = crud.utc_today(now)
    current = DesiredService.current(session, patient.id)
    per_week = current.sessions_per_week if current is not None else 0
    devices = tuple(DesiredService.devices_of(session, patient.id, now))
    week = crud.adherence_report(
        session, patient_id=patient.id, today=today, weeks=1, per_week=per_week
    ).weeks[0]
    dose = crud.dose_report(session, patient_id=patient.id, today=today, days=7)
    groups = event_groups(session, patient.id, now - OPEN_WINDOW)
    last_sync = _last_sync(session, devices)
    return PatientLine(
        id=patient.id,
        name=crud.patient_public(session, cipher, patient).name,
        devices=devices,
        last_sync=last_sync,
        sessions_done=week.done,
        sessions_prescribed=week.prescribed,
        dose_7d=dose.rolling_7d,
        allowance=dose.allowance_fraction,
        open_events=sum(g.count for g in groups if g.attention),
        attention=attention(
            faults=fault_count(groups),
            dose_7d=dose.rolling_7d,
            allowance=dose.allowance_fraction,
            done_7d=sum(day.sessions for day in dose.days),
            per_week=per_week,
            last_sync=last_sync,
            has_device=bool(devices),
            now=now,
        ),
    )


def _sort_value(line: PatientLine, key: SortKey) -> Any:
    if key == "name":
        return line.name.casefold()
    if key == "device":
        return ",".join(line.devices)
    if key == "last_sync":
        return line.last_sync.timestamp() if line.last_sync is not None else float("-inf")
    if key == "sessions":
        return (line.sessions_done / line.sessions_prescribed) if line.sessions_prescribed else -1
    if key == "dose":
        return line.dose_7d
    return line.open_events


def patient_lines(
    session: Session,
    cipher: FieldCipher,
    patient_ids: Sequence[str],
    now: datetime,
    *,
    search: str = "",
    sort: SortKey = "name",
    descending: bool = False,
) -> list[PatientLine]:
    """The patients' lines, filtered by a case-insensitive part of the name or id, and sorted.
    Names are ciphertext at rest, so the search runs here, after decryption."""
    if not patient_ids:
        return []
    rows = session.exec(select(PatientRow).where(col(PatientRow.id).in_(patient_ids))).all()
    lines = [patient_line(session, cipher, row, now) for row in rows]
    needle = search.strip().casefold()
    if needle:
        lines = [line for line in lines if needle in line.name.casefold() or needle in line.id]
    lines.sort(key=lambda line: (_sort_value(line, sort), line.name.casefold(), line.id))
    if descending:
        lines.reverse()
    return lines


# -- one patient ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceSync:
    """Whether a device of the patient runs the patient's current configuration."""

    device_id: str
    #: The device's desired-state version carrying the current config, None if not sent yet.
    desired_version: int | None
    reported_version: int | None

    @property
    def applied(self) -> bool:
        return (
            self.desired_version is not None
            and self.reported_version is not None
            and self.reported_version >= self.desired_version
        )


@dataclass(frozen=True)
class PatientView:
    patient: PatientPublic
    days: int
    dose: DoseReport
    sessions: Sequence[SessionRow]
    #: One page of the period's events, newest first (``event_page`` of ``event_pages``).
    events: Sequence[SafetyEventRow]
    event_page: int
    event_pages: int
    #: The period's events by kind, those needing attention first.
    event_groups: tuple[EventGroup, ...]
    #: Open: the kinds needing attention in the last 7 days.
    open_groups: tuple[EventGroup, ...]
    week: AdherenceWeek
    last_session: SessionRow | None
    last_sync: datetime | None
    #: What each device last said of itself (its latest telemetry).
    devices_now: tuple[DeviceNow, ...]
    config_version: int
    profile: dict[str, Any]
    limits: Limits
    sessions_per_week: int
    devices: tuple[DeviceSync, ...]

    @property
    def pending(self) -> tuple[str, ...]:
        """Devices that have not reported the current version applied (nothing set: none)."""
        if self.config_version == 0:
            return ()
        return tuple(d.device_id for d in self.devices if not d.applied)

    @property
    def profile_json(self) -> str:
        return json.dumps(self.profile, indent=2, sort_keys=True)

    @property
    def profile_json_without_checkins(self) -> str:
        """The profile for its JSON field: the check-in questions have fields of their own."""
        rest = {key: value for key, value in self.profile.items() if key != "checkins"}
        return json.dumps(rest, indent=2, sort_keys=True)

    @property
    def question_slots(self) -> list[dict[str, str]]:
        raw = self.profile.get("checkins")
        return question_slots(raw if isinstance(raw, list) else [])


# -- check-in questions in the profile form -------------------------------------------------------

#: A question's fields (``common.profile.CheckInQuestion``) and their defaults on an empty row.
CHECKIN_FIELDS: Final = {
    "id": "",
    "text": "",
    "low_label": "",
    "high_label": "",
    "when": "both",
    "better": "higher",
}
_WHERE: Final = re.compile(r"\bcheckins\.(\d+)\.(\w+)")


def question_slots(questions: Sequence[Any]) -> list[dict[str, str]]:
    """Form rows for check-in questions: the given ones, then empty rows up to the most allowed
    (adding a question is filling a row; removing one is ticking its box)."""
    rows = [
        {name: str(q.get(name, default)) for name, default in CHECKIN_FIELDS.items()}
        for q in questions
        if isinstance(q, Mapping)
    ]
    blank = {**CHECKIN_FIELDS, "remove": ""}
    return [{**row, "remove": ""} for row in rows] + [
        dict(blank) for _ in range(MAX_CHECKIN_QUESTIONS - len(rows))
    ]


def _nth(values: Sequence[str], index: int, default: str) -> str:
    return values[index].strip() if index < len(values) else default


def posted_questions(
    columns: Mapping[str, Sequence[str]], removed: Collection[str]
) -> tuple[list[dict[str, str]], list[dict[str, str]], list[int]]:
    """From the form's columns (one value per row, by field): every row as posted (to show it
    again), the questions to keep (not removed, not blank), and the row index of each."""
    count = max((len(values) for values in columns.values()), default=0)
    rows, kept, where = [], [], []
    for index in range(count):
        row = {
            name: _nth(columns.get(name, ()), index, default)
            for name, default in CHECKIN_FIELDS.items()
        }
        rows.append({**row, "remove": "1" if str(index) in removed else ""})
        blank = not any(row[name] for name in ("id", "text", "low_label", "high_label"))
        if str(index) not in removed and not blank:
            kept.append(row)
            where.append(index)
    return rows, kept, where


def question_error(message: str, where: Sequence[int]) -> str:
    """``checkins.0.when: ...`` as the form shows it: "question 2, when: ..." (its row)."""

    def row(found: re.Match[str]) -> str:
        index = int(found.group(1))
        number = where[index] + 1 if index < len(where) else index + 1
        return f"question {number}, {found.group(2)}"

    return _WHERE.sub(row, message)


def device_sync(
    session: Session, config: PatientConfigRow | None, devices: Sequence[str]
) -> tuple[DeviceSync, ...]:
    out = []
    for device_id in devices:
        desired = session.get(DeviceDesiredRow, device_id)
        state = session.get(DeviceStateRow, device_id)
        carries = (
            desired is not None
            and config is not None
            and desired.patient_id == config.patient_id
            and desired.patient_version == config.version
        )
        out.append(
            DeviceSync(
                device_id=device_id,
                desired_version=desired.version if carries and desired is not None else None,
                reported_version=state.reported_version if state is not None else None,
            )
        )
    return tuple(out)


def patient_view(
    session: Session,
    cipher: FieldCipher,
    patient: PatientRow,
    now: datetime,
    days: int,
    *,
    event_page: int = 1,
) -> PatientView:
    """The patient page's data for the last ``days`` UTC days; ``event_page`` (from 1) of the
    period's events, clamped to the last page."""
    today = crud.utc_today(now)
    since = datetime.combine(today - timedelta(days=days - 1), datetime.min.time(), now.tzinfo)
    current = DesiredService.current(session, patient.id)
    document = config_document(current)
    groups = event_groups(session, patient.id, since)
    pages = max(1, -(-sum(g.count for g in groups) // EVENTS_PER_PAGE))
    page = min(max(1, event_page), pages)
    devices = DesiredService.devices_of(session, patient.id, now)
    sessions = crud.list_sessions(
        session, patient_ids=[patient.id], since=since, limit=TIMELINE_MAX
    )
    return PatientView(
        patient=crud.patient_public(session, cipher, patient),
        days=days,
        dose=crud.dose_report(session, patient_id=patient.id, today=today, days=days),
        sessions=sessions,
        events=crud.list_events(
            session,
            patient_id=patient.id,
            event_type=None,
            since=since,
            until=None,
            limit=EVENTS_PER_PAGE,
            offset=(page - 1) * EVENTS_PER_PAGE,
        ),
        event_page=page,
        event_pages=pages,
        event_groups=groups,
        open_groups=tuple(
            g for g in event_groups(session, patient.id, now - OPEN_WINDOW) if g.attention
        ),
        week=crud.adherence_report(
            session,
            patient_id=patient.id,
            today=today,
            weeks=1,
            per_week=current.sessions_per_week if current is not None else 0,
        ).weeks[0],
        # Newest first: the period's first is the last session, unless the period has none.
        last_session=sessions[0] if sessions else last_session(session, patient.id),
        last_sync=_last_sync(session, devices),
        devices_now=tuple(device_now(session, device_id) for device_id in devices),
        config_version=current.version if current is not None else 0,
        profile=document["profile"],
        limits=Limits.model_validate(document["limits"]),
        sessions_per_week=document["sessions_per_week"],
        devices=device_sync(session, current, devices),
    )
