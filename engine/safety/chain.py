"""The safety chain: the one processor between synthesis and every sink.

Per block, in this order:

1. the onset: the stream's first ``ONSET_S`` rise along a raised cosine, whatever the program's own
   fade-in says (before the DC blocker, so that a DC step reaches it already smoothed);
2. ``DcBlocker``: a 5 Hz high-pass takes DC out before any level decision (``dcblock.py``), then
   the session gain (a ramp, never a jump: attenuation on a warning or at 100 % dose, volume);
3. ``LookAheadLimiter`` on the true peak: no reconstructed peak above the peak ceiling, the lower of
   the hardware's voltage limit and what the C-weighted peak limit allows (``peak_ceiling_for``),
   held ``TRUE_PEAK_MARGIN_DB`` under it for what four points per sample miss;
4. ``LevelCeiling``, one gain for three 1-s limits held over every 25 ms window: the A-weighted
   level at the ear at or below the person's maximum (dB SPL via the calibration), the C-weighted
   level at or below ``max_level_dbc``, and the unweighted level at most ``Z_OVER_A_DB`` above the
   A-weighted maximum (below). Each with a small margin, so a one-second window cannot pass it either;
5. the exposure meter on what leaves the chain: one MEL per second, added to the persisted dose
   ledger; crossing 100 % (and each further 100 %) of the weekly allowance raises a ``DoseEvent``
   and, as the profile says, lowers the level to the fallback or asks the player to stop.

Why the level ceiling comes last, and why the unweighted limit follows the A-weighted one: a gain
change on content that A-weighting hides (20 Hz, DC's remains) spreads some of it to frequencies
that A-weighting counts. Every stage before the ceiling is measured by it, so only the ceiling's own
ramps and the player's after the chain (its 50 ms stop fade, its 3 ms fault ramp) are not. Measured
on a 20 Hz tone, what those spread lands 53 dB (the fault ramp's, the worst) to 68 dB (a 50 ms ramp's)
under the tone's unweighted level, A-weighted over a second; with the unweighted level held within
``Z_OVER_A_DB`` = 36 dB of the A-weighted maximum, that is at least 14 dB under it, which the 0.3 dB
margin absorbs (0.18 dB at the worst). What it costs: a 40 Hz carrier (A-weighting -34.5 dB) is
never touched by it, a 20 Hz tone (-50.4 dB) is held 14 dB under the A-weighted maximum.

The meter does not always weight the output itself. Where the ceiling left the signal alone, the
output is the ceiling's input delayed by its latency, and A-weighting, a linear time-invariant filter,
commutes with the delay: its A-weighted output is the ceiling's weighted input, delayed. That holds
for a sample once the output has been the delayed input for the whole memory of the filter before it
(``aweighting.memory_frames``: its impulse response's tail sums below 1e-12), so the meter runs its
own filter over each block from the first one the ceiling changed until that memory has passed, and
reuses the ceiling's weighting otherwise (one A-weighting filter per block instead of two, nearly
always). When it takes over again its filter starts from the output's last memory-long stretch, so it
is exact again to 1e-12 of full scale (tested against the meter on its own within 0.01 dB per
second). The stages before the ceiling do not matter to this: the ceiling weights what they made.

The fault mute is not here: the player ramps to silence within one block after every processor, so a
fault never waits for this chain's look-ahead. One fault is the chain's own: a block holding a
non-finite sample (NaN or infinity, which no program can make but a fault upstream could) cannot be
weighed, limited or metered. It shows in the running sums of the weighted energy (they stop being
finite from that sample on: one test of the block's last value), and the chain then mutes: that block
and every later one come out silent, and ``fault`` says why (the player ends the session with it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from resonera.common.dose import DoseMode, crossed_hundreds, dose_fraction
from resonera.common.profile import HearingProfile
from resonera.engine.audio.player import GainRamp
from resonera.engine.safety._cascade import delay_running
from resonera.engine.safety.aweighting import (
    AWeightingFilter,
    CWeightingFilter,
    Unweighted,
    WeightingBank,
    memory_frames,
)
from resonera.engine.safety.dcblock import DcBlocker
from resonera.engine.safety.limiter import DelayLine, LevelCeiling, LookAheadLimiter, running_from
from resonera.engine.safety.meter import MelMeter

Block = NDArray[np.float32]
Samples = NDArray[np.float64]

#: Held below the maximum so a 1-s window (made of 25 ms windows) cannot exceed it either, nor can
#: what the ramps after the ceiling spread into the weighted bands (module docstring).
LEVEL_MARGIN_DB: Final = 0.3
#: The unweighted level may be at most this far above the A-weighted maximum (module docstring).
Z_OVER_A_DB: Final = 36.0
#: The true peak is held this far under the peak ceiling: four points per sample read a naive
#: square wave up to 1.0 dB low (0.2 dB for a sine at fs/4; ``truepeak.py``), and a gain that
#: moves between samples can lift an interpolated point a little over what its samples promise.
TRUE_PEAK_MARGIN_DB: Final = 1.5
#: The C-weighted peak of any waveform is at most this many times its largest magnitude: the sum of
#: the absolute values of C-weighting's impulse response (its two 20.6 Hz high-pass poles 2.27, its
#: two 12194 Hz low-pass poles 1.0, the 0.06 dB that sets 0 dB at 1 kHz), 7.2 dB. A step doubles
#: under it: a low-frequency square wave's C-weighted peak is twice its own.
C_PEAK_OVER_PEAK: Final = 2.29
#: Nothing starts at full scale at once: the stream's first 50 ms rise along a raised cosine.
ONSET_S: Final = 0.05
ATTENUATION_RAMP_S: Final = 2.0
NON_FINITE_FAULT: Final = (
    "the sound to play held a non-finite sample (NaN or infinity): the safety chain muted it"
)


class WeekStatus(Protocol):
    """What the chain reads of the week's dose: the share of the allowance already used."""

    @property
    def fraction(self) -> float: ...


class DoseRecord(Protocol):
    """Where the chain adds each second it meters (the device's persisted ``DoseLedger``,
    ``device/safety/dose_ledger.py``); None for a render or a preview, which expose no one."""

    def status(self, now: float, mode: DoseMode = 1) -> WeekStatus: ...
    def add_second(self, at: float, level_dba: float) -> None: ...


@dataclass(frozen=True)
class DoseEvent:
    kind: Literal["dose_reached", "dose_stop"]
    at: float
    percent: int
    fraction: float
    message: str


@dataclass(frozen=True)
class ChainLimits:
    """What the chain enforces, in its own units."""

    #: dB SPL at the ear of an A-weighted signal whose RMS is 1.0 (full scale), from the calibration
    #: (the same for C-weighted and unweighted signals: both weightings are 0 dB at 1 kHz).
    spl_at_unit_rms: float
    #: Highest magnitude of the reconstructed waveform the hardware allows (1.0 = DAC full scale),
    #: from the MCU's limits.
    peak_ceiling: float

    def mean_square_for(self, level_db: float) -> float:
        """The mean square (full scale units) the ceiling holds for a level of ``level_db`` at the
        ear, whatever the weighting, the margin taken off."""
        return float(10.0 ** ((level_db - LEVEL_MARGIN_DB - self.spl_at_unit_rms) / 10.0))

    def peak_ceiling_for(self, max_peak_dbc: float) -> float:
        """The true-peak ceiling: the hardware's, or lower, so that no C-weighted peak at the ear can
        pass ``max_peak_dbc`` (``C_PEAK_OVER_PEAK``)."""
        c_peak = float(10.0 ** ((max_peak_dbc - self.spl_at_unit_rms) / 20.0)) / C_PEAK_OVER_PEAK
        return min(self.peak_ceiling, c_peak)


class SafetyChain:
    """Call it with each block (it is the player's processor); read ``stop_requested``."""

    def __init__(
        self,
        *,
        sample_rate: int,
        limits: ChainLimits,
        profile: HearingProfile,
        ledger: DoseRecord | None,
        wall_clock: Callable[[], float],
        on_dose_event: Callable[[DoseEvent], None] = lambda _event: None,
        on_second: Callable[[float], None] = lambda _mel: None,
        channels: int = 2,
        meter_shortcut: bool = True,
    ) -> None:
        """``meter_shortcut=False`` makes the meter weight every block itself (see the module
        docstring; for tests and measurements)."""
        self.sample_rate = sample_rate
        self.limits = limits
        self.profile = profile
        self.ledger = ledger
        self.wall_clock = wall_clock
        self.on_dose_event = on_dose_event
        #: Called with each second's MEL (the level the calibration predicts at the ear).
        self.on_second = on_second
        self.level_dba = profile.max_level_dba
        self.dc_blocker = DcBlocker(sample_rate, channels)
        self.gain = GainRamp(1.0)
        self.onset = Onset(sample_rate)
        #: The highest the reconstructed waveform may reach (full scale units).
        self.peak_ceiling = limits.peak_ceiling_for(profile.max_peak_dbc)
        self.limiter = LookAheadLimiter(
            sample_rate,
            self.peak_ceiling * 10.0 ** (-TRUE_PEAK_MARGIN_DB / 20.0),
            channels=channels,
            true_peak=True,
        )
        self.level = LevelCeiling(
            sample_rate,
            self._level_mean_squares(),
            WeightingBank(
                (
                    AWeightingFilter(sample_rate, channels),
                    CWeightingFilter(sample_rate, channels),
                    Unweighted(channels),
                )
            ),
            channels=channels,
            clip=self.peak_ceiling,
        )
        self.meter = MelMeter(
            sample_rate, channels=channels, spl_at_unit_rms=limits.spl_at_unit_rms
        )
        self.latency_frames = self.limiter.latency_frames + self.level.latency_frames
        self.meter_shortcut = meter_shortcut
        self._memory = memory_frames(sample_rate)
        self._weighted = _Delay(self.level.latency_frames, channels)
        # the output's last ``_memory`` frames
        self._recent = DelayLine(self._memory, channels)
        self._position = 0  # output frames so far
        self._exact_until = 0  # the meter weights the output itself before this output frame
        self._filter_current = True  # the meter's own filter has seen every output frame
        #: Output frames the meter weighted with its own filter (the rest: the ceiling's weighting).
        self.meter_filtered_frames = 0
        self.session_dose = 0.0
        self.stop_requested = False
        #: Why the chain muted for good (a non-finite sample reached it), else None.
        self.fault: str | None = None
        now = wall_clock()
        self.week_fraction = (
            ledger.status(now, profile.dose_mode).fraction if ledger is not None else 0.0
        )
        if self.week_fraction >= 1.0 and profile.on_dose_reached == "attenuate":
            self._lower_to_fallback()

    def __call__(self, block: Block) -> Block:
        if self.fault is not None:
            return np.zeros_like(block)
        if len(block) == 0:
            return block
        if self.onset.rising:
            block = self.onset.process(block)
        filtered = self.dc_blocker.process(block)
        started = self.gain.apply(filtered)
        # at unity gain the limiter's input is the DC blocker's output, whose peak it measured
        peak = self.dc_blocker.last_peak if started is filtered else None
        out = self.level.process(self.limiter.process(started, peak))
        if not all(map(math.isfinite, self.level.energy[:, -1].tolist())):
            self.fault = NON_FINITE_FAULT
            return np.zeros_like(block)
        # (Where the ceiling applied a gain it clipped its output to the peak ceiling; where it
        # passed, the output is the limiter's, already within it.)
        if len(out):
            for mel in self._metered(out):
                self._second(mel)
        return out

    def _level_mean_squares(self) -> tuple[float, float, float]:
        """The ceiling's maxima for its A, C and unweighted measures (module docstring)."""
        return (
            self.limits.mean_square_for(self.level_dba),
            self.limits.mean_square_for(self.profile.max_level_dbc),
            self.limits.mean_square_for(self.level_dba + Z_OVER_A_DB),
        )

    def _metered(self, out: Block) -> list[float]:
        start = self._position
        self._position += len(out)
        delayed = self._weighted.process(self.level.energy)
        if not (self.meter_shortcut and self.level.passed):
            self._exact_until = self._position + self._memory
        if start < self._exact_until:
            if not self._filter_current:
                self.meter.warm(self._recent.contents())
                self._filter_current = True
            mels = self.meter.update(out)
            self.meter_filtered_frames += len(out)
        else:
            self._filter_current = False
            mels = self.meter.update_energy(*delayed)
        self._recent.write(out)
        return mels

    def set_gain_db(self, gain_db: float, ramp_s: float = ATTENUATION_RAMP_S) -> None:
        """Attenuate (or restore) smoothly, e.g. on a hardware warning."""
        self.gain.ramp_to(10.0 ** (min(0.0, gain_db) / 20.0), int(ramp_s * self.sample_rate))

    def set_level_limit(self, level_dba: float) -> None:
        """Lower (or restore, up to the profile's maximum) the A-weighted ceiling."""
        self.level_dba = min(level_dba, self.profile.max_level_dba)
        self.level.set_max_mean_squares(*self._level_mean_squares())

    def _lower_to_fallback(self) -> None:
        self.set_level_limit(self.profile.fallback_level_dba)

    def _second(self, mel: float) -> None:
        now = self.wall_clock()
        added = dose_fraction(mel, 1.0, self.profile.dose_mode)
        before = self.week_fraction
        self.week_fraction += added
        self.session_dose += added
        if self.ledger is not None:
            self.ledger.add_second(now, mel)
        self.on_second(mel)
        for hundred in crossed_hundreds(before, self.week_fraction):
            percent = hundred * 100
            if self.profile.on_dose_reached == "stop":
                self.stop_requested = True
                kind: Literal["dose_reached", "dose_stop"] = "dose_stop"
                action = "the session stops"
            else:
                self._lower_to_fallback()
                kind = "dose_reached"
                action = f"the level is lowered to {self.profile.fallback_level_dba:g} dBA"
            self.on_dose_event(
                DoseEvent(
                    kind=kind,
                    at=now,
                    percent=percent,
                    fraction=self.week_fraction,
                    message=f"you have used {percent} % of this week's safe listening allowance; "
                    f"{action}",
                )
            )

    @property
    def mels(self) -> list[float]:
        """The MEL of every completed second so far."""
        return self.meter.mels

    @property
    def laeq_dba(self) -> float:
        """Energy average of the MELs so far (the session's LAeq)."""
        if not self.mels:
            return -100.0
        energies = [10.0 ** (mel / 10.0) for mel in self.mels]
        return 10.0 * math.log10(sum(energies) / len(energies))


class Onset:
    """The stream's first ``ONSET_S`` along a raised cosine from 0 (the first value above 0, the
    last below 1); everything after passes as it is."""

    def __init__(self, sample_rate: int) -> None:
        frames = max(1, round(ONSET_S * sample_rate))
        steps = np.arange(1, frames + 1, dtype=np.float64) / (frames + 1)
        self._ramp: Samples = 0.5 - 0.5 * np.cos(np.pi * steps)
        self._taken = 0  # frames so far
        #: Still rising: ``process`` changes the blocks to come (after that it returns them).
        self.rising = True

    def process(self, block: Block) -> Block:
        at, ramp = self._taken, self._ramp
        self._taken += len(block)
        self.rising = self._taken < len(ramp)
        if at >= len(ramp):
            return block
        rising = min(len(block), len(ramp) - at)
        out = block.copy()
        np.multiply(out[:rising], ramp[at : at + rising, None], out=out[:rising], casting="unsafe")
        return out


def pass_through(samples: Block, sample_rate: int) -> Block:
    """What the chain makes of ``samples`` where no limit acts, its latency left out: the onset and
    the DC blocker, sample for sample. For comparing a program with what was played or rendered
    from it."""
    return DcBlocker(sample_rate, samples.shape[1]).process(Onset(sample_rate).process(samples))


class _Delay:
    """Delays a stream given block by block as running sums, ``(channels, frames)`` float64, each
    block's from its own first frame on, by ``frames`` (primed with zeros)."""

    def __init__(self, frames: int, channels: int) -> None:
        self._pending: Samples = np.zeros((channels, frames), dtype=np.float64)

    def process(self, running: Samples) -> tuple[Samples, ...]:
        """The delayed block as consecutive pieces, each piece's running sums from its own first
        frame on (joining them would copy the whole block: a render's blocks are far longer than
        the delay)."""
        frames, delay = running.shape[1], self._pending.shape[1]
        if frames >= delay:
            pieces = (self._pending, running[:, : frames - delay])
            # its own (not a view of the caller's array): the compiled path advances it in place
            tail = running_from(running, frames - delay)
            self._pending = tail if frames > delay else tail.copy()
            return pieces
        # shorter than the delay (a playing device's blocks): compiled, the pending sums advanced
        # in place with the values the concatenation and subtraction of numpy gave
        delayed = np.empty_like(running)
        delay_running(self._pending, running, delayed)
        return (delayed,)
