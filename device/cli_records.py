"""The commands that read what the device holds, each on the files themselves (no running service
needed): ``status``, ``history``, ``logs``, ``dose``; and ``sync``, which sends the outbox."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from resonera.common.dose import allowance_pa2s
from resonera.device.audio.progress import clock
from resonera.device.cli_args import settings_from_args
from resonera.device.cli_service import service_status

if TYPE_CHECKING:
    from resonera.common.records import CheckInRecord
    from resonera.device.settings import DeviceSettings
    from resonera.device.store import DeviceStore

# The sync (paho and the device's settings: 283 ms and 16 MB measured) and the dose ledger
# (cryptography: 30 ms and 7 MB) are imported by the commands that use them, so that the other
# commands, ``render`` first, start without them.


def sync_outbox(settings: DeviceSettings, store: DeviceStore, timeout_s: float) -> bool:
    """Try to empty the outbox within ``timeout_s``; print what happened."""
    from resonera.device.sync import DeviceSync  # paho: see the note above

    with DeviceSync(settings, store) as sync:
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


def _ago(when: datetime | None, now: datetime) -> str:
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


def _table(rows: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def status_command(args: argparse.Namespace) -> int:
    from resonera.device.safety.dose_ledger import DoseLedger  # cryptography: see the note above

    settings = settings_from_args(args)
    store = settings.open_store()
    now = datetime.now(UTC)
    live = service_status(settings)
    stats = store.outbox_stats()
    applied = store.applied_desired()
    pending = store.pending_desired()
    profile = store.applied_profile() or settings.profile
    ledger = DoseLedger.for_settings(settings)
    try:
        week = ledger.status(time.time(), profile.dose_mode)
    finally:
        ledger.close()
    transitions = [e for e in store.events(limit=200) if e.type == "transition"]
    last_ack = store.meta("last_ack_at")

    if live is None:
        link = "service not running (resonera-device run)"
    else:
        link = str(live["link"])
        if live.get("link_error") and live["link"] != "connected":
            link += f": {live['link_error']}"
        if live.get("playing"):
            link += f"; playing {live['playing']!r} for {live['playing_for_s']:.0f} s"
        if live.get("safety_link") is not None:
            link += f"; safety MCU link {live['safety_link']}"
    if transitions:
        last = transitions[0]
        safety = f"{last.to_state} since {_ago(last.at, now)}: {last.cause}"
    else:
        safety = "idle (no session yet)"
    dose = (
        f"{week.measured_fraction * 100:.1f} % of the weekly allowance (mode {profile.dose_mode})"
    )
    if week.corrupted:
        dose += " - the dose record is damaged: counted as fully used"
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(stats.by_kind.items()))
    outbox = f"{stats.depth} record(s), {stats.bytes / 1024:.1f} KiB" + (
        f" ({kinds})" if kinds else ""
    )
    if stats.oldest is not None:
        outbox += f", oldest {_ago(stats.oldest, now)}"
    if stats.metrics_thinned:
        outbox += f"; {stats.metrics_thinned} metrics thinned to stay in bounds"
    desired = (
        f"version {applied.version}, applied {_ago(applied.applied_at, now)}"
        if applied
        else ("none yet (the provisioned profile applies)")
    )
    if pending is not None:
        desired += f"; version {pending.version} waits for the session to end"
    print(f"device {settings.device_id}, data in {settings.data_dir}")
    _table(
        [
            ("link", link),
            ("safety state", safety),
            ("dose this week", dose),
            ("outbox", outbox),
            ("last sync", _ago(datetime.fromisoformat(last_ack), now) if last_ack else "never"),
            ("desired state", desired),
            ("max level", f"{profile.max_level_dba:g} dBA ({profile.output})"),
        ]
    )
    sessions = store.sessions(limit=args.limit)
    if sessions:
        print("recent sessions:")
        for record in sessions:
            print(
                f"  {record.started_at.astimezone():%Y-%m-%d %H:%M:%S} {record.program_name:<20} "
                f"{record.played_s:7.1f} s  {record.outcome}"
                f"{'  [simulation]' if record.simulation else ''}"
            )
    return 0


def history_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    store = settings.open_store()
    sessions = store.sessions(limit=args.limit)
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
        laeq = f"{record.laeq_dba:5.1f} dBA" if record.laeq_dba > -100.0 else f"{'-':>9}"
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
    _print_checkins(store.checkins(limit=args.limit))
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
    settings = settings_from_args(args)
    store = settings.open_store()
    events = store.events(limit=args.limit)
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
    from resonera.device.safety.dose_ledger import DoseLedger  # cryptography: see the note above

    settings = settings_from_args(args)
    mode = settings.profile.dose_mode
    ledger = DoseLedger.for_settings(settings)
    now = time.time()
    status = ledger.status(now, mode)
    print(
        f"rolling 7 days: {status.measured_fraction * 100:.2f} % of the weekly sound allowance "
        f"(mode {mode}), {status.seconds / 3600:.1f} h of sound"
    )
    if status.corrupted:
        print("the dose record is damaged: counted as fully used until a clinician resets it")
    allowance = allowance_pa2s(mode)
    for day, pa2s in ledger.daily(now, days=args.days):
        percent = pa2s / allowance * 100
        bar = "#" * min(50, round(percent / 2))
        print(f"  {day:%a %d %b}  {percent:6.2f} %  {bar}")
    return 0
