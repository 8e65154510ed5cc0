"""``resonera-device``'s arguments: the parser tree, each command's options and the function that
runs it (``args.func``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from resonera.device.cli_playback import play_command, render_command
from resonera.device.cli_records import (
    dose_command,
    history_command,
    logs_command,
    status_command,
    sync_command,
)
from resonera.device.cli_service import run_command, stop_command
from resonera.device.cli_standalone import (
    enroll_command,
    measure_command,
    programs_command,
    prompts_build_command,
)

#: What ``resonera-device --help`` says first.
DESCRIPTION = """\
``resonera-device``: play or render a program, list presets, sync, and see what the device holds.

``PROGRAM`` is a preset name (``resonera-device programs`` lists them) or the path of a ``.toml``
program or an SBaGen ``.sbg`` schedule.
"""


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
    parser = argparse.ArgumentParser(prog="resonera-device", description=DESCRIPTION)
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
    play_p.set_defaults(func=play_command)

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
    render.set_defaults(func=render_command)

    sync = with_config(sub.add_parser("sync", help="send what waits in the outbox"))
    sync.add_argument("--timeout", type=float, default=30.0)
    sync.add_argument("--now", action="store_true", help="(the default) sync at once")
    sync.set_defaults(func=sync_command)

    status = with_config(
        sub.add_parser("status", help="link, safety state, dose, outbox, last sync, desired state")
    )
    status.add_argument("--limit", type=int, default=5, help="recent sessions shown")
    status.set_defaults(func=status_command)

    run = with_config(
        sub.add_parser("run", help="the long-running service: sync, monitor, control socket")
    )
    run.add_argument("--simulation", action="store_true", help="play without the safety MCU")
    run.add_argument("--sink", choices=["auto", "pyaudio", "wav", "null"], default=None)
    run.set_defaults(func=run_command)

    enroll = with_config(
        sub.add_parser("enroll", help="get this device's identity: from the server, or a bundle")
    )
    enroll.add_argument("--server", default=None, help="https://host:port of the server")
    enroll.add_argument("--code", default=None, help="the one-time enrollment code")
    enroll.add_argument("--serial", default=None, help="default: the board's serial number")
    enroll.add_argument("--ca-file", type=Path, default=None, help="CA of the server's HTTPS")
    enroll.add_argument("--bundle", type=Path, default=None, help="a factory bundle folder")
    enroll.add_argument("--fleet-ca", type=Path, default=None, help="fleet root (for --bundle)")
    enroll.set_defaults(func=enroll_command)

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
    prompts_build.set_defaults(func=prompts_build_command)

    stop = with_config(sub.add_parser("stop", help="ask the running service to stop playing"))
    stop.set_defaults(func=stop_command)

    history = with_config(sub.add_parser("history", help="sessions: planned vs played, why"))
    history.add_argument("--limit", type=int, default=20)
    history.set_defaults(func=history_command)

    logs = with_config(sub.add_parser("logs", help="recent safety events"))
    logs.add_argument("--limit", type=int, default=30)
    logs.set_defaults(func=logs_command)

    measure = sub.add_parser("measure", help="LAeq, highest MEL and dose of a WAV/FLAC file")
    measure.add_argument("file", type=Path)
    measure.add_argument("--calibration", type=Path, default=None, help="calibration profile")
    measure.add_argument(
        "--spl-at-full-scale", type=float, default=None, metavar="DB",
        help="dB SPL of a full-scale 1 kHz sine (peak 1.0)",
    )  # fmt: skip
    measure.add_argument("--mode", type=int, choices=[1, 2], default=1)
    measure.add_argument("--json", action="store_true", help="one JSON object")
    measure.set_defaults(func=measure_command)

    dose = with_config(sub.add_parser("dose", help="this week's sound dose, day by day"))
    dose.add_argument("--days", type=int, default=7)
    dose.set_defaults(func=dose_command)

    programs = sub.add_parser("programs", help="list the preset programs")
    programs.set_defaults(func=programs_command)
    return parser
