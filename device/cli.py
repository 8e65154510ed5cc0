"""``resonera-device``: play or render a program, list presets, sync, and see what the device holds.

``PROGRAM`` is a preset name (``resonera-device programs`` lists them) or the path of a ``.toml``
program or an SBaGen ``.sbg`` schedule.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from resonera.common.cli import run_cli
from resonera.common.errors import ConfigError
from resonera.common.program import (
    BUILTIN_PROGRAMS,
    Program,
    builtin_program,
    load_program_file,
)
from resonera.device.audio.chain import render_pipeline
from resonera.device.audio.progress import Progress, clock
from resonera.engine.audio.calibration import (
    DEFAULT_CALIBRATION,
    Calibration,
    load_calibration_file,
)
from resonera.engine.audio.sinks import AudioSink, PyAudioSink, WavSink
from resonera.engine.pipeline import Playhead

if TYPE_CHECKING:
    from resonera.common.records import CheckInRecord
    from resonera.device.settings import DeviceSettings
    from resonera.device.store import DeviceStore

# The settings (pydantic-settings), the store (SQL), the sync (MQTT) and the agent are imported by
# the commands that use them: ``render`` (without --config) and ``programs`` start without them; a
# render loads the safety chain (with scipy's compiled filter cascade alone), never the ledger's SQL.

PROGRAM_SUFFIXES = (".toml", ".sbg")


def _settings(args: argparse.Namespace, **overrides: Any) -> DeviceSettings:
    from resonera.common.settings import load_settings
    from resonera.device.settings import DeviceSettings

    return load_settings(DeviceSettings, args.config, **overrides)


def resolve_program(spec: str) -> Program:
    """A preset by name, or a ``.toml``/``.sbg`` file by path (checked before any sample)."""
    path = Path(spec)
    if path.suffix.lower() in PROGRAM_SUFFIXES or path.exists():
        return load_program_file(path)
    return builtin_program(spec)


def _program(args: argparse.Namespace) -> Program:
    given = [value for value in (args.program, args.program_option, args.program_file) if value]
    if len(given) > 1:
        raise ConfigError("give the program once (PROGRAM, --program or --program-file)")
    if args.program_file is not None:
        return load_program_file(args.program_file)
    return resolve_program(str(given[0]) if given else "demo-alpha")


def _calibration(args: argparse.Namespace) -> Calibration | None:
    path: Path | None = getattr(args, "calibration", None)
    return load_calibration_file(path) if path is not None else None


def _sync(settings: DeviceSettings, store: DeviceStore, timeout_s: float) -> bool:
    """Try to empty the outbox within ``timeout_s``; print what happened."""
    from resonera.device.sync import DeviceSync

    with DeviceSync(settings, store) as sync:
        drained = sync.drain(timeout_s)
        depth = store.outbox_depth()
        if drained:
            print("synced: the server has committed every record")
        else:
            why = sync.last_error or "no acknowledgement from the server yet"
            print(f"not synced yet ({why}); {depth} record(s) wait in the outbox")
    return drained


class _Display:
    """Progress plus, while playing, the level at the ear as the safety chain metered it."""

    def __init__(self, program: Program, *, verb: str) -> None:
        self.program = program
        self.level_dba: float | None = None
        self.progress = Progress(
            program.duration_s,
            steps=len(program.steps),
            verb=verb,
            line_every_s=10.0 if verb == "playing" else max(10.0, program.duration_s / 10),
        )

    def level(self) -> str | None:
        return None if self.level_dba is None else f"{self.level_dba:5.1f} dB(A) SPL"

    def set_level(self, level_dba: float) -> None:
        """The chain's A-weighted level of the last block (its meter: nothing is metered twice)."""
        self.level_dba = level_dba

    def __call__(self, block: NDArray[np.float32], renderer: Playhead) -> None:
        step = renderer.step_index
        label = self.program.steps[step].label if step is not None else ""
        self.progress.update(renderer.position_s, step, label, self.level())

    def finish(self, position_s: float) -> None:
        self.progress.finish(position_s, self.level())

    def say(self, message: str) -> None:
        """A line for the person (dose, warnings), above the progress line on a terminal."""
        if sys.stdout.isatty():
            sys.stdout.write("\r\033[K")
        print(message, flush=True)


def _play_sink(args: argparse.Namespace, settings: DeviceSettings) -> AudioSink:
    if args.out is not None:
        return WavSink(args.out, sample_format=args.format)
    if args.device is not None:
        return PyAudioSink(output_device=args.device)
    from resonera.device.session import open_sink

    return open_sink(settings, args.wav)


def _play(args: argparse.Namespace) -> int:
    if args.via_service:
        return _play_via_service(args)
    from resonera.device.session import Session, SessionWatch, standalone_parts

    overrides: dict[str, Any] = {}
    if args.simulation:
        overrides["simulation"] = True
    if args.sink is not None:
        overrides["sink"] = args.sink
    if args.serial is not None:
        overrides["serial_url"] = args.serial
    if args.calibration is not None:
        overrides["calibration_file"] = args.calibration
    settings = _settings(args, **overrides)
    program = _program(args)
    store = settings.open_store()
    display = _Display(program, verb="playing")
    watch = SessionWatch(notify=display.say, on_block=display, on_level=display.set_level)
    # this process's own owners: one monitor on the MCU's port, the ledger, the recorder
    with standalone_parts(settings, store) as parts:
        session = Session(parts, watch=watch)

        def _request_stop(_signum: int, _frame: FrameType | None) -> None:
            session.stop()  # fade out, then record the session as stopped

        previous = signal.signal(signal.SIGINT, _request_stop)
        signal.signal(signal.SIGTERM, _request_stop)
        try:
            sink = _play_sink(args, settings)
            record = session.run(program, sink)
        finally:
            signal.signal(signal.SIGINT, previous)
    display.finish(record.played_s)
    wav_path = getattr(sink, "path", None)
    where = f"WAV file {wav_path}" if isinstance(wav_path, Path) else sink.kind
    print(
        f"played {program.name!r} for {record.played_s:.1f} s of {record.planned_s:.1f} s "
        f"to {where}: {record.outcome}{' (' + record.reason + ')' if record.reason else ''}"
    )
    underruns = int(getattr(sink, "underruns", 0))
    if underruns:
        print(f"the sound device ran dry {underruns} time(s) (silence was played meanwhile)")
    if record.simulation:
        print("simulation mode: played without the safety MCU; the record says so")
    print(f"session {record.session_id} stored; {store.outbox_depth()} record(s) in the outbox")
    if not args.no_sync:
        _sync(settings, store, args.sync_timeout)
    return 0 if record.outcome != "fault" else 3


def _render(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    program = resolve_program(args.program)
    settings = _settings(args) if args.config is not None else None
    rate: int = args.rate or (settings.sample_rate if settings is not None else 44100)
    # Every render goes through the safety chain, held to some calibration's levels at the ear.
    pipeline, default = render_pipeline(settings, program, rate, _calibration(args))
    # An export: the operating system flushes it to disk (no fsync), as audio tools do; a writer
    # thread encodes and writes while the next blocks are synthesised (read ahead on a thread).
    sink = WavSink(args.out, sample_format=args.format, durable=False, background=True)
    if default:
        print(
            f"no calibration given: levels held as for the packaged {DEFAULT_CALIBRATION!r} "
            "calibration (--calibration FILE for your output)"
        )
    display = _Display(program, verb="rendering")
    result = pipeline.play(
        sink,
        block_frames=args.block,
        read_ahead=True,
        on_block=display,
        compensate_latency=True,
    )
    display.finish(result.played_s)
    elapsed = time.perf_counter() - started
    speed = result.played_s / elapsed if elapsed > 0 else float("inf")
    print(
        f"rendered {program.name!r}: {clock(result.played_s)} of audio at {rate} Hz "
        f"({args.format}) to {args.out} in {elapsed:.2f} s ({speed:.0f}x real time); "
        f"peak {result.peak_dbfs:.1f} dBFS, rms {result.rms_dbfs:.1f} dBFS"
    )
    if result.outcome != "completed":
        print(f"the render ended early ({result.outcome}): {result.reason}", file=sys.stderr)
    return 0 if result.outcome == "completed" else 3


def _sync_cmd(args: argparse.Namespace) -> int:
    settings = _settings(args)
    store = settings.open_store()
    return 0 if _sync(settings, store, args.timeout) else 1


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


def _service_status(settings: DeviceSettings) -> dict[str, Any] | None:
    from resonera.device.service import ServiceUnavailable, send_command

    try:
        reply = send_command(settings.control_socket_path, "status", timeout_s=2.0)
    except (ServiceUnavailable, OSError):
        return None
    try:
        value = json.loads(reply)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _status(args: argparse.Namespace) -> int:
    from resonera.device.safety.dose_ledger import DoseLedger

    settings = _settings(args)
    store = settings.open_store()
    now = datetime.now(UTC)
    live = _service_status(settings)
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


def _history(args: argparse.Namespace) -> int:
    settings = _settings(args)
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


def _logs(args: argparse.Namespace) -> int:
    settings = _settings(args)
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


def _enroll(args: argparse.Namespace) -> int:
    from resonera.device.enroll import enroll_command

    settings = _settings(args)
    print(
        enroll_command(
            settings,
            server=args.server,
            code=args.code,
            serial=args.serial,
            ca_file=args.ca_file or settings.enroll_ca_file,
            bundle=args.bundle,
            fleet_ca=args.fleet_ca,
        )
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    from resonera.device.memory import limit_native_heap

    limit_native_heap()  # before the service's threads start: each would get a malloc arena
    from resonera.device.service import DeviceService

    overrides: dict[str, Any] = {}
    if args.simulation:
        overrides["simulation"] = True
    if args.sink is not None:
        overrides["sink"] = args.sink
    settings = _settings(args, **overrides)
    return DeviceService(settings, resolve_program).run()


def _play_via_service(args: argparse.Namespace) -> int:
    from resonera.device.service import send_command

    settings = _settings(args)
    spec = (
        args.program
        or args.program_option
        or (str(args.program_file) if args.program_file else None)
    )
    reply = send_command(settings.control_socket_path, f"play {spec or 'demo-alpha'}")
    print(reply.removeprefix("ok ").removeprefix("error "))
    return 0 if reply.startswith("ok") else 1


def _stop(args: argparse.Namespace) -> int:
    from resonera.device.service import send_command

    reply = send_command(_settings(args).control_socket_path, "stop")
    print(reply.removeprefix("ok ").removeprefix("error "))
    return 0 if reply.startswith("ok") else 1


def _measure(args: argparse.Namespace) -> int:
    from resonera.engine.safety.measure import measure_file, spl_at_unit_rms_from_full_scale

    if (args.calibration is None) == (args.spl_at_full_scale is None):
        raise ConfigError("give exactly one of --calibration FILE or --spl-at-full-scale DB")
    if args.calibration is not None:
        spl_at_unit_rms = load_calibration_file(args.calibration).spl_at_unit_rms
    else:
        spl_at_unit_rms = spl_at_unit_rms_from_full_scale(args.spl_at_full_scale)
    result = measure_file(args.file, spl_at_unit_rms)
    if args.json:
        print(json.dumps(result.as_json()))
        return 0
    chosen = result.dose_mode1 if args.mode == 1 else result.dose_mode2
    print(f"{result.file}: {clock(result.duration_s)} at {result.sample_rate} Hz")
    print(f"  LAeq           {result.laeq_dba:6.1f} dBA")
    print(f"  highest MEL    {result.max_mel_dba:6.1f} dBA (1-second A-weighted level)")
    print(f"  dose, mode 1   {result.dose_mode1 * 100:8.3f} % of the weekly allowance (1.6 Pa²h)")
    print(f"  dose, mode 2   {result.dose_mode2 * 100:8.3f} % of the weekly allowance (0.51 Pa²h)")
    print(f"  (mode {args.mode} chosen: this file alone uses {chosen * 100:.3f} % of a week)")
    return 0


def _dose(args: argparse.Namespace) -> int:
    from resonera.common.dose import allowance_pa2s
    from resonera.device.safety.dose_ledger import DoseLedger

    settings = _settings(args)
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


def _programs(_args: argparse.Namespace) -> int:
    for name, program in sorted(BUILTIN_PROGRAMS.items()):
        kinds = sorted({layer.type for step in program.steps for layer in step.layers})
        phones = "  [headphones]" if program.needs_headphones else ""
        print(f"{name:<17} {clock(program.duration_s):>8}  {', '.join(kinds):<22}{phones}")
        print(f"{'':<17} {program.description}")
    return 0


def _prompts_build(args: argparse.Namespace) -> int:
    from resonera.device.prompts import build_prompts, prompts_dir

    directory, calibration_path, rate = args.dir, args.calibration, args.rate
    if directory is None or calibration_path is None or rate is None:
        settings = _settings(args)
        directory = directory or prompts_dir(settings.data_dir)
        calibration_path = calibration_path or settings.calibration_file
        rate = rate or settings.sample_rate
    if calibration_path is None:
        raise ConfigError("prompts need the output calibration: --calibration FILE")
    report = build_prompts(
        directory,
        load_calibration_file(calibration_path),
        language=args.lang,
        sample_rate=rate,
        level_dba=args.level_dba,
    )
    print(report.summary())
    return 0


def _block_frames(text: str) -> int:
    """``render --block``: frames per block, 64-65536 (big blocks make a render fast: each block
    costs the safety chain, the meters and the WAV encoder some Python overhead)."""
    try:
        frames = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of frames") from None
    if not 64 <= frames <= 65536:
        raise argparse.ArgumentTypeError(f"{frames} frames is outside 64-65536")
    return frames


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resonera-device", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", type=Path, default=None, help="TOML settings file")
        return p

    def with_format(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--format", choices=["16", "24", "float"], default="16", help="WAV sample format"
        )

    play_p = with_config(sub.add_parser("play", help="play a program, record it, sync it"))
    play_p.add_argument("program", nargs="?", default=None, help="preset name or program file")
    play_p.add_argument(
        "--program", dest="program_option", default=None, help="preset name (alias of PROGRAM)"
    )
    play_p.add_argument("--program-file", type=Path, default=None, help="program file (alias)")
    play_p.add_argument("--out", type=Path, default=None, help="play into this WAV file")
    with_format(play_p)
    play_p.add_argument("--device", default=None, help="sound output by name (or part of it)")
    play_p.add_argument("--calibration", type=Path, default=None, help="calibration profile")
    play_p.add_argument("--simulation", action="store_true", help="play without the safety MCU")
    play_p.add_argument("--serial", default=None, help="safety MCU port (path or pyserial URL)")
    play_p.add_argument("--sink", choices=["auto", "pyaudio", "wav", "null"], default=None)
    play_p.add_argument("--wav", type=Path, default=None, help="WAV file for the wav sink")
    play_p.add_argument("--no-sync", action="store_true", help="leave the record in the outbox")
    play_p.add_argument("--sync-timeout", type=float, default=15.0)
    play_p.add_argument(
        "--via-service", action="store_true", help="ask the running service to play it"
    )
    play_p.set_defaults(func=_play)

    render = with_config(
        sub.add_parser("render", help="render a program to a WAV file, faster than real time")
    )
    render.add_argument("program", help="preset name or program file (.toml, .sbg)")
    render.add_argument("out", type=Path, help="WAV file to write")
    with_format(render)
    render.add_argument("--rate", type=int, choices=[44100, 48000], default=None)
    render.add_argument(
        "--block", type=_block_frames, default=65536, help="frames per block (64-65536)"
    )
    render.add_argument("--calibration", type=Path, default=None, help="calibration profile")
    render.set_defaults(func=_render)

    sync = with_config(sub.add_parser("sync", help="send what waits in the outbox"))
    sync.add_argument("--timeout", type=float, default=30.0)
    sync.add_argument("--now", action="store_true", help="(the default) sync at once")
    sync.set_defaults(func=_sync_cmd)

    status = with_config(
        sub.add_parser("status", help="link, safety state, dose, outbox, last sync, desired state")
    )
    status.add_argument("--limit", type=int, default=5, help="recent sessions shown")
    status.set_defaults(func=_status)

    run = with_config(
        sub.add_parser("run", help="the long-running service: sync, monitor, control socket")
    )
    run.add_argument("--simulation", action="store_true", help="play without the safety MCU")
    run.add_argument("--sink", choices=["auto", "pyaudio", "wav", "null"], default=None)
    run.set_defaults(func=_run)

    enroll = with_config(
        sub.add_parser("enroll", help="get this device's identity: from the server, or a bundle")
    )
    enroll.add_argument("--server", default=None, help="https://host:port of the server")
    enroll.add_argument("--code", default=None, help="the one-time enrollment code")
    enroll.add_argument("--serial", default=None, help="default: the board's serial number")
    enroll.add_argument("--ca-file", type=Path, default=None, help="CA of the server's HTTPS")
    enroll.add_argument("--bundle", type=Path, default=None, help="a factory bundle folder")
    enroll.add_argument("--fleet-ca", type=Path, default=None, help="fleet root (for --bundle)")
    enroll.set_defaults(func=_enroll)

    prompts = sub.add_parser("prompts", help="spoken prompts (buttons-only use)")
    prompts_sub = prompts.add_subparsers(dest="prompts_command", required=True)
    prompts_build = with_config(
        prompts_sub.add_parser("build", help="speak the prompts with espeak-ng and cache them")
    )
    prompts_build.add_argument("--lang", default="en", help="the person's language (e.g. de)")
    prompts_build.add_argument("--dir", type=Path, default=None, help="default: DATA_DIR/prompts")
    prompts_build.add_argument("--calibration", type=Path, default=None, help="output calibration")
    prompts_build.add_argument("--rate", type=int, choices=[44100, 48000], default=None)
    prompts_build.add_argument("--level-dba", type=float, default=60.0, help="at the ear (45-75)")
    prompts_build.set_defaults(func=_prompts_build)

    stop = with_config(sub.add_parser("stop", help="ask the running service to stop playing"))
    stop.set_defaults(func=_stop)

    history = with_config(sub.add_parser("history", help="sessions: planned vs played, why"))
    history.add_argument("--limit", type=int, default=20)
    history.set_defaults(func=_history)

    logs = with_config(sub.add_parser("logs", help="recent safety events"))
    logs.add_argument("--limit", type=int, default=30)
    logs.set_defaults(func=_logs)

    measure = sub.add_parser("measure", help="LAeq, highest MEL and dose of a WAV/FLAC file")
    measure.add_argument("file", type=Path)
    measure.add_argument("--calibration", type=Path, default=None, help="calibration profile")
    measure.add_argument(
        "--spl-at-full-scale", type=float, default=None, metavar="DB",
        help="dB SPL of a full-scale 1 kHz sine (peak 1.0)",
    )  # fmt: skip
    measure.add_argument("--mode", type=int, choices=[1, 2], default=1)
    measure.add_argument("--json", action="store_true", help="one JSON object")
    measure.set_defaults(func=_measure)

    dose = with_config(sub.add_parser("dose", help="this week's sound dose, day by day"))
    dose.add_argument("--days", type=int, default=7)
    dose.set_defaults(func=_dose)

    programs = sub.add_parser("programs", help="list the preset programs")
    programs.set_defaults(func=_programs)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)
