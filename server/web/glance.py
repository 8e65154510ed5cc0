"""What a clinician reads first: the facts that answer "is this person safe, and is it working?",
for the patient page's top, the patients list's attention list and the printed report.

Plain data from ``crud`` and the models (a count per event kind is the one query of its own: crud
lists events, it does not group them). The thresholds are named here and in
``server/web/README.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import func
from sqlmodel import Session, col, select

from resonera.common.routine_events import ROUTINE_TYPE_PREFIX
from resonera.server import crud
from resonera.server.analytics import ear_level_dba, is_silent
from resonera.server.models import SafetyEventRow, SessionRow

#: Event kinds that need a clinician's look; "open" = one of these in the last ``OPEN_WINDOW``.
ATTENTION_EVENTS: Final = frozenset(
    {
        "fault",
        "warning",
        "dose_reached",
        "dose_stop",
        "limits_refused",
        "incompatible",
        "no_monitor",
        "session_refused",
        "mcu_restarted",
    }
)
#: Kinds that mean the hardware itself reported a problem (the attention list's "fault").
FAULT_EVENTS: Final = frozenset({"fault", "mcu_restarted", "no_monitor"})
OPEN_WINDOW: Final = timedelta(days=7)
#: The attention list: a rolling 7-day dose above this share of the patient's allowance.
DOSE_ATTENTION: Final = 0.8
#: The attention list: fewer sessions than prescribed a week in this many last days.
MISSED_WINDOW: Final = timedelta(days=7)
#: The attention list: a device not heard from for this long.
OFFLINE_AFTER: Final = timedelta(days=2)
#: Events listed per page on the patient page (the groups above count them all).
EVENTS_PER_PAGE: Final = 25

#: How each telemetry reading is shown: its name, its unit and its decimals.
_READINGS: Final[Mapping[str, tuple[str, str, int]]] = {
    "amp_temp_c": ("amplifier", "°C", 1),
    "supply_current_a": ("supply current", "A", 2),
    "output_vrms": ("output", "V rms", 2),
    "dc_offset_mv": ("DC offset", "mV", 1),
    "ear_spl_db": ("ear-cup level", "dB SPL", 1),
    "fault_code": ("fault code", "", 0),
}


@dataclass(frozen=True)
class Reading:
    name: str
    text: str


def readings(raw: object) -> tuple[Reading, ...]:
    """An event's telemetry readings as people read them: named, rounded, with their units
    (a float32 sent as ``0.30000001192092896`` is "0.30 A"); unknown ones as they came."""
    if not isinstance(raw, Mapping):
        return ()
    out = []
    for key, value in sorted(raw.items()):
        name, unit, digits = _READINGS.get(str(key), (str(key).replace("_", " "), "", 2))
        if isinstance(value, bool):
            text = "yes" if value else "no"
        elif isinstance(value, int | float):
            text = f"{value:.{digits}f}" + (f" {unit}" if unit else "")
        else:
            text = str(value)
        out.append(Reading(name, text))
    return tuple(out)


@dataclass(frozen=True)
class EventGroup:
    """The safety events of one kind in a period: how many, the latest, whether to look."""

    kind: str
    count: int
    latest: datetime
    attention: bool


def event_groups(session: Session, patient_id: str, since: datetime) -> tuple[EventGroup, ...]:
    """The patient's safety events since ``since`` by kind: those needing attention first, then
    the most frequent."""
    rows = session.exec(
        select(
            col(SafetyEventRow.event_type),
            func.count(),
            func.max(col(SafetyEventRow.device_time)),
        )
        .where(
            col(SafetyEventRow.patient_id) == patient_id,
            col(SafetyEventRow.device_time) >= since,
            col(SafetyEventRow.event_type).not_like(f"{ROUTINE_TYPE_PREFIX}%"),
        )
        .group_by(col(SafetyEventRow.event_type))
    ).all()
    groups = [
        EventGroup(kind, int(count), latest, kind in ATTENTION_EVENTS)
        for kind, count, latest in rows
    ]
    groups.sort(key=lambda g: (not g.attention, -g.count, g.kind))
    return tuple(groups)


@dataclass(frozen=True)
class SessionLevel:
    """A session's level as the page shows it: at the ear (dB(A), from the dose the device
    metered through its calibration) beside the signal's (dBFS); silent says so."""

    silent: bool
    ear_dba: float | None
    rms_dbfs: float
    peak_dbfs: float


def session_level(row: SessionRow) -> SessionLevel:
    return SessionLevel(
        silent=is_silent(row.rms_dbfs),
        ear_dba=ear_level_dba(row.dose_fraction, row.played_s),
        rms_dbfs=row.rms_dbfs,
        peak_dbfs=row.peak_dbfs,
    )


def last_session(session: Session, patient_id: str) -> SessionRow | None:
    found = crud.list_sessions(session, patient_ids=[patient_id], limit=1)
    return found[0] if found else None


@dataclass(frozen=True)
class Attention:
    """Why a patient is on the attention list (empty: not on it)."""

    faults: int
    dose_share: float
    missed: int
    offline_for: timedelta | None

    @property
    def reasons(self) -> tuple[str, ...]:
        out = []
        if self.faults:
            out.append(f"{self.faults} fault{'' if self.faults == 1 else 's'} in 7 days")
        if self.dose_share > DOSE_ATTENTION:
            out.append(f"dose at {self.dose_share * 100:.0f} % of the allowance")
        if self.missed:
            out.append(f"{self.missed} session{'' if self.missed == 1 else 's'} missed in 7 days")
        if self.offline_for is not None:
            days = self.offline_for.days
            out.append(
                f"device offline for {days} day{'' if days == 1 else 's'}"
                if days
                else "device never heard from"
            )
        return tuple(out)


def attention(
    *,
    faults: int,
    dose_7d: float,
    allowance: float,
    done_7d: int,
    per_week: int,
    last_sync: datetime | None,
    has_device: bool,
    now: datetime,
) -> Attention:
    """The attention facts of one patient (pure: the caller gathers them)."""
    offline: timedelta | None = None
    if has_device:
        if last_sync is None:
            offline = timedelta(0)
        elif now - last_sync >= OFFLINE_AFTER:
            offline = now - last_sync
    return Attention(
        faults=faults,
        dose_share=dose_7d / allowance if allowance > 0 else 0.0,
        missed=max(0, per_week - done_7d),
        offline_for=offline,
    )


def fault_count(events: Sequence[Any]) -> int:
    """Faults among ``event_groups``' groups."""
    return sum(g.count for g in events if g.kind in FAULT_EVENTS)
