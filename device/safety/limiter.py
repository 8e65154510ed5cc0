"""A look-ahead peak limiter: no output sample above the ceiling, and no hard clipping.

Per sample ``n`` the required gain is ``g[n] = min(1, ceiling / peak[n])`` (peak over channels). The
applied gain is built so that it never exceeds ``g`` at any sample, yet never jumps:

1. ``m[k] = min(g[k .. k+L-1])``: the smallest gain needed within the look-ahead window;
2. ``r[k] = min(m[k], r[k-1] + δ)``: releases rise at most ``δ`` per sample (linear release);
3. ``s[n] = mean(r[n-L+1 .. n])``: a box average over ``L`` samples smooths the attack.

Every ``r[j]`` averaged into ``s[n]`` comes from a window that contains ``n``, so ``s[n] ≤ g[n]``: the
ceiling holds exactly, and the gain changes by at most ``1/L`` per sample. Output is delayed by
``L - 1`` samples. Step 2 is evaluated in closed form (a running minimum), so the whole limiter is
vectorised and its output does not depend on the block size.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import minimum_filter1d

DEFAULT_LOOKAHEAD_S: Final = 0.010
DEFAULT_RELEASE_S: Final = 0.150

Block = NDArray[np.float32]


class LookAheadLimiter:
    """Streaming stereo (or N-channel) limiter. ``process(block)`` returns a block of the same length
    (the first ``latency_frames`` samples of the stream are silence)."""

    def __init__(
        self,
        sample_rate: int,
        ceiling: float,
        *,
        lookahead_s: float = DEFAULT_LOOKAHEAD_S,
        release_s: float = DEFAULT_RELEASE_S,
        channels: int = 2,
    ) -> None:
        if not 0.0 < ceiling <= 1.0:
            raise ValueError(f"ceiling must be in (0, 1], got {ceiling}")
        length = max(3, round(lookahead_s * sample_rate))
        self.window = length if length % 2 else length + 1  # odd: a centred filter maps exactly
        self.latency_frames = self.window - 1
        self.ceiling = float(ceiling)
        self.release_step = 1.0 / max(1.0, release_s * sample_rate)
        self.channels = channels
        # Primed with latency_frames of silence, so every block comes out at its own length.
        self._pending = np.zeros((self.latency_frames, channels), dtype=np.float64)
        self._g_tail = np.ones(self.latency_frames, dtype=np.float64)
        self._r_last = 1.0
        self._r_hist = np.ones(self.window - 1, dtype=np.float64)
        self.min_gain = 1.0

    def set_ceiling(self, ceiling: float) -> None:
        """Change the ceiling; the look-ahead turns the change into a ramp like any other."""
        if not 0.0 < ceiling <= 1.0:
            raise ValueError(f"ceiling must be in (0, 1], got {ceiling}")
        self.ceiling = float(ceiling)

    def process(self, block: Block) -> Block:
        frames = block.shape[0]
        if frames == 0:
            return block
        x = block.astype(np.float64, copy=False)
        peak = np.max(np.abs(x), axis=1)
        with np.errstate(divide="ignore"):
            g_new = np.minimum(1.0, self.ceiling / peak)
        g = np.concatenate((self._g_tail, g_new))
        half = self.window // 2
        m = minimum_filter1d(g, self.window, mode="nearest")[half : half + frames]
        self._g_tail = g[frames:]

        steps = np.arange(frames, dtype=np.float64) * self.release_step
        floor = np.minimum.accumulate(m - steps)
        r = np.minimum(self._r_last + self.release_step, floor) + steps
        r = np.minimum(r, m)
        self._r_last = float(r[-1])

        rr = np.concatenate((self._r_hist, r))
        csum = np.concatenate(([0.0], np.cumsum(rr)))
        s = (csum[self.window :] - csum[:frames]) / self.window
        self._r_hist = rr[frames:]
        self.min_gain = min(self.min_gain, float(s.min()))

        delayed = np.concatenate((self._pending, x))
        out = delayed[:frames] * s[:, None]
        self._pending = delayed[frames:]
        # Rounding can only ever leave a few ULPs over the ceiling; this clip never shapes sound.
        np.clip(out, -self.ceiling, self.ceiling, out=out)
        return out.astype(np.float32)
