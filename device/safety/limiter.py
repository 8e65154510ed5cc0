"""Look-ahead gain control: a peak limiter and an A-weighted level ceiling, neither of which ever clips
or jumps.

Both turn a per-sample *required* gain ``g`` into an applied gain that is never above it and never
jumps (``GainSmoother``):

1. ``m[k] = min(g[k .. k+L-1])``: the smallest gain needed within the look-ahead window;
2. ``r[k] = min(m[k], r[k-1] + δ)``: releases rise at most ``δ`` per sample (linear release);
3. ``s[n] = mean(r[n-L+1 .. n])``: a box average over ``L`` samples smooths the attack.

Every ``r[j]`` averaged into ``s[n]`` comes from a window that contains ``n``, so ``s[n] ≤ g[n]``
exactly, and the gain changes by at most ``1/L`` per sample. Step 2 is evaluated in closed form (a
running minimum), so everything is vectorised and the output does not depend on the block size.

- ``LookAheadLimiter``: ``g = ceiling / |peak|``: no output sample above the ceiling.
- ``LevelCeiling``: ``g = sqrt(P_max / P)`` where ``P`` is the weighted mean-square over the trailing
  window ending at each sample; taking the forward minimum of that over one window first makes every
  sample of every window carry a gain that window allows, so no window's weighted level exceeds the
  maximum (to within the small error of weighting a signal whose gain moves slowly).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import minimum_filter1d

DEFAULT_LOOKAHEAD_S: Final = 0.010
DEFAULT_RELEASE_S: Final = 0.150
DEFAULT_LEVEL_WINDOW_S: Final = 0.050

Block = NDArray[np.float32]
Samples = NDArray[np.float64]


def _odd_window(seconds: float, sample_rate: int) -> int:
    length = max(3, round(seconds * sample_rate))
    return length if length % 2 else length + 1  # odd: a centred filter maps exactly


class ForwardMin:
    """``out[k] = min(g[k .. k+L-1])`` over a stream; output lags input by ``L - 1`` samples."""

    def __init__(self, window: int) -> None:
        self.window = window
        self._tail = np.ones(window - 1, dtype=np.float64)
        self._unity = True

    def at_unity(self) -> bool:
        """All of the look-ahead holds 1: the next outputs are ones while inputs are."""
        return self._unity

    def process(self, g: Samples) -> Samples:
        frames = g.shape[0]
        joined = np.concatenate((self._tail, g))
        half = self.window // 2
        out: Samples = minimum_filter1d(joined, self.window, mode="nearest")[half : half + frames]
        self._tail = joined[frames:]
        self._unity = bool(self._tail.min() >= 1.0)
        return out


class GainSmoother:
    """Required gain in, applied gain out (``≤`` required, ramped); lags by ``latency`` samples."""

    def __init__(self, window: int, release_step: float) -> None:
        self.window = window
        self.latency = window - 1
        self.release_step = release_step
        self._forward_min = ForwardMin(window)
        self._r_last = 1.0
        self._r_hist = np.ones(window - 1, dtype=np.float64)
        self._unity = True

    def at_unity(self) -> bool:
        """No reduction pending anywhere in the state (the common case for quiet programs)."""
        return self._unity

    def process(self, required: Samples) -> Samples:
        frames = required.shape[0]
        # Fast path: nothing to reduce now or in the look-ahead; the slow path would return ones
        # and leave the state as it is, so both paths give identical output.
        if self._unity and float(required.min()) >= 1.0:
            return np.ones(frames, dtype=np.float64)
        m = self._forward_min.process(required)
        steps = np.arange(frames, dtype=np.float64) * self.release_step
        floor = np.minimum.accumulate(m - steps)
        r = np.minimum(np.minimum(self._r_last + self.release_step, floor) + steps, m)
        # Rounding in the closed form leaves 1 - 1e-16 where the gain is fully released; snapping
        # it to 1 lets the fast path take over again.
        r[r > 1.0 - 1e-12] = 1.0
        self._r_last = float(r[-1])
        joined = np.concatenate((self._r_hist, r))
        csum = np.concatenate(([0.0], np.cumsum(joined)))
        self._r_hist = joined[frames:]
        smoothed: Samples = (csum[self.window :] - csum[:frames]) / self.window
        self._unity = (
            self._r_last == 1.0
            and float(self._r_hist.min()) >= 1.0
            and self._forward_min.at_unity()
        )
        return smoothed


class DelayLine:
    """Delays a multichannel stream by ``frames`` (primed with silence)."""

    def __init__(self, frames: int, channels: int) -> None:
        self._pending = np.zeros((frames, channels), dtype=np.float64)

    def process(self, block: Samples) -> Samples:
        joined = np.concatenate((self._pending, block))
        out = joined[: block.shape[0]]
        self._pending = joined[block.shape[0] :]
        return out


class LookAheadLimiter:
    """Streaming peak limiter. ``process(block)`` returns a block of the same length (the first
    ``latency_frames`` samples of the stream are silence)."""

    def __init__(
        self,
        sample_rate: int,
        ceiling: float,
        *,
        lookahead_s: float = DEFAULT_LOOKAHEAD_S,
        release_s: float = DEFAULT_RELEASE_S,
        channels: int = 2,
    ) -> None:
        self.set_ceiling(ceiling)
        self.window = _odd_window(lookahead_s, sample_rate)
        self._smoother = GainSmoother(self.window, 1.0 / max(1.0, release_s * sample_rate))
        self.latency_frames = self._smoother.latency
        self._delay = DelayLine(self.latency_frames, channels)
        self.min_gain = 1.0

    def set_ceiling(self, ceiling: float) -> None:
        """Change the ceiling; the look-ahead turns the change into a ramp like any other."""
        if not 0.0 < ceiling <= 1.0:
            raise ValueError(f"ceiling must be in (0, 1], got {ceiling}")
        self.ceiling = float(ceiling)

    def process(self, block: Block) -> Block:
        if block.shape[0] == 0:
            return block
        x = block.astype(np.float64, copy=False)
        block_peak = max(float(x.max()), -float(x.min()))
        if block_peak <= self.ceiling and self._smoother.at_unity():
            return self._delay.process(x).astype(np.float32)  # nothing to limit, now or pending
        peak = _loudest(np.abs(x))
        with np.errstate(divide="ignore"):
            required = np.minimum(1.0, self.ceiling / peak)
        gain = self._smoother.process(required)
        self.min_gain = min(self.min_gain, float(gain.min()))
        out = self._delay.process(x)
        if float(gain.min()) < 1.0:
            out = out * gain[:, None]
        # Rounding can only ever leave a few ULPs over the ceiling; this clip never shapes sound.
        np.clip(out, -self.ceiling, self.ceiling, out=out)
        return out.astype(np.float32)


def _loudest(per_channel: Samples) -> Samples:
    """Row-wise maximum over channels (faster than ``max(axis=1)`` for two or so channels)."""
    out: Samples = per_channel[:, 0].copy()
    for c in range(1, per_channel.shape[1]):
        np.maximum(out, per_channel[:, c], out=out)
    return out


class LevelCeiling:
    """Keeps the weighted mean-square of the output at or below ``max_mean_square`` in every window.

    ``weighting`` is a stateful filter applied to the input (for the safety chain: A-weighting), so the
    level that is held is the one the exposure meter measures. Latency: two windows.
    """

    def __init__(
        self,
        sample_rate: int,
        max_mean_square: float,
        weighting: Callable[[Block], Block],
        *,
        window_s: float = DEFAULT_LEVEL_WINDOW_S,
        release_s: float = 1.0,
        channels: int = 2,
    ) -> None:
        self.set_max_mean_square(max_mean_square)
        self.weighting = weighting
        self.window = _odd_window(window_s, sample_rate)
        self._energy_tail = np.zeros((self.window - 1, channels), dtype=np.float64)
        self._window_min = ForwardMin(self.window)
        self._smoother = GainSmoother(self.window, 1.0 / max(1.0, release_s * sample_rate))
        self.latency_frames = (self.window - 1) + self._smoother.latency
        self._delay = DelayLine(self.latency_frames, channels)
        self.min_gain = 1.0

    def set_max_mean_square(self, value: float) -> None:
        if not value > 0.0:
            raise ValueError(f"the maximum mean square must be positive, got {value}")
        self.max_mean_square = float(value)

    def process(self, block: Block) -> Block:
        frames = block.shape[0]
        if frames == 0:
            return block
        x = block.astype(np.float64, copy=False)
        weighted = np.asarray(self.weighting(block), dtype=np.float64)
        energy = np.concatenate((self._energy_tail, weighted * weighted))
        self._energy_tail = energy[frames:]
        # Every window lies inside tail + block, so if even their whole energy fits in one window's
        # allowance, no window can exceed it: skip the per-sample work.
        if (
            float(energy.sum(axis=0).max()) <= self.max_mean_square * self.window
            and self._window_min.at_unity()
            and self._smoother.at_unity()
        ):
            return self._delay.process(x).astype(np.float32)
        csum = np.concatenate((np.zeros((1, energy.shape[1])), np.cumsum(energy, axis=0)))
        mean_square = (csum[self.window :] - csum[:frames]) / self.window
        loudest = _loudest(mean_square)
        with np.errstate(divide="ignore"):
            required = np.minimum(1.0, np.sqrt(self.max_mean_square / loudest))
        # Each trailing window ending at n covers [n-W+1, n]: every one of those samples must carry
        # a gain ≤ required[n], i.e. a sample's limit is the minimum over the windows that hold it.
        per_sample = self._window_min.process(required)
        gain = self._smoother.process(per_sample)
        self.min_gain = min(self.min_gain, float(gain.min()))
        out: Block = (self._delay.process(x) * gain[:, None]).astype(np.float32)
        return out
