"""``resonera-device``'s arguments: the parser tree, each command's options and the function that
runs it (``args.func``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resonera.device.cli_mcu import mcu_update_command
from resonera.device.cli_output import Command, ends_quietly
from resonera.device.cli_playback import play_command, render_command
from resonera.device.cli_records import (
    dose_command,
    history_command,
    logs_command,
    sync_command,
)
from resonera.device.cli_service import run_command, stop_command
from resonera.device.cli_standalone import (
    enroll_command,
    measure_command,
    programs_command,
    prompts_build_command,
)
from resonera.device.cli_status import status_command
from resonera.device.cli_updates import (
    slots_adopt_command,
    slots_install_launcher_command,
    update_status_command,
)

#: What ``resonera-device --help`` says first.
DESCRIPTION = """\
resonera-device: play or render a program, list presets, sync, and see what the device holds.

PROGRAM is a preset name ('resonera-device programs' lists them) or the path of a .toml program or
an SBaGen .sbg schedule. -v and --version go anywhere, before or after the command; status,
history, dose, logs and programs print one JSON document with --json.
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


class _Version(argparse.Action):
    """``--version``: print the agent's version and exit. The version is looked up only when asked
    (the package's metadata), so the parser every command builds stays cheap."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "print the agent's version and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        from resonera.device.version import agent_version

        print(f"resonera-device {agent_version()}")
        parser.exit()


def _everywhere() -> argparse.ArgumentParser:
    """The options every parser of the tree takes, before or after the command. ``-v`` has no
    default of its own (``SUPPRESS``): a command's parser must not reset what was given before it
    (``resonera-device -v status``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log everything from DEBUG up, libraries included",
    )
    common.add_argument("--version", action=_Version)
    return common


def build_parser() -> argparse.ArgumentParser:
    everywhere = _everywhere()
    parser = argparse.ArgumentParser(
        prog="resonera-device",
        description=DESCRIPTION,
        parents=[everywhere],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="what to do (COMMAND --help)"
    )

    def command(
        name: str, summary: str, func: Command, *, config: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=summary, description=summary, parents=[everywhere])
        if config:
            p.add_argument("--config", type=Path, default=None, help="TOML settings file")
        p.set_defaults(func=ends_quietly(func))
        return p

    def with_format(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--format", choices=["16", "24", "float"], default="16", help="WAV sample format"
        )

    def with_json(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--json", action="store_true", help="one JSON document (device/README.md, Running)"
        )

    sink_help = "where the sound goes (default: the settings' sink)"
    play_p = command("play", "play a program, record it, sync it", play_command)
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
    play_p.add_argument(
        "--sink", choices=["auto", "pyaudio", "wav", "null"], default=None, help=sink_help
    )
    play_p.add_argument("--wav", type=Path, default=None, help="WAV file for the wav sink")
    play_p.add_argument("--no-sync", action="store_true", help="leave the record in the outbox")
    play_p.add_argument(
        "--sync-timeout",
        type=float,
        default=15.0,
        metavar="S",
        help="seconds to wait for the server's acknowledgement after playing (default 15)",
    )
    play_p.add_argument(
        "--via-service", action="store_true", help="ask the running service to play it"
    )

    render = command(
        "render", "render a program to a WAV file, faster than real time", render_command
    )
    render.add_argument("program", help="preset name or program file (.toml, .sbg)")
    render.add_argument("out", type=Path, help="WAV file to write")
    with_format(render)
    render.add_argument(
        "--rate",
        type=int,
        choices=[44100, 48000],
        default=None,
        help="sample rate in Hz (default: the settings')",
    )
    render.add_argument(
        "--block", type=_block_frames, default=65536, help="frames per block (64-65536)"
    )
    render.add_argument("--calibration", type=Path, default=None, help="calibration profile")

    sync = command("sync", "send what waits in the outbox", sync_command)
    sync.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds to wait for the server to acknowledge everything (default 30)",
    )
    sync.add_argument("--now", action="store_true", help="(the default) sync at once")

    status = command(
        "status",
        "link, safety state, readiness, dose, outbox, last sync, desired state",
        status_command,
    )
    status.add_argument("--limit", type=int, default=5, help="recent sessions shown (default 5)")
    with_json(status)

    run = command("run", "the long-running service: sync, monitor, control socket", run_command)
    run.add_argument("--simulation", action="store_true", help="play without the safety MCU")
    run.add_argument(
        "--sink", choices=["auto", "pyaudio", "wav", "null"], default=None, help=sink_help
    )

    enroll = command(
        "enroll", "get this device's identity: from the server, or a bundle", enroll_command
    )
    enroll.add_argument("--server", default=None, help="https://host:port of the server")
    enroll.add_argument("--code", default=None, help="the one-time enrollment code")
    enroll.add_argument("--serial", default=None, help="default: the board's serial number")
    enroll.add_argument("--ca-file", type=Path, default=None, help="CA of the server's HTTPS")
    enroll.add_argument("--bundle", type=Path, default=None, help="a factory bundle folder")
    enroll.add_argument("--fleet-ca", type=Path, default=None, help="fleet root (for --bundle)")

    prompts = sub.add_parser(
        "prompts", help="spoken prompts (buttons-only use)", parents=[everywhere]
    )
    prompts_sub = prompts.add_subparsers(
        dest="prompts_command", required=True, metavar="WHAT", help="what to do with them"
    )
    prompts_build = prompts_sub.add_parser(
        "build", help="speak the prompts with espeak-ng and cache them", parents=[everywhere]
    )
    prompts_build.add_argument("--config", type=Path, default=None, help="TOML settings file")
    prompts_build.add_argument("--lang", default="en", help="the person's language (e.g. de)")
    prompts_build.add_argument("--dir", type=Path, default=None, help="default: DATA_DIR/prompts")
    prompts_build.add_argument("--calibration", type=Path, default=None, help="output calibration")
    prompts_build.add_argument(
        "--rate",
        type=int,
        choices=[44100, 48000],
        default=None,
        help="sample rate in Hz (default: the settings')",
    )
    prompts_build.add_argument("--level-dba", type=float, default=60.0, help="at the ear (45-75)")
    prompts_build.set_defaults(func=ends_quietly(prompts_build_command))

    command("stop", "ask the running service to stop playing", stop_command)

    mcu = command(
        "mcu-update",
        "flash the safety MCU with a signed firmware image (the agent stopped: it owns the port)",
        mcu_update_command,
    )
    mcu.add_argument(
        "image", type=Path, help="the signed image file (resonera-provision update sign-firmware)"
    )

    history = command(
        "history", "sessions: planned vs played, why; check-in answers", history_command
    )
    history.add_argument("--limit", type=int, default=20, help="sessions shown (default 20)")
    with_json(history)

    logs = command("logs", "recent safety events", logs_command)
    logs.add_argument("--limit", type=int, default=30, help="events shown (default 30)")
    with_json(logs)

    measure = command(
        "measure", "LAeq, highest MEL and dose of a WAV/FLAC file", measure_command, config=False
    )
    measure.add_argument("file", type=Path, help="the WAV or FLAC file")
    measure.add_argument("--calibration", type=Path, default=None, help="calibration profile")
    measure.add_argument(
        "--spl-at-full-scale", type=float, default=None, metavar="DB",
        help="dB SPL of a full-scale 1 kHz sine (peak 1.0)",
    )  # fmt: skip
    measure.add_argument(
        "--mode", type=int, choices=[1, 2], default=1, help="dose mode shown in words (default 1)"
    )
    measure.add_argument("--json", action="store_true", help="one JSON object")

    dose = command("dose", "this week's sound dose, day by day", dose_command)
    dose.add_argument("--days", type=int, default=7, help="days shown (default 7)")
    with_json(dose)

    programs = command("programs", "list the preset programs", programs_command, config=False)
    with_json(programs)

    def group(name: str, summary: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        p = sub.add_parser(name, help=summary, description=summary, parents=[everywhere])
        return p.add_subparsers(
            dest=f"{name}_command", required=True, metavar="WHAT", help="what to do (WHAT --help)"
        )

    def member(
        within: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        summary: str,
        func: Command,
    ) -> argparse.ArgumentParser:
        p = within.add_parser(name, help=summary, description=summary, parents=[everywhere])
        p.add_argument("--config", type=Path, default=None, help="TOML settings file")
        p.set_defaults(func=ends_quietly(func))
        return p

    # agent updates (docs/updates.md): the two slots and what state.json says of them
    update = group("update", "agent updates: what the device runs, tries or went back from")
    with_json(
        member(update, "status", "good slot, version, trial, last failure", update_status_command)
    )
    slots = group("slots", "the agent's two slots: adopt an installation, install the launcher")
    adopt = member(slots, "adopt", "make an installed agent's venv slot a", slots_adopt_command)
    adopt.add_argument("path", type=Path, help="the venv (e.g. /opt/resonera/.venv)")
    member(
        slots,
        "install-launcher",
        "copy the launcher systemd starts to DATA_DIR/agent/launch.py",
        slots_install_launcher_command,
    )
    return parser
