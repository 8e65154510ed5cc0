"""A-weighted level per block and MEL (momentary exposure level) per completed second.

MEL is the A-weighted level over 1-second windows (IEC 62368-1, ``docs/safety.md``), here of
the louder ear. With a ``Calibration`` the levels are dB(A) SPL at the ear; without one they are
dB(A) relative to full scale (dBFS(A), the ``levels.py`` convention: rms of one channel). The
A-weighting filter is ``resonera.engine.safety.aweighting.AWeightingFilter`` (IEC 61672-1 poles,
bilinear transform plus a matched high-frequency section; checked against the formula in
``tests/device/test_aweighting.py``): one filter design for the safety chain and the display.
Its state carries across blocks, so the levels do not depend on the block size.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from resonera.engine.audio.calibration import Calibration
from resonera.engine.audio.levels import SILENCE_DBFS
from resonera.engine.safety._cascade import second_energy
from resonera.engine.safety.aweighting import AWeightingFilter

__all__ = ["AWeightingFilter", "MelMeter"]


def _db(mean_square: float) -> float:
    return SILENCE_DBFS if mean_square <= 0.0 else max(SILENCE_DBFS, 10.0 * math.log10(mean_square))


def _largest(values: list[float]) -> float:
    """The largest value, NaN when any is (``numpy.max``'s rule; ``max`` alone would depend on the
    order)."""
    return math.nan if any(map(math.isnan, values)) else max(values)


class MelMeter:
    """Feed it every block (``update``); it returns the MELs of the seconds each block completed.

    ``block_level`` is the A-weighted level of the last block (louder ear), ``mels`` every MEL so
    far. Not thread-safe; cheap enough to run on every block (one 3-biquad filter per channel).
    """

    def __init__(
        self,
        sample_rate: int,
        calibration: Calibration | None = None,
        channels: int = 2,
        *,
        spl_at_unit_rms: float | None = None,
    ) -> None:
        """Levels in dB(A) SPL with a ``calibration`` or a bare ``spl_at_unit_rms`` (the dB SPL of
        an A-weighted RMS of 1.0), else in dBFS(A)."""
        self.sample_rate = sample_rate
        self.calibration = calibration
        if spl_at_unit_rms is not None:
            self.offset_db = spl_at_unit_rms
        else:
            self.offset_db = calibration.spl_at_unit_rms if calibration is not None else 0.0
        self.calibrated = calibration is not None or spl_at_unit_rms is not None
        self._filter = AWeightingFilter(sample_rate, channels)
        self._sum = np.zeros(channels, np.float64)  # the current second's energy per channel
        self._frames = 0
        self.block_level: float | None = None
        self.mels: list[float] = []

    @property
    def unit(self) -> str:
        return "dB(A) SPL" if self.calibrated else "dBFS(A)"

    @property
    def last_mel(self) -> float | None:
        return self.mels[-1] if self.mels else None

    def update(self, block: NDArray[np.float32]) -> list[float]:
        if len(block) == 0:
            return []
        return self.update_energy(self._filter.running_energy(block))

    def update_energy(self, *pieces: NDArray[np.float64]) -> list[float]:
        """``update`` for a block already A-weighted elsewhere, given as the running sums of its
        weighted squares, ``(channels, frames)``, whole or as consecutive pieces each summed from
        its own first frame (the safety chain's delayed copy of its ceiling's weighting comes in
        two). The filter is left as it was: ``warm`` brings it up to date before ``update`` is
        called again."""
        # compiled (``_cascade.c``: ``second_energy``): numpy's calls on a few values each cost
        # more than their arithmetic; the same operations in the same order
        whole = np.zeros(len(self._sum), np.float64)  # the block's
        frames, loudest = 0, 0.0
        completed: list[float] = []
        for running in pieces:
            if running.shape[1] == 0:
                continue
            self._frames, seconds, loudest = second_energy(
                np.ascontiguousarray(running), self._sum, whole, self._frames, self.sample_rate
            )
            if seconds:
                completed.extend(self.offset_db + _db(sum_ / self.sample_rate) for sum_ in seconds)
            frames += running.shape[1]
        if frames == 0:
            return []
        self.block_level = self.offset_db + _db(loudest / frames)
        self.mels.extend(completed)
        return completed

    def warm(self, recent: NDArray[np.float32]) -> None:
        """Set the filter's state from the ``recent`` frames of the stream (the ones just before the
        next ``update``), filtered from silence: exact to within the filter's memory, which
        ``recent`` should span (``aweighting.memory_frames``)."""
        self._filter.reset()
        if len(recent):
            self._filter.filter_channels(recent)

    def flush(self) -> tuple[float, float] | None:
        """The level and length in seconds of an incomplete last second, if any (then reset)."""
        if self._frames == 0:
            return None
        level = self.offset_db + _db(_largest(self._sum.tolist()) / self._frames)
        length = self._frames / self.sample_rate
        self._sum[:] = 0.0
        self._frames = 0
        return level, length
