"""The commands that read what the device holds, each on the files themselves, opened read-only
(no running service needed, nothing created: "no store at …" on a device without one):
``history``, ``logs``, ``dose`` (and ``status``, in ``cli_status``, which reads them with these
helpers); and ``sync``, which sends the outbox. ``--json`` prints one JSON document (its keys in
device/README.md, "Running")."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import TYPE_CHECKING, Any

from resonera.common.dose import allowance_pa2s
from resonera.device.audio.progress import clock
from resonera.device.cli_args import settings_from_args
from resonera.device.cli_output import iso_utc, print_json

if TYPE_CHECKING:
    from resonera.common.records import CheckInRecord, SafetyEventRecord, SessionRecord
    from resonera.device.safety.dose_ledger import DoseLedger
    from resonera.device.settings import DeviceSettings
    from resonera.device.store import DeviceStore

# The sync (paho and the device's settings: 283 ms and 16 MB measured) and the dose ledger
# (cryptography: 30 ms and 7 MB) are imported by the commands that use them, so that the other
# commands, ``render`` first, start without them.

#: A session's LAeq at or below this was not measured (``SessionRecord.laeq_dba``'s floor).
NO_LEVEL_DBA = -100.0


def read_store(args: argparse.Namespace) -> tuple[DeviceSettings, DeviceStore]:
    """The settings from ``--config`` and the store they name, opened read-only: ``NothingStored``
    ("no store at …", one line, exit 1) when the device has none; nothing is created."""
    settings = settings_from_args(args)
    return settings, settings.open_store(read_only=True)


def open_ledger(settings: DeviceSettings) -> DoseLedger | None:
    """The dose ledger, read-only; None when there is none yet (no sound played)."""
    from resonera.device.localdb import NothingStored
    from resonera.device.safety.dose_ledger import DoseLedger  # cryptography: see the note above

    try:
        return DoseLedger.for_settings(settings, read_only=True)
    except NothingStored:
        return None


def sync_outbox(settings: DeviceSettings, store: DeviceStore, timeout_s: float) -> bool:
    """Try to empty the outbox within ``timeout_s``; print what happened."""
    from resonera.device.sync import DeviceSync  # paho: see the note above

    with DeviceSync(settings, store) as sync:
        shut_out = sync.shut_out
        if shut_out is not None:  # it would wait out the timeout for nothing (docs/shut-out.md)
            depth = store.outbox_depth()
            print(f"not synced: {shut_out.reason} ({depth} record(s) kept in the outbox)")
            return False
        drained = sync.drain(timeout_s)
        depth = store.outbox_depth()
        if drained:
            print("synced: the server has committed every record")
        else:
            why = sync.last_error or "no acknowledgement from the server yet"
            print(f"not synced yet ({why}); {depth} record(s) wait in the outbox")
    return drained


def sync_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    store = settings.open_store()
    return 0 if sync_outbox(settings, store, args.timeout) else 1


def ago(when: datetime | None, now: datetime) -> str:
    """``2026-12-07 03:10 (5 min ago)`` in local time; "never" for None."""
    if when is None:
        return "never"
    seconds = max(0.0, (now - when).total_seconds())
    if seconds < 90:
        span = f"{seconds:.0f} s"
    elif seconds < 90 * 60:
        span = f"{seconds / 60:.0f} min"
    elif seconds < 48 * 3600:
        span = f"{seconds / 3600:.1f} h"
    else:
        span = f"{seconds / 86400:.1f} days"
    return f"{when.astimezone():%Y-%m-%d %H:%M} ({span} ago)"


def table(rows: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def session_json(record: SessionRecord) -> dict[str, Any]:
    """A session in ``history --json`` and ``status --json``."""
    return {
        "session_id": record.session_id,
        "program": record.program_name,
        "program_library_id": record.program_library_id,
        "started_at": iso_utc(record.started_at),
        "ended_at": iso_utc(record.ended_at),
        "planned_s": record.planned_s,
        "played_s": record.played_s,
        "laeq_dba": record.laeq_dba if record.laeq_dba > NO_LEVEL_DBA else None,
        "dose_fraction": record.dose_fraction,
        "outcome": record.outcome,
        "reason": record.reason,
        "simulation": record.simulation,
    }


def _checkin_json(record: CheckInRecord, reason: str) -> dict[str, Any]:
    return {
        "session_id": record.session_id,
        "question_id": record.question_id,
        "phase": record.phase,
        "answered_at": iso_utc(record.answered_at),
        "value": record.value,
        "skipped": record.skipped,
        "skip_reason": (reason or None) if record.skipped else None,
    }


def _event_json(record: SafetyEventRecord) -> dict[str, Any]:
    return {
        "event_id": record.event_id,
        "at": iso_utc(record.at),
        "type": record.type,
        "from_state": record.from_state,
        "to_state": record.to_state,
        "cause": record.cause,
        "code": record.code,
        "simulation": record.simulation,
    }


def history_command(args: argparse.Namespace) -> int:
    _settings, store = read_store(args)
    try:
        sessions = store.sessions(limit=args.limit)
        checkins = store.checkins(limit=args.limit)
    finally:
        store.close()
    if args.json:
        print_json(
            {
                "sessions": [session_json(record) for record in sessions],
                "checkins": [_checkin_json(record, reason) for record, reason in checkins],
            }
        )
        return 0
    if not sessions:
        print("no session yet")
        return 0
    print(
        f"{'started':<16}  {'program':<18} {'played / planned':>17}  {'':<20} "
        f"{'LAeq':>9} {'dose':>7}  outcome"
    )
    for record in sessions:
        share = record.played_s / record.planned_s if record.planned_s else 1.0
        bar = ("#" * round(min(share, 1.0) * 20)).ljust(20, ".")
        laeq = f"{record.laeq_dba:5.1f} dBA" if record.laeq_dba > NO_LEVEL_DBA else f"{'-':>9}"
        print(
            f"{record.started_at.astimezone():%Y-%m-%d %H:%M}  {record.program_name[:18]:<18} "
            f"{clock(record.played_s):>7} / {clock(record.planned_s):<7}  {bar} "
            f"{laeq} {record.dose_fraction * 100:6.2f}%  {record.outcome}"
            f"{' (' + record.reason + ')' if record.reason else ''}"
            f"{'  [simulation]' if record.simulation else ''}"
        )
    stopped = sum(1 for r in sessions if r.outcome != "completed")
    played = sum(r.played_s for r in sessions)
    print(f"{len(sessions)} session(s), {clock(played)} played, {stopped} interrupted")
    _print_checkins(checkins)
    return 0


def _print_checkins(checkins: list[tuple[CheckInRecord, str]]) -> None:
    """The check-in answers (issue 12) under the sessions, most recent first."""
    if not checkins:
        return
    print(f"\n{'answered':<16}  {'question':<20} {'phase':<6}  answer")
    for record, reason in checkins:
        answer = (
            f"{record.value}/10" if not record.skipped else f"skipped ({reason or 'no reason'})"
        )
        print(
            f"{record.answered_at.astimezone():%Y-%m-%d %H:%M}  {record.question_id[:20]:<20} "
            f"{record.phase:<6}  {answer}"
        )


def logs_command(args: argparse.Namespace) -> int:
    _settings, store = read_store(args)
    try:
        events = store.events(limit=args.limit)
    finally:
        store.close()
    if args.json:
        print_json({"events": [_event_json(record) for record in reversed(events)]})
        return 0
    if not events:
        print("no safety event recorded")
        return 0
    for record in reversed(events):
        change = f" {record.from_state} -> {record.to_state}" if record.type == "transition" else ""
        sim = "  [simulation]" if record.simulation else ""
        print(
            f"{record.at.astimezone():%Y-%m-%d %H:%M:%S}  {record.type:<17}{change}  "
            f"{record.cause}{sim}"
        )
    return 0


def dose_command(args: argparse.Namespace) -> int:
    settings, store = read_store(args)
    try:
        mode = (store.applied_profile() or settings.profile).dose_mode
    finally:
        store.close()
    ledger = open_ledger(settings)
    if ledger is None:
        if args.json:
            print_json(
                {"mode": mode, "week_fraction": 0.0, "seconds": 0, "corrupted": False, "days": []}
            )
        else:
            print("rolling 7 days: no sound played on this device yet (no dose ledger)")
        return 0
    from resonera.device.trusted_time import DoseClock  # with the ledger's imports, only here

    now = DoseClock(ledger).now()  # the time the ledger dates by, not a wall clock read 1970
    try:
        status = ledger.status(now, mode)
        days = ledger.daily(now, days=args.days)
    finally:
        ledger.close()
    allowance = allowance_pa2s(mode)
    if args.json:
        print_json(
            {
                "mode": mode,
                "week_fraction": status.measured_fraction,
                "seconds": status.seconds,
                "corrupted": status.corrupted,
                "days": [
                    {"date": day.isoformat(), "fraction": pa2s / allowance} for day, pa2s in days
                ],
            }
        )
        return 0
    print(
        f"rolling 7 days: {status.measured_fraction * 100:.2f} % of the weekly sound allowance "
        f"(mode {mode}), {status.seconds / 3600:.1f} h of sound"
    )
    if status.corrupted:
        print("the dose record is damaged: counted as fully used until a clinician resets it")
    for day, pa2s in days:
        percent = pa2s / allowance * 100
        bar = "#" * min(50, round(percent / 2))
        print(f"  {day:%a %d %b}  {percent:6.2f} %  {bar}")
    return 0
