"""The safety chain: the one processor between synthesis and every sink.

Per block, in this order:

1. the session gain (a ramp, never a jump: attenuation on a warning or at 100 % dose, volume);
2. ``LevelCeiling``: the A-weighted level at the ear held at or below the person's maximum (dB SPL via
   the calibration), with a small margin so that a one-second window cannot pass it either;
3. ``LookAheadLimiter``: no sample above the peak ceiling the hardware allows;
4. the exposure meter on what leaves the chain: one MEL per second, added to the persisted dose ledger;
   crossing 100 % (and each further 100 %) of the weekly allowance raises a ``DoseEvent`` and, as the
   profile says, lowers the level to the fallback or asks the player to stop.

The fault mute is not here: the player ramps to silence within one block after every processor, so a
fault never waits for this chain's look-ahead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from resonera.common.dose import crossed_hundreds, dose_fraction
from resonera.common.profile import HearingProfile
from resonera.device.audio.player import GainRamp
from resonera.device.safety.dose_ledger import DoseLedger
from resonera.device.safety.limiter import LevelCeiling, LookAheadLimiter

Block = NDArray[np.float32]
Weighting = Callable[[Block], Block]

#: Held below the maximum so a 1-s window (made of 50 ms windows) cannot exceed it either.
LEVEL_MARGIN_DB: Final = 0.3
ATTENUATION_RAMP_S: Final = 2.0


class WeightingFactory(Protocol):
    def __call__(self, sample_rate: int) -> Weighting: ...


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

    #: dB SPL at the ear of an A-weighted signal whose RMS is 1.0 (full scale), from the calibration.
    spl_at_unit_rms: float
    #: Highest sample magnitude the hardware allows (1.0 = DAC full scale), from the MCU's limits.
    peak_ceiling: float

    def mean_square_for(self, level_dba: float) -> float:
        return float(10.0 ** ((level_dba - LEVEL_MARGIN_DB - self.spl_at_unit_rms) / 10.0))


class ExposureMeter:
    """One MEL (A-weighted dB SPL over one second, louder ear) per completed second of output."""

    def __init__(self, sample_rate: int, weighting: Weighting, spl_at_unit_rms: float) -> None:
        self.sample_rate = sample_rate
        self.weighting = weighting
        self.spl_at_unit_rms = spl_at_unit_rms
        self._sum: NDArray[np.float64] | None = None
        self._frames = 0

    def feed(self, block: Block) -> list[float]:
        weighted = np.asarray(self.weighting(block), dtype=np.float64)
        energy = weighted * weighted
        levels: list[float] = []
        start = 0
        while start < energy.shape[0]:
            take = min(self.sample_rate - self._frames, energy.shape[0] - start)
            part = energy[start : start + take].sum(axis=0)
            self._sum = part if self._sum is None else self._sum + part
            self._frames += take
            start += take
            if self._frames == self.sample_rate:
                levels.append(self._level(self._sum / self.sample_rate))
                self._sum, self._frames = None, 0
        return levels

    def flush(self) -> tuple[float, float] | None:
        """The level and length in seconds of an incomplete last second, if any (then reset)."""
        if self._sum is None or self._frames == 0:
            return None
        result = (self._level(self._sum / self._frames), self._frames / self.sample_rate)
        self._sum, self._frames = None, 0
        return result

    def _level(self, mean_square: NDArray[np.float64]) -> float:
        loudest = float(np.max(mean_square))
        return -100.0 if loudest <= 0.0 else self.spl_at_unit_rms + 10.0 * math.log10(loudest)


class SafetyChain:
    """Call it with each block (it is the player's processor); read ``stop_requested``."""

    def __init__(
        self,
        *,
        sample_rate: int,
        limits: ChainLimits,
        profile: HearingProfile,
        weighting: WeightingFactory,
        ledger: DoseLedger | None,
        wall_clock: Callable[[], float],
        on_dose_event: Callable[[DoseEvent], None] = lambda _event: None,
        channels: int = 2,
    ) -> None:
        self.sample_rate = sample_rate
        self.limits = limits
        self.profile = profile
        self.ledger = ledger
        self.wall_clock = wall_clock
        self.on_dose_event = on_dose_event
        self.level_dba = profile.max_level_dba
        self.gain = GainRamp(1.0)
        self.level = LevelCeiling(
            sample_rate,
            limits.mean_square_for(self.level_dba),
            weighting(sample_rate),
            channels=channels,
        )
        self.limiter = LookAheadLimiter(sample_rate, limits.peak_ceiling, channels=channels)
        self.meter = ExposureMeter(sample_rate, weighting(sample_rate), limits.spl_at_unit_rms)
        self.latency_frames = self.level.latency_frames + self.limiter.latency_frames
        self.mels: list[float] = []
        self.session_dose = 0.0
        self.stop_requested = False
        now = wall_clock()
        self.week_fraction = (
            ledger.status(now, profile.dose_mode).fraction if ledger is not None else 0.0
        )
        if self.week_fraction >= 1.0 and profile.on_dose_reached == "attenuate":
            self._lower_to_fallback()

    def __call__(self, block: Block) -> Block:
        out = self.limiter.process(self.level.process(self.gain.apply(block)))
        for mel in self.meter.feed(out):
            self._second(mel)
        return out

    def set_gain_db(self, gain_db: float, ramp_s: float = ATTENUATION_RAMP_S) -> None:
        """Attenuate (or restore) smoothly, e.g. on a hardware warning."""
        self.gain.ramp_to(10.0 ** (min(0.0, gain_db) / 20.0), int(ramp_s * self.sample_rate))

    def set_level_limit(self, level_dba: float) -> None:
        """Lower (or restore, up to the profile's maximum) the A-weighted ceiling."""
        self.level_dba = min(level_dba, self.profile.max_level_dba)
        self.level.set_max_mean_square(self.limits.mean_square_for(self.level_dba))

    def _lower_to_fallback(self) -> None:
        self.set_level_limit(self.profile.fallback_level_dba)

    def _second(self, mel: float) -> None:
        now = self.wall_clock()
        self.mels.append(mel)
        added = dose_fraction(mel, 1.0, self.profile.dose_mode)
        before = self.week_fraction
        self.week_fraction += added
        self.session_dose += added
        if self.ledger is not None:
            self.ledger.add_second(now, mel)
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
    def laeq_dba(self) -> float:
        """Energy average of the MELs so far (the session's LAeq)."""
        if not self.mels:
            return -100.0
        energies = [10.0 ** (mel / 10.0) for mel in self.mels]
        return 10.0 * math.log10(sum(energies) / len(energies))
