"""``resonera-device``: play a program, sync, and see what the device holds."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from resonera.common.cli import run_cli
from resonera.common.program import BUILTIN_PROGRAMS, Program, builtin_program, load_program_toml
from resonera.common.settings import load_settings
from resonera.device.agent import open_sink, play_session
from resonera.device.settings import DeviceSettings
from resonera.device.store import DeviceStore
from resonera.device.sync import DeviceSync


def _settings(args: argparse.Namespace, **overrides: Any) -> DeviceSettings:
    return load_settings(DeviceSettings, args.config, **overrides)


def _program(args: argparse.Namespace) -> Program:
    if args.program_file is not None:
        path: Path = args.program_file
        return load_program_toml(path.read_text(encoding="utf-8"), source=str(path))
    return builtin_program(args.program)


def _sync(settings: DeviceSettings, store: DeviceStore, timeout_s: float) -> bool:
    """Try to empty the outbox within ``timeout_s``; print what happened."""
    with DeviceSync(settings, store) as sync:
        drained = sync.drain(timeout_s)
        depth = store.outbox_depth()
        if drained:
            print("synced: the server has committed every record")
        else:
            why = sync.last_error or "no acknowledgement from the server yet"
            print(f"not synced yet ({why}); {depth} record(s) wait in the outbox")
    return drained


def _play(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.simulation:
        overrides["simulation"] = True
    if args.sink is not None:
        overrides["sink"] = args.sink
    if args.serial is not None:
        overrides["serial_url"] = args.serial
    settings = _settings(args, **overrides)
    program = _program(args)
    store = DeviceStore(settings.store_path)
    stop = threading.Event()

    def _request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()  # fade out, then record the session as stopped

    previous = signal.signal(signal.SIGINT, _request_stop)
    signal.signal(signal.SIGTERM, _request_stop)
    try:
        sink = open_sink(settings, args.wav)
        record = play_session(settings, store, program, sink, stop=stop)
    finally:
        signal.signal(signal.SIGINT, previous)
    wav_path = getattr(sink, "path", None)
    where = f"WAV file {wav_path}" if isinstance(wav_path, Path) else sink.kind
    print(
        f"played {program.name!r} for {record.played_s:.1f} s of {record.planned_s:.1f} s "
        f"to {where}: {record.outcome}{' (' + record.reason + ')' if record.reason else ''}"
    )
    if record.simulation:
        print("simulation mode: played without the safety MCU; the record says so")
    print(f"session {record.session_id} stored; {store.outbox_depth()} record(s) in the outbox")
    if not args.no_sync:
        _sync(settings, store, args.sync_timeout)
    return 0 if record.outcome != "fault" else 3


def _sync_cmd(args: argparse.Namespace) -> int:
    settings = _settings(args)
    store = DeviceStore(settings.store_path)
    return 0 if _sync(settings, store, args.timeout) else 1


def _status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    store = DeviceStore(settings.store_path)
    print(f"device {settings.device_id}, data in {settings.data_dir}")
    print(f"outbox: {store.outbox_depth()} record(s) waiting for the server")
    for record in store.sessions(limit=args.limit):
        print(
            f"  {record.started_at:%Y-%m-%d %H:%M:%S} {record.program_name:<20} "
            f"{record.played_s:7.1f} s  {record.outcome}{'  [simulation]' if record.simulation else ''}"
        )
    return 0


def _programs(_args: argparse.Namespace) -> int:
    for name, program in sorted(BUILTIN_PROGRAMS.items()):
        print(f"{name:<14} {program.duration_s:7.1f} s  {program.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resonera-device", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", type=Path, default=None, help="TOML settings file")
        return p

    play = with_config(sub.add_parser("play", help="play a program, record it, sync it"))
    source = play.add_mutually_exclusive_group()
    source.add_argument("--program", default="demo-alpha", help="built-in program name")
    source.add_argument("--program-file", type=Path, default=None, help="TOML program file")
    play.add_argument("--simulation", action="store_true", help="play without the safety MCU")
    play.add_argument("--serial", default=None, help="safety MCU port (path or pyserial URL)")
    play.add_argument("--sink", choices=["auto", "pyaudio", "wav", "null"], default=None)
    play.add_argument("--wav", type=Path, default=None, help="WAV file for the wav sink")
    play.add_argument("--no-sync", action="store_true", help="leave the record in the outbox")
    play.add_argument("--sync-timeout", type=float, default=15.0)
    play.set_defaults(func=_play)

    sync = with_config(sub.add_parser("sync", help="send what waits in the outbox"))
    sync.add_argument("--timeout", type=float, default=30.0)
    sync.set_defaults(func=_sync_cmd)

    status = with_config(sub.add_parser("status", help="outbox depth and recent sessions"))
    status.add_argument("--limit", type=int, default=10)
    status.set_defaults(func=_status)

    programs = sub.add_parser("programs", help="list built-in programs")
    programs.set_defaults(func=_programs)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)
