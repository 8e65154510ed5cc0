"""The fleet's alert conditions evaluated on the database, for the admin's devices page: the same
conditions, with the same thresholds (``alerts/rules.py``), as the Prometheus rules the server ships.

Where the two differ, and why:

- Prometheus holds a condition for the rule's ``for`` before it fires (30 min offline, 15 min of
  lag); the page says what is true now.
- Ingest lag and the quarantine share come from what the database keeps of the last window: the
  messages stored (sessions, safety events, telemetry and reports) and the messages quarantined,
  by the time ingest received them; the lag is the receive time less the device's stamp, as ingest
  measures it. A message sent again is stored once, so duplicates, which Prometheus counts as
  received, count for nothing here.
- Update failures are the update reports (``update_report``) saying ``failed`` or
  ``rolled_back`` received within the window, which is what the counter Prometheus takes the
  increase of counts.

Each query reads only rows of its window, except last seen and certificate ends, which read one
row per device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import Table, case, func, select
from sqlalchemy.engine import Connection

from resonera.server.alerts import rules
from resonera.server.models import (
    DeviceCertificateRow,
    DeviceRow,
    DeviceStateRow,
    MessageRow,
    QuarantineRow,
    SafetyEventRow,
    SessionRow,
    UpdateReportRow,
    table_of,
)

#: What ingest stores of the messages it takes (one row per message, with its receive time).
_STORED: tuple[Table, ...] = (
    table_of(SessionRow),
    table_of(SafetyEventRow),
    table_of(MessageRow),
    table_of(UpdateReportRow),
)


@dataclass(frozen=True)
class DeviceFinding:
    """A device a condition is about, and what about it (for a link to its row)."""

    device_id: str
    detail: str


@dataclass(frozen=True)
class Condition:
    """One alert condition as the page shows it: whether it is met now, the rule's words for
    what it watches, what was found, and the devices it is about."""

    rule: str
    title: str
    severity: str
    met: bool
    found: str
    devices: tuple[DeviceFinding, ...] = ()


@dataclass(frozen=True)
class FleetAlerts:
    conditions: tuple[Condition, ...]
    #: When the server last heard from each device (all devices; revoked ones too).
    last_heard: Mapping[str, datetime]
    #: When each device's current certificate ends (all devices with one).
    certificate_ends: Mapping[str, datetime]

    @property
    def met(self) -> tuple[Condition, ...]:
        return tuple(c for c in self.conditions if c.met)


def ago_text(span: timedelta) -> str:
    """A span for a sentence: "3 d 4 h", "5 h 02 min", "12 min", "40 s"."""
    seconds = max(0, int(span.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min" if minutes else f"{secs} s"


def last_heard(conn: Connection) -> dict[str, datetime]:
    """Per device: its last stored message, or its retained status saying online, whichever is
    later (as ``resonera_device_last_seen_timestamp_seconds``); devices never heard are absent."""
    state = table_of(DeviceStateRow)
    heard: dict[str, datetime] = {}
    for device_id, received, online, status_at in conn.execute(
        select(state.c.device_id, state.c.last_received_at, state.c.online, state.c.status_at)
    ):
        times = [t for t in (received, status_at if online else None) if t is not None]
        if times:
            heard[device_id] = max(times)
    return heard


def certificate_ends(conn: Connection) -> dict[str, datetime]:
    """Per device: the end of its current certificate (neither superseded nor revoked), as
    ``resonera_device_certificate_expiry_timestamp_seconds``."""
    cert = table_of(DeviceCertificateRow)
    return dict(
        conn.execute(
            select(cert.c.device_id, func.max(cert.c.not_after))
            .where(cert.c.superseded_at.is_(None), cert.c.revoked_at.is_(None))
            .group_by(cert.c.device_id)
        ).all()
    )


def revoked_devices(conn: Connection) -> set[str]:
    """The devices an admin revoked: no longer watched, neither here nor by the metrics."""
    device = table_of(DeviceRow)
    return set(conn.execute(select(device.c.id).where(device.c.revoked.is_(True))).scalars())


def _lag_seconds(conn: Connection, table: Table) -> Any:
    """SQL for a stored message's receive time less its device stamp, in seconds."""
    later, earlier = table.c.received_at, table.c.device_time
    if conn.dialect.name == "sqlite":  # times are text there; julianday reads them
        return (func.julianday(later) - func.julianday(earlier)) * 86400.0
    return func.extract("epoch", later - earlier)


def _stored_since(conn: Connection, since: datetime, late_s: float) -> tuple[int, int]:
    """Messages stored since ``since``, and how many of them came more than ``late_s`` late."""
    total = late = 0
    for table in _STORED:
        n, over = conn.execute(
            select(
                func.count(),
                func.coalesce(func.sum(case((_lag_seconds(conn, table) > late_s, 1), else_=0)), 0),
            ).where(table.c.received_at >= since)
        ).one()
        total, late = total + int(n), late + int(over)
    return total, late


def _offline(now: datetime, heard: Mapping[str, datetime], revoked: set[str]) -> Condition:
    quiet = sorted(
        (device_id, at)
        for device_id, at in heard.items()
        if device_id not in revoked and now - at > rules.OFFLINE_AFTER
    )
    return Condition(
        rule="ResoneraDeviceOffline",
        title=f"Devices unheard for {rules.OFFLINE_AFTER.days} days",
        severity="ticket",
        met=bool(quiet),
        found=f"{len(quiet)} device{'' if len(quiet) == 1 else 's'}" if quiet else "none",
        devices=tuple(
            DeviceFinding(device_id, f"last heard {ago_text(now - at)} ago")
            for device_id, at in quiet
        ),
    )


def _ingest_lag(conn: Connection, now: datetime) -> Condition:
    window, late_s = rules.INGEST_WINDOW, rules.INGEST_LAG_MEDIAN.total_seconds()
    total, late = _stored_since(conn, now - window, late_s)
    minutes = int(window.total_seconds() // 60)
    return Condition(
        rule="ResoneraIngestLagHigh",
        title=f"Ingest lag: half the messages more than {int(late_s // 60)} min late",
        severity="page",
        # The median is above the bound when more than half the messages are.
        met=2 * late > total,
        found=(
            f"{late} of {total} messages stored in the last {minutes} min came more than "
            f"{int(late_s // 60)} min after their device stamped them"
            if total
            else f"no messages in the last {minutes} min"
        ),
    )


def _quarantine(conn: Connection, now: datetime) -> Condition:
    since = now - rules.QUARANTINE_WINDOW
    quarantine = table_of(QuarantineRow)
    held = int(
        conn.execute(select(func.count()).where(quarantine.c.received_at >= since)).scalar_one()
    )
    stored, _late = _stored_since(conn, since, 0.0)
    received = stored + held
    share = held / received if received else 0.0
    minutes = int(rules.QUARANTINE_WINDOW.total_seconds() // 60)
    return Condition(
        rule="ResoneraQuarantineRateHigh",
        title=f"More than {rules.QUARANTINE_SHARE * 100:g} % of messages quarantined",
        severity="page",
        met=share > rules.QUARANTINE_SHARE,
        found=(
            f"{held} of {received} messages received in the last {minutes} min quarantined "
            f"({share * 100:.1f} %)"
            if received
            else f"no messages in the last {minutes} min"
        ),
    )


def _certificates(now: datetime, ends: Mapping[str, datetime], revoked: set[str]) -> Condition:
    ending = sorted(
        (at, device_id)
        for device_id, at in ends.items()
        if device_id not in revoked and at - now < rules.CERTIFICATE_WITHIN
    )
    return Condition(
        rule="ResoneraCertificateExpiring",
        title=f"Certificates ending within {rules.CERTIFICATE_WITHIN.days} days",
        severity="ticket",
        met=bool(ending),
        found=f"{len(ending)} device{'' if len(ending) == 1 else 's'}" if ending else "none",
        devices=tuple(
            DeviceFinding(
                device_id,
                f"ends in {ago_text(at - now)}" if at > now else f"ended {ago_text(now - at)} ago",
            )
            for at, device_id in ending
        ),
    )


#: The update reports that count as failures: nothing switched, or switched back.
UPDATE_FAILED_STATES: Final = ("failed", "rolled_back")


def update_failures(conn: Connection, since: datetime | None = None) -> dict[str, int]:
    """Update reports saying ``failed`` or ``rolled_back`` (received since ``since``; None: ever),
    per device: what ``resonera_update_failures_total`` counts."""
    reports = table_of(UpdateReportRow)
    query = (
        select(reports.c.device_id, func.count())
        .where(reports.c.state.in_(UPDATE_FAILED_STATES))
        .group_by(reports.c.device_id)
    )
    if since is not None:
        query = query.where(reports.c.received_at >= since)
    return {str(device): int(n) for device, n in conn.execute(query)}


def _failed_updates_text(total: int) -> str:
    if not total:
        return "none"
    return f"{total} failed or rolled back update{'' if total == 1 else 's'}"


def _updates(conn: Connection, now: datetime) -> Condition:
    by_device = update_failures(conn, now - rules.UPDATE_FAILURE_WINDOW)
    total = sum(by_device.values())
    return Condition(
        rule="ResoneraUpdateFailures",
        title="Updates reported failed in the last hour",
        severity="ticket",
        met=total > 0,
        found=_failed_updates_text(total),
        devices=tuple(
            DeviceFinding(device_id, f"{n} failed" if n > 1 else "failed")
            for device_id, n in sorted(by_device.items(), key=lambda item: (-item[1], item[0]))
        ),
    )


def _safety_faults(conn: Connection, now: datetime) -> Condition:
    events = table_of(SafetyEventRow)
    by_device = conn.execute(
        select(events.c.device_id, func.count())
        .where(
            events.c.received_at >= now - rules.SAFETY_FAULT_WINDOW,
            events.c.event_type.in_(rules.FAULT_TYPES),
        )
        .group_by(events.c.device_id)
        .order_by(func.count().desc(), events.c.device_id)
    ).all()
    total = sum(int(n) for _device, n in by_device)
    return Condition(
        rule="ResoneraSafetyFaultsHigh",
        title=f"More than {rules.SAFETY_FAULTS_MAX} safety faults in the last hour",
        severity="page",
        met=total > rules.SAFETY_FAULTS_MAX,
        found=f"{total} fault{'' if total == 1 else 's'} in the last hour",
        devices=tuple(
            DeviceFinding(str(device_id), f"{int(n)} fault{'' if int(n) == 1 else 's'}")
            for device_id, n in by_device
        ),
    )


def fleet_alerts(conn: Connection, now: datetime) -> FleetAlerts:
    """Every condition of ``alerts/rules.py`` as of ``now``, in the rules file's order."""
    revoked = revoked_devices(conn)
    heard, ends = last_heard(conn), certificate_ends(conn)
    return FleetAlerts(
        conditions=(
            _offline(now, heard, revoked),
            _ingest_lag(conn, now),
            _quarantine(conn, now),
            _certificates(now, ends, revoked),
            _updates(conn, now),
            _safety_faults(conn, now),
        ),
        last_heard=heard,
        certificate_ends=ends,
    )
