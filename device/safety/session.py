"""The safety chain for one session, built from what the device knows: the calibration of its output,
the person's profile, the MCU's hard limits and the dose ledger; and the pre-flight estimate of the
dose a program will use.

A missing or inconsistent calibration means no playback: the device never guesses how loud it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from resonera.common.dose import dose_fraction
from resonera.common.errors import ConfigError
from resonera.common.profile import HearingProfile
from resonera.common.program import Program
from resonera.common.safety_link import HardLimits
from resonera.device.safety.dose_ledger import DoseLedger, DoseStatus
from resonera.engine.audio.calibration import Calibration, load_calibration_file
from resonera.engine.audio.meter import MelMeter
from resonera.engine.audio.synth import ProgramRenderer
from resonera.engine.safety.chain import ChainLimits, DoseEvent, SafetyChain

PREFLIGHT_BLOCK = 8192


class CalibrationMissing(ConfigError):
    """No calibration for the output: the level at the ear would be a guess."""


def load_session_calibration(path: Path | None) -> Calibration:
    if path is None:
        raise CalibrationMissing(
            "no calibration for this output (calibration_file in the device settings): without it "
            "the device cannot know how loud it plays, so it does not play"
        )
    return load_calibration_file(path)


def effective_profile(profile: HearingProfile, hard: HardLimits | None) -> HearingProfile:
    """The profile, with its ceiling lowered to the MCU's ear-SPL limit where the board has one."""
    if hard is None or hard.max_ear_spl_db <= 0 or hard.max_ear_spl_db >= profile.max_level_dba:
        return profile
    ceiling = hard.max_ear_spl_db
    return profile.model_copy(
        update={
            "max_level_dba": ceiling,
            "fallback_level_dba": min(profile.fallback_level_dba, ceiling),
        }
    )


def chain_limits(calibration: Calibration, hard: HardLimits | None) -> ChainLimits:
    """Peak ceiling: the MCU's output-voltage limit, taken as a peak (so no waveform's RMS can reach
    it), in DAC full-scale units; never above full scale."""
    peak = 1.0
    if hard is not None and hard.max_output_vrms > 0:
        full_scale_peak_v = calibration.dac_full_scale_vrms * math.sqrt(2.0)
        gain = 10.0 ** (calibration.amplifier_gain_db / 20.0)
        peak = min(1.0, hard.max_output_vrms / (full_scale_peak_v * gain))
    return ChainLimits(spl_at_unit_rms=calibration.spl_at_unit_rms, peak_ceiling=peak)


def build_chain(
    *,
    sample_rate: int,
    calibration: Calibration,
    profile: HearingProfile,
    hard: HardLimits | None,
    ledger: DoseLedger | None,
    wall_clock: Callable[[], float],
    on_dose_event: Callable[[DoseEvent], None] = lambda _e: None,
    on_second: Callable[[float], None] = lambda _mel: None,
) -> SafetyChain:
    return SafetyChain(
        sample_rate=sample_rate,
        limits=chain_limits(calibration, hard),
        profile=effective_profile(profile, hard),
        ledger=ledger,
        wall_clock=wall_clock,
        on_dose_event=on_dose_event,
        on_second=on_second,
    )


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
