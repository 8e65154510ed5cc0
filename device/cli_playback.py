"""The commands that send a program through the engine's pipeline, with a progress line: ``play``
(a session in this process, or ``--via-service``) and ``render`` (to a WAV file, faster than real
time)."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from resonera.common.errors import ConfigError
from resonera.common.program import Program, load_program_file
from resonera.device.audio.chain import render_pipeline
from resonera.device.audio.progress import Progress, clock
from resonera.device.cli_args import DEFAULT_PROGRAM, resolve_program, settings_from_args
from resonera.device.cli_records import sync_outbox
from resonera.device.cli_service import play_via_service_command
from resonera.engine.audio.calibration import (
    DEFAULT_CALIBRATION,
    Calibration,
    load_calibration_file,
)
from resonera.engine.audio.sinks import AudioSink, PyAudioSink, WavSink
from resonera.engine.pipeline import Playhead

if TYPE_CHECKING:
    from resonera.device.prescriptions import AssignedProgram
    from resonera.device.settings import DeviceSettings
    from resonera.device.store import DeviceStore

# A session (``resonera.device.session``: the store, the monitor's pyserial, cryptography; 271 ms
# and 15 MB measured) is imported by ``play`` alone: a render loads the safety chain (with scipy's
# compiled filter cascade alone), never the ledger's SQL.


def _program(args: argparse.Namespace) -> Program:
    given = [value for value in (args.program, args.program_option, args.program_file) if value]
    if len(given) > 1:
        raise ConfigError("give the program once (PROGRAM, --program or --program-file)")
    if args.program_file is not None:
        return load_program_file(args.program_file)
    return resolve_program(str(given[0]) if given else DEFAULT_PROGRAM)


def _program_to_play(
    args: argparse.Namespace, settings: DeviceSettings, store: DeviceStore
) -> tuple[Program, AssignedProgram | None]:
    """What ``play`` plays, by the service's rule (``prescriptions.choose_program``): a prescribed
    program by name or library id (none named: the first); with none prescribed, a preset or a
    file, if the person's profile allows it."""
    # a session's (the desired state's cryptography): ``play`` alone, see the note above
    from resonera.device.prescriptions import choose_program

    assigned = store.assigned_programs()
    profile = store.applied_profile() or settings.profile
    given = args.program or args.program_option
    if assigned and not given and args.program_file is None:
        given = assigned[0].library_id
    return choose_program(assigned, profile, str(given or ""), lambda _spec: _program(args))


def _calibration(args: argparse.Namespace) -> Calibration | None:
    path: Path | None = getattr(args, "calibration", None)
    return load_calibration_file(path) if path is not None else None


class ProgressDisplay:
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
    from resonera.device.session import open_sink  # a session's: see the note above

    return open_sink(settings, args.wav)


def play_command(args: argparse.Namespace) -> int:
    if args.via_service:
        return play_via_service_command(args)
    from resonera.device.session import (  # a session's: see the note above
        Session,
        SessionWatch,
        standalone_parts,
    )

    overrides: dict[str, Any] = {}
    if args.simulation:
        overrides["simulation"] = True
    if args.sink is not None:
        overrides["sink"] = args.sink
    if args.serial is not None:
        overrides["serial_url"] = args.serial
    if args.calibration is not None:
        overrides["calibration_file"] = args.calibration
    settings = settings_from_args(args, **overrides)
    store = settings.open_store()
    program, prescribed = _program_to_play(args, settings, store)
    display = ProgressDisplay(program, verb="playing")
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
            record = session.run(program, sink, prescribed=prescribed)
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
        sync_outbox(settings, store, args.sync_timeout)
    return 0 if record.outcome != "fault" else 3


def render_command(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    program = resolve_program(args.program)
    settings = settings_from_args(args) if args.config is not None else None
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
    display = ProgressDisplay(program, verb="rendering")
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
