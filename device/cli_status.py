"""``resonera-device status``: what the device holds (its files, opened read-only) and, when the
service runs, what it says of itself through its control socket; as a table, or one JSON document
(``--json``, its keys in device/README.md, "Running").

Without the service nothing is guessed from old records: the safety state is "idle (service not
running)", since only the service plays, and no stored transition says what the state is now."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from resonera.device.cli_output import iso_utc, print_json
from resonera.device.cli_records import ago, open_ledger, read_store, session_json, table
from resonera.device.cli_service import service_status

if TYPE_CHECKING:
    from resonera.common.profile import HearingProfile
    from resonera.device.safety.dose_ledger import DoseStatus
    from resonera.device.settings import DeviceSettings
    from resonera.device.store import DeviceStore

#: The safety state when no service answers: nothing plays without it (a ``play`` of its own,
#: in another process, says so itself).
IDLE_WITHOUT_SERVICE = "idle"


def status_command(args: argparse.Namespace) -> int:
    settings, store = read_store(args)
    live = service_status(settings)
    try:
        document = _status(settings, store, live, args.limit)
    finally:
        store.close()
    if args.json:
        print_json(document)
    else:
        _print_status(document, says_ready="ready" in (live or {}))
    return 0


def _week(settings: DeviceSettings, profile: HearingProfile) -> DoseStatus | None:
    """The rolling week, None when no dose ledger exists yet (nothing has played)."""
    from resonera.device.trusted_time import DoseClock  # the ledger's own import cost, only here

    ledger = open_ledger(settings)
    if ledger is None:
        return None
    try:
        return ledger.status(DoseClock(ledger).now(), profile.dose_mode)
    finally:
        ledger.close()


def _status(
    settings: DeviceSettings, store: DeviceStore, live: dict[str, Any] | None, limit: int
) -> dict[str, Any]:
    """The status as the JSON document ``--json`` prints; the table is made from it too."""
    from resonera.device.version import agent_version

    stats = store.outbox_stats()
    applied = store.applied_desired()
    pending = store.pending_desired()
    profile = store.applied_profile() or settings.profile
    week = _week(settings, profile)
    last_ack = store.meta("last_ack_at")
    service = live or {}
    playing = service.get("playing")
    return {
        "device": settings.device_id,
        "data_dir": str(settings.data_dir),
        "agent_version": agent_version(),
        "service_running": live is not None,
        "link": service.get("link"),
        "link_error": service.get("link_error"),
        "playing": (
            {"program": playing, "for_s": service.get("playing_for_s")} if playing else None
        ),
        "safety_link": service.get("safety_link"),
        "safety_state": _safety_state(live),
        "ready": service.get("ready"),
        "shut_out": _shut_out(service.get("shut_out")),
        "routine": service.get("routine") or {},
        "dose": (
            None
            if week is None
            else {
                "mode": profile.dose_mode,
                "week_fraction": week.measured_fraction,
                "seconds": week.seconds,
                "corrupted": week.corrupted,
            }
        ),
        "outbox": {
            "depth": stats.depth,
            "bytes": stats.bytes,
            "by_kind": dict(sorted(stats.by_kind.items())),
            "oldest": iso_utc(stats.oldest),
            "metrics_thinned": stats.metrics_thinned,
        },
        "sessions_waiting": int(service.get("sessions_waiting", stats.by_kind.get("session", 0))),
        "last_sync": iso_utc(datetime.fromisoformat(last_ack)) if last_ack else None,
        "desired": {
            "version": applied.version if applied else 0,
            "applied_at": iso_utc(applied.applied_at) if applied else None,
            "pending_version": pending.version if pending is not None else None,
        },
        "max_level_dba": profile.max_level_dba,
        "output": profile.output,
        "agent_update": _agent_update(settings),
        "recent_sessions": [session_json(record) for record in store.sessions(limit=limit)],
    }


def _agent_update(settings: DeviceSettings) -> dict[str, Any] | None:
    """What ``data_dir/agent/state.json`` says of updates (None: slots not set up, or unreadable:
    ``update status`` says why): the good slot's version, a version on trial, the last failure."""
    from resonera.device.updater.launcher import LaunchError, read_state, state_path

    agent = settings.data_dir / "agent"
    if not state_path(agent).exists():
        return None
    try:
        state = read_state(agent)
    except LaunchError:
        return None
    good, trial, failure = state.get("good"), state.get("trial"), state.get("failure")
    return {
        "good_version": good.get("version") if isinstance(good, dict) else None,
        "trial_version": trial.get("version") if isinstance(trial, dict) else None,
        "last_failure": (
            {"version": failure.get("version"), "reason": failure.get("reason")}
            if isinstance(failure, dict)
            else None
        ),
    }


def _shut_out(said: Any) -> dict[str, Any] | None:
    """The service's ``shut_out`` with ``since`` (Unix time there) as ISO 8601 UTC, as every time
    of the JSON documents."""
    if not isinstance(said, dict):
        return None
    since = said.get("since")
    if isinstance(since, int | float):
        since = iso_utc(datetime.fromtimestamp(since, UTC))
    elif isinstance(since, str):
        since = iso_utc(datetime.fromisoformat(since))
    return {**said, "since": since}


def _safety_state(live: dict[str, Any] | None) -> str:
    if live is None:
        return IDLE_WITHOUT_SERVICE
    word = live.get("safety_state")
    if isinstance(word, str) and word:
        return word
    return "playing" if live.get("playing") else "idle"  # a service of before issue 21


def _print_status(doc: dict[str, Any], *, says_ready: bool) -> None:
    """``says_ready``: the service tells whether a play would start now (it did not before issue
    21; then nothing is said of it rather than a guess)."""
    now = datetime.now(UTC)
    print(f"device {doc['device']}, data in {doc['data_dir']}")
    safety = doc["safety_state"] + ("" if doc["service_running"] else " (service not running)")
    rows = [("link", _link(doc)), ("safety state", safety)]
    if says_ready:
        ready = doc["ready"]
        rows.append(
            ("play", "ready" if not ready else f"refused now: {ready.get('message') or ready}")
        )
    shut_out = doc["shut_out"]
    if shut_out:
        since = shut_out.get("since")
        rows.append(
            (
                "shut out",
                f"{shut_out.get('kind', '?')}: {shut_out.get('reason', '')}"
                + (f", since {ago(datetime.fromisoformat(since), now)}" if since else ""),
            )
        )
    rows += [
        ("dose this week", _dose(doc["dose"])),
        ("outbox", _outbox(doc["outbox"], now)),
    ]
    waiting = doc["sessions_waiting"]
    if waiting:  # offline is not an error: they play here and sync later
        rows.append(("to sync", f"{waiting} session{'s' if waiting != 1 else ''} waiting to sync"))
    last_sync = doc["last_sync"]
    rows += [
        ("last sync", ago(datetime.fromisoformat(last_sync), now) if last_sync else "never"),
        ("desired state", _desired(doc["desired"], now)),
        ("max level", f"{doc['max_level_dba']:g} dBA ({doc['output']})"),
    ]
    update = doc["agent_update"]
    if update is not None:
        rows.append(("agent update", _update_line(update)))
    if doc["routine"]:
        counts = ", ".join(f"{count} {name}" for name, count in sorted(doc["routine"].items()))
        rows.append(("routine", f"{counts} (link and consent hand-overs, not safety events)"))
    table(rows)
    if doc["recent_sessions"]:
        print("recent sessions:")
        for session in doc["recent_sessions"]:
            started = datetime.fromisoformat(session["started_at"]).astimezone()
            print(
                f"  {started:%Y-%m-%d %H:%M:%S} {session['program']:<20} "
                f"{session['played_s']:7.1f} s  {session['outcome']}"
                f"{'  [simulation]' if session['simulation'] else ''}"
            )


def _update_line(update: dict[str, Any]) -> str:
    line = f"runs {update['good_version']} (its good slot)"
    if update["trial_version"]:
        line += f"; {update['trial_version']} on trial"
    failure = update["last_failure"]
    if failure:
        line += f"; last failed: {failure['reason']}"  # (the reason names its version)
    return line


def _link(doc: dict[str, Any]) -> str:
    if not doc["service_running"]:
        return "service not running (resonera-device run)"
    link = str(doc["link"])
    if doc["link_error"] and doc["link"] != "connected":
        link += f": {doc['link_error']}"
    playing = doc["playing"]
    if playing:
        link += f"; playing {playing['program']!r} for {playing['for_s'] or 0:.0f} s"
    if doc["safety_link"] is not None:
        link += f"; safety MCU link {doc['safety_link']}"
    return link


def _dose(dose: dict[str, Any] | None) -> str:
    if dose is None:
        return "nothing played yet (no dose ledger)"
    text = f"{dose['week_fraction'] * 100:.1f} % of the weekly allowance (mode {dose['mode']})"
    if dose["corrupted"]:
        text += " - the dose record is damaged: counted as fully used"
    return text


def _outbox(outbox: dict[str, Any], now: datetime) -> str:
    kinds = ", ".join(f"{count} {kind}" for kind, count in outbox["by_kind"].items())
    text = f"{outbox['depth']} record(s), {outbox['bytes'] / 1024:.1f} KiB" + (
        f" ({kinds})" if kinds else ""
    )
    if outbox["oldest"] is not None:
        text += f", oldest {ago(datetime.fromisoformat(outbox['oldest']), now)}"
    if outbox["metrics_thinned"]:
        text += f"; {outbox['metrics_thinned']} metrics thinned to stay in bounds"
    return text


def _desired(desired: dict[str, Any], now: datetime) -> str:
    if desired["version"]:
        applied_at = desired["applied_at"]
        text = f"version {desired['version']}, applied " + (
            ago(datetime.fromisoformat(applied_at), now) if applied_at else "(time unknown)"
        )
    else:
        text = "none yet (the provisioned profile applies)"
    if desired["pending_version"] is not None:
        text += f"; version {desired['pending_version']} waits for the session to end"
    return text
