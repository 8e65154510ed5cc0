"""What a checked batch writes, in the caller's transaction: the stored messages' rows
(insert-or-ignore on device and message id; an agent's update reports in ``update_report``, what
they mean for rollouts is ``updates.after_ingest``), their patients, check-ins, the daily dose of the
sessions new to the store, ``device_state`` (latest by seq, reported version, presence, clock) and
the quarantine. ``ingest`` checks and sorts the batch into a ``BatchPlan``; this stores it."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Connection, case

from resonera.common.agent_update import UpdateReport
from resonera.common.envelope import Envelope
from resonera.common.records import CheckInRecord, DesiredReport, SafetyEventRecord, SessionRecord
from resonera.common.routine_events import stored_event_type
from resonera.server.attribution import Attribution
from resonera.server.db import insert_ignore, upsert
from resonera.server.dose_rollup import add_session_doses, session_dose
from resonera.server.ingest_checks import CheckedMessage
from resonera.server.models import (
    DeviceStateRow,
    MessageRow,
    ProgramReportRow,
    QuarantineRow,
    SafetyEventRow,
    SessionRow,
    UpdateReportRow,
    table_of,
)

if TYPE_CHECKING:
    from resonera.server.desired import Outgoing
from resonera.server.outcomes import store_checkins

_KEY = ("device_id", "message_id")
_SESSION_COLUMNS: Final = frozenset(table_of(SessionRow).c.keys())
_LAST_COLUMNS: Final = (
    "last_seq",
    "last_message_id",
    "last_kind",
    "last_device_time",
    "last_received_at",
)


@dataclass
class BatchPlan:
    """A batch sorted into rows, before it touches the database."""

    valid: list[CheckedMessage] = field(default_factory=list)
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    #: (device, message id) of authentic messages quarantined for their body: acknowledged.
    refused: list[tuple[str, str]] = field(default_factory=list)
    status: dict[str, tuple[bool, datetime]] = field(default_factory=dict)
    #: Presence messages in the batch (not device records: not counted as received).
    presence: int = 0
    #: Per authenticated device, the smallest receive time − envelope time (seconds).
    skew: dict[str, float] = field(default_factory=dict)
    #: The assignments of the batch's devices (read once, for checks and attribution).
    attribution: Attribution | None = None
    #: Desired documents the batch's agent-update facts re-issued (``ingest._updates``).
    outgoing: list[Outgoing] = field(default_factory=list)


def store_batch(
    conn: Connection, plan: BatchPlan, now: datetime, *, skew: timedelta
) -> set[tuple[str, str]]:
    """Write ``plan``; the (device, message id) keys newly inserted (the others were stored
    already). ``skew``: the slack at an assignment's ends (``TimeBounds.skew``)."""
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    keys: set[tuple[str, str]] = set()
    for item in plan.valid:
        key = (item.envelope.device, item.envelope.id)
        if key not in keys:  # the same message twice in one batch: one row, acked once
            keys.add(key)
            rows[item.envelope.kind].append(_row(item, now))
    attribution = plan.attribution or Attribution(conn, set(), skew)
    for kind in ("session", "event"):
        for row in rows[kind]:
            at = row["started_at"] if kind == "session" else row["device_time"]
            row["patient_id"] = attribution.patient(row["device_id"], at)
    inserted: set[tuple[str, str]] = set()
    tables = {
        "session": table_of(SessionRow),
        "event": table_of(SafetyEventRow),
        "metrics": table_of(MessageRow),
        "reported": table_of(MessageRow),
        "checkin": table_of(MessageRow),
        "update": table_of(UpdateReportRow),
    }
    new_sessions: list[dict[str, Any]] = []
    for kind, kind_rows in rows.items():
        done = {
            (d, m)
            for d, m in insert_ignore(conn, tables[kind], kind_rows, key=_KEY, returning=_KEY)
        }
        inserted |= done
        if kind == "session":
            new_sessions = [r for r in kind_rows if (r["device_id"], r["message_id"]) in done]
    for item in plan.valid:
        key = (item.envelope.device, item.envelope.id)
        if isinstance(item.record, CheckInRecord) and key in inserted:
            patient = attribution.patient(key[0], item.record.answered_at)
            store_checkins(conn, key[0], patient, [item.record], now=now)
    add_session_doses(conn, new_sessions)
    _update_state(conn, plan, now)
    if plan.quarantine:
        conn.execute(table_of(QuarantineRow).insert(), plan.quarantine)
    return inserted


def _envelope_fields(envelope: Envelope, now: datetime) -> dict[str, Any]:
    return {
        "device_id": envelope.device,
        "message_id": envelope.id,
        "seq": envelope.seq,
        "device_time": envelope.time,
        "received_at": now,
    }


def _row(item: CheckedMessage, now: datetime) -> dict[str, Any]:
    envelope = item.envelope
    base = {
        **_envelope_fields(envelope, now),
        "sig_status": item.sig_status,
        "digest": item.digest,
    }
    if isinstance(item.record, SessionRecord):
        # The flat model's own values: no copy as model_dump makes, no per-field generator.
        fields = {k: v for k, v in vars(item.record).items() if k in _SESSION_COLUMNS}
        return {
            **base,
            **fields,
            "patient_id": None,
            "dose_fraction": session_dose(item.record, envelope.body),
        }
    if isinstance(item.record, SafetyEventRecord):
        # A routine hand-over sent by an agent from before issue 21 is kept, tagged
        # "routine:<counter>", so lists and exports leave it out (docs/safety-events.md).
        return {
            **base,
            "patient_id": None,
            "event_type": stored_event_type(item.record),
            "body": envelope.body,
        }
    if isinstance(item.record, UpdateReport):
        return {
            **base,
            "rollout": item.record.rollout,
            "state": item.record.state,
            "from_version": item.record.from_version,
            "to_version": item.record.to_version,
            "reason": item.record.reason,
            "component": item.record.component,
        }
    body = json.dumps(envelope.body, separators=(",", ":"), ensure_ascii=False)
    return {**base, "kind": envelope.kind, "body": body}


def _state_row(
    device_id: str, latest: Envelope | None, skew: float, now: datetime
) -> dict[str, Any]:
    """A ``device_state`` row: the batch's latest message (none: only quarantined ones, which
    move no ``last_*`` column) and the clock's skew."""
    row: dict[str, Any] = {"device_id": device_id, "clock_skew_s": skew, "clock_skew_at": now}
    if latest is None:
        return (
            row
            | dict.fromkeys(_LAST_COLUMNS)
            | {"last_seq": -1, "last_message_id": "", "last_kind": ""}
        )
    return row | {
        "last_seq": latest.seq,
        "last_message_id": latest.id,
        "last_kind": latest.kind,
        "last_device_time": latest.time,
        "last_received_at": now,
    }


def _update_state(conn: Connection, plan: BatchPlan, now: datetime) -> None:
    """``device_state``: the highest seq wins, whatever order messages arrived in."""
    table = table_of(DeviceStateRow)
    latest: dict[str, Envelope] = {}
    # Only "applied" moves the reported version: deferred and refused versions are not running.
    reported: dict[str, tuple[Envelope, int]] = {}
    reports: list[tuple[Envelope, DesiredReport]] = []
    for item in plan.valid:
        env = item.envelope
        if env.device not in latest or env.seq > latest[env.device].seq:
            latest[env.device] = env
        report = item.record
        if not isinstance(report, DesiredReport):
            continue
        reports.append((env, report))
        if (
            report.status == "applied"
            and report.desired_version is not None
            and (env.device not in reported or env.seq > reported[env.device][0].seq)
        ):
            reported[env.device] = (env, report.desired_version)
    _store_reports(conn, reports, now)
    if plan.skew:  # every device with a valid message has a skew: one statement for both
        upsert(
            conn,
            table,
            [_state_row(d, latest.get(d), skew, now) for d, skew in sorted(plan.skew.items())],
            key=("device_id",),
            # The last_* columns move only for a higher seq; the clock's skew with every batch.
            update={
                name: (
                    lambda ex, name=name: case(
                        (table.c.last_seq < ex.last_seq, ex[name]), else_=table.c[name]
                    )
                )
                for name in _LAST_COLUMNS
            }
            | {
                "clock_skew_s": lambda ex: ex.clock_skew_s,
                "clock_skew_at": lambda ex: ex.clock_skew_at,
            },
        )
    if reported:
        upsert(
            conn,
            table,
            [
                {"device_id": d, "reported_seq": e.seq, "reported_version": version}
                for d, (e, version) in sorted(reported.items())
            ],
            key=("device_id",),
            update={
                "reported_seq": lambda ex: ex.reported_seq,
                "reported_version": lambda ex: ex.reported_version,
            },
            where=lambda ex: table.c.reported_seq < ex.reported_seq,
        )
    if plan.status:
        upsert(
            conn,
            table,
            [
                {"device_id": d, "online": o, "status_at": t}
                for d, (o, t) in sorted(plan.status.items())
            ],
            key=("device_id",),
            update={"online": lambda ex: ex.online, "status_at": lambda ex: ex.status_at},
        )


def _latest_per_key(rows: list[dict[str, Any]], key: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per key, the highest ``seq``'s: one statement may not update a row twice."""
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        k = tuple(row[name] for name in key)
        if k not in best or row["seq"] > best[k]["seq"]:
            best[k] = row
    return [best[k] for k in sorted(best)]


def _store_reports(
    conn: Connection, reports: list[tuple[Envelope, DesiredReport]], now: datetime
) -> None:
    """What the batch's desired-state reports say beyond the applied version: each program's
    outcome for its version (``program_report``), the latest report whatever its status and the
    engine's capabilities (``device_state``); a higher seq wins, whatever the arrival order."""
    state = table_of(DeviceStateRow)
    programs: list[dict[str, Any]] = []
    latest: list[dict[str, Any]] = []
    capabilities: list[dict[str, Any]] = []
    for env, report in reports:
        if report.desired_version is not None:
            latest.append(
                {
                    "device_id": env.device,
                    "seq": env.seq,
                    "report_version": report.desired_version,
                    "report_status": report.status,
                    "report_reason": report.reason,
                }
            )
            programs.extend(
                {
                    "device_id": env.device,
                    "desired_version": report.desired_version,
                    "library_id": program.library_id,
                    "program_version": program.version,
                    "sha256": program.sha256,
                    "status": program.status,
                    "reason": program.reason,
                    "seq": env.seq,
                    "received_at": now,
                }
                for program in report.programs or ()
            )
        if report.capabilities is not None:
            capabilities.append(
                {
                    "device_id": env.device,
                    "seq": env.seq,
                    "capabilities": report.capabilities.model_dump(mode="json"),
                }
            )
    if programs:
        table = table_of(ProgramReportRow)
        upsert(
            conn,
            table,
            _latest_per_key(programs, ("device_id", "desired_version", "library_id")),
            key=("device_id", "desired_version", "library_id"),
            update={
                name: (lambda ex, name=name: ex[name])
                for name in ("program_version", "sha256", "status", "reason", "seq", "received_at")
            },
            where=lambda ex: table.c.seq < ex.seq,
        )
    if latest:
        upsert(
            conn,
            state,
            [
                {"device_id": r["device_id"], "report_seq": r["seq"]}
                | {k: r[k] for k in ("report_version", "report_status", "report_reason")}
                for r in _latest_per_key(latest, ("device_id",))
            ],
            key=("device_id",),
            update={
                name: (lambda ex, name=name: ex[name])
                for name in ("report_seq", "report_version", "report_status", "report_reason")
            },
            where=lambda ex: state.c.report_seq < ex.report_seq,
        )
    if capabilities:
        upsert(
            conn,
            state,
            [
                {
                    "device_id": r["device_id"],
                    "capabilities": r["capabilities"],
                    "capabilities_seq": r["seq"],
                }
                for r in _latest_per_key(capabilities, ("device_id",))
            ],
            key=("device_id",),
            update={
                "capabilities": lambda ex: ex.capabilities,
                "capabilities_seq": lambda ex: ex.capabilities_seq,
            },
            where=lambda ex: state.c.capabilities_seq < ex.capabilities_seq,
        )
