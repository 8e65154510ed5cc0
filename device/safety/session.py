"""What a session on the device needs before its pipeline is built (``resonera.engine.pipeline``,
with the calibration of its output, the person's profile, the MCU's hard limits and the dose
ledger): its calibration, and the pre-flight estimate of the dose a program will use.

A missing or inconsistent calibration means no playback: the device never guesses how loud it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from resonera.common.dose import dose_fraction
from resonera.common.errors import ConfigError
from resonera.common.profile import HearingProfile
from resonera.common.program import Program
from resonera.device.safety.dose_ledger import DoseStatus
from resonera.engine.audio.calibration import (
    DEFAULT_CALIBRATION,
    Calibration,
    load_calibration_file,
    packaged_calibration,
)
from resonera.engine.audio.synth import ProgramRenderer
from resonera.engine.safety.meter import MelMeter

PREFLIGHT_BLOCK = 8192


class CalibrationMissing(ConfigError):
    """No calibration for the output: the level at the ear would be a guess."""


def load_session_calibration(path: Path | None) -> Calibration:
    """The output's calibration from ``calibration_file``; ``CalibrationMissing`` without one,
    naming the packaged reference calibration a bench or a demo on the reference headphones uses
    (never chosen silently: on any other output its levels would be wrong)."""
    if path is None:
        raise CalibrationMissing(
            "no calibration for this output (calibration_file in the device settings): without it "
            "the device cannot know how loud it plays, so it does not play. On the reference "
            f'headphones, set calibration_file = "{packaged_calibration()}" (the packaged '
            f"{DEFAULT_CALIBRATION!r} calibration); any other output needs its own, measured"
        )
    return load_calibration_file(path)


@dataclass(frozen=True)
class Preflight:
    """What a program is expected to add to the week, at the level it will actually play."""

    duration_s: float
    expected_laeq_dba: float
    expected_fraction: float
    week_fraction: float
    refused: bool
    message: str


def preflight(
    program: Program,
    *,
    sample_rate: int,
    calibration: Calibration,
    profile: HearingProfile,
    week: DoseStatus,
) -> Preflight:
    """Synthesise and meter the whole program (much faster than real time), capping each second at
    the profile's ceiling as the chain will, and compare with what is left of the week."""
    meter = MelMeter(sample_rate, calibration)
    renderer = ProgramRenderer(program, sample_rate)
    while not renderer.done:
        meter.update(renderer.render(PREFLIGHT_BLOCK))
    seconds = [(min(mel, profile.max_level_dba), 1.0) for mel in meter.mels]
    tail = meter.flush()
    if tail is not None:
        seconds.append((min(tail[0], profile.max_level_dba), tail[1]))
    total = sum(length for _mel, length in seconds) or 1.0
    energy = sum(length * 10.0 ** (mel / 10.0) for mel, length in seconds)
    laeq = 10.0 * math.log10(energy / total) if energy > 0 else -100.0
    expected = sum(dose_fraction(mel, length, profile.dose_mode) for mel, length in seconds)
    after = week.fraction + expected
    refused = profile.refuse_over_allowance and after > 1.0
    status = (
        f"this session is expected to use {_percent(expected)} of the weekly sound allowance "
        f"(about {laeq:.0f} dBA for {_duration(program.duration_s)}); "
        f"{_percent(week.fraction)} is used already"
    )
    if week.corrupted:
        status += " (the dose record is damaged: counted as fully used until a clinician resets it)"
    if refused:
        status += "; it would pass 100 %, so it is not started"
    return Preflight(program.duration_s, laeq, expected, week.fraction, refused, status)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _percent(fraction: float) -> str:
    percent = fraction * 100
    return "under 0.01 %" if 0 < percent < 0.01 else f"{percent:.2f} %"
