"""The commands that need neither the running service nor the device's records: ``programs`` (the
presets), ``measure`` (a sound file's level and dose), ``prompts build`` (speak and cache the
prompts) and ``enroll`` (this device's identity)."""

from __future__ import annotations

import argparse
import json

from resonera.common.errors import ConfigError
from resonera.common.program import BUILTIN_PROGRAMS, Program
from resonera.device.audio.progress import clock
from resonera.device.cli_args import settings_from_args
from resonera.device.cli_output import print_json
from resonera.engine.audio.calibration import load_calibration_file

# Imported by the command that uses it, so that the others start without them: the measurement
# and the prompts (soundfile's libsndfile: 10 ms and 24 ms, 1 MB, measured) and enrollment
# (cryptography: 98 ms and 10 MB).


def programs_command(args: argparse.Namespace) -> int:
    presets = sorted(BUILTIN_PROGRAMS.items())
    if args.json:
        print_json(
            {
                "programs": [
                    {
                        "name": name,
                        "duration_s": program.duration_s,
                        "layers": _layer_kinds(program),
                        "needs_headphones": program.needs_headphones,
                        "description": program.description,
                    }
                    for name, program in presets
                ]
            }
        )
        return 0
    for name, program in presets:
        kinds = _layer_kinds(program)
        phones = "  [headphones]" if program.needs_headphones else ""
        print(f"{name:<17} {clock(program.duration_s):>8}  {', '.join(kinds):<22}{phones}")
        print(f"{'':<17} {program.description}")
    return 0


def _layer_kinds(program: Program) -> list[str]:
    return sorted({layer.type for step in program.steps for layer in step.layers})


def measure_command(args: argparse.Namespace) -> int:
    from resonera.engine.safety.measure import (  # soundfile: see the note above
        measure_file,
        spl_at_unit_rms_from_full_scale,
    )

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


def prompts_build_command(args: argparse.Namespace) -> int:
    from resonera.device.prompts import build_prompts, prompts_dir  # soundfile: see the note above

    directory, calibration_path, rate = args.dir, args.calibration, args.rate
    if directory is None or calibration_path is None or rate is None:
        settings = settings_from_args(args)
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


def enroll_command(args: argparse.Namespace) -> int:
    from resonera.device import enroll  # cryptography: see the note above

    settings = settings_from_args(args)
    print(
        enroll.enroll_command(
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
