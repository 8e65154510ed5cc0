"""Look-ahead gain control: a peak limiter and an A-weighted level ceiling, neither of which ever clips
or jumps.

Long on purpose: one algorithm, its three steps and the two processors built on them, whose
guarantee (``s[n] ≤ g[n]``, below) is read in one place.

Both turn a per-sample *required* gain ``g`` into an applied gain that is never above it and never
jumps (``GainSmoother``):

1. ``m[k] = min(g[k .. k+L-1])``: the smallest gain needed within the look-ahead window;
2. ``r[k] = min(m[k], r[k-1] + δ)``: releases rise at most ``δ`` per sample (linear release);
3. ``s[n] = mean(r[n-L+1 .. n])``: a box average over ``L`` samples smooths the attack.

Every ``r[j]`` averaged into ``s[n]`` comes from a window that contains ``n``, so ``s[n] ≤ g[n]``
exactly, and the gain changes by at most ``1/L`` per sample. Step 2 is evaluated in closed form (a
running minimum), so everything is vectorised and the output does not depend on the block size.
Steps 1 and 3 carry their state across blocks (``ForwardMin``, ``WindowSums``), so a block costs a
few passes over its own samples however long ``L`` is, and nothing here needs scipy.

- ``LookAheadLimiter``: ``g = ceiling / |peak|``: no output sample above the ceiling.
- ``LevelCeiling``: ``g = sqrt(P_max / P)`` where ``P`` is the weighted mean-square over the trailing
  window ending at each sample; taking the forward minimum of that over one window first makes every
  sample of every window carry a gain that window allows, so no window's weighted level exceeds the
  maximum (to within the small error of weighting a signal whose gain moves slowly).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from resonera.engine.safety._cascade import largest_magnitude
from resonera.engine.safety.truepeak import OVERSHOOT_BOUND, TruePeakDetector

DEFAULT_LOOKAHEAD_S: Final = 0.010
DEFAULT_RELEASE_S: Final = 0.150
DEFAULT_LEVEL_WINDOW_S: Final = 0.025

Block = NDArray[np.float32]
Samples = NDArray[np.float64]

#: Writes the running sums of a block's weighted squares, ``(channels, frames)``, into the array it
#: is given (``CascadeFilter.running_energy_into``).
Weighting = Callable[[NDArray[np.float32], NDArray[np.float64]], None]


@runtime_checkable
class Weightings(Protocol):
    """Several weightings of a block in one call (``aweighting.WeightingBank``): their running
    sums, ``(weightings, channels, frames)``, written into the array given."""

    def __len__(self) -> int: ...
    def running_energy_into(self, block: Block, out: Samples) -> None: ...


#: Quieter than this fraction of the limit counts as silence (a required gain far above 1, so 1).
_FLOOR: Final = 1e-30


def _odd_window(seconds: float, sample_rate: int) -> int:
    length = max(3, round(seconds * sample_rate))
    return length if length % 2 else length + 1  # odd, as ever: keeps every latency as it was


class _Scratch:
    """A float64 work array reused across blocks (grown when a longer block comes)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self._array = np.empty(shape, dtype=np.float64)

    def get(self, length: int) -> Samples:
        """At least ``length`` long along the last axis; growing keeps the contents."""
        if self._array.shape[-1] < length:
            grown = np.empty((*self._array.shape[:-1], length), dtype=np.float64)
            grown[..., : self._array.shape[-1]] = self._array
            self._array = grown
        return self._array


def running_from(running: Samples, start: int) -> Samples:
    """Per row, the running sums of the values from ``start`` on, counted from the first of them
    (``running`` holds running sums counted from its own first value)."""
    tail = running[..., start:]
    if start > 0:
        tail = tail - running[..., start - 1 : start]
    return tail


class WindowSums:
    """Sums of a non-negative stream over the trailing ``window`` samples, per row (last axis is time).

    Fed each block's running sums (from the block's first value on, inclusive; the A-weighting
    filter gives them in the same pass as the filter), it keeps the running sums of the whole stream:
    each block costs one addition over the block, not a sum over the window again. Running sums of
    non-negative terms never decrease in floating point, so the window sums are never negative. When
    the buffer fills, the live part moves to its front rebased (the newest made 0), which keeps the
    sums' magnitude, and so their rounding, to a few windows' worth.
    """

    def __init__(self, window: int, rows: tuple[int, ...] = ()) -> None:
        self.window = window
        self._buffer = np.zeros((*rows, 4 * window + 4096), dtype=np.float64)
        self._start = 0  # the cumulative sums at the last ``window`` positions start here

    def trailing(self) -> Samples:
        """Per row, the sum of the last ``window - 1`` values (what a window ending at the next
        value holds besides it)."""
        start = self._start
        result: Samples = self._buffer[..., start + self.window - 1] - self._buffer[..., start]
        return result

    def reset(self, cumulative: Samples) -> None:
        """Set the cumulative sums of the last ``window`` positions (the newest last)."""
        self._buffer[..., self._start : self._start + self.window] = cumulative

    def process(self, running: Samples) -> Samples:
        """The window sums ending at each value of a block given as its running sums."""
        at = self.extend(running)
        frames = running.shape[-1]
        sums: Samples = (
            self._buffer[..., at : at + frames]
            - self._buffer[..., at - self.window : at - self.window + frames]
        )
        return sums

    def extend(self, running: Samples) -> int:
        """Take a block given as its running sums without returning its window sums; where in the
        buffer its cumulative sums now start."""
        frames, window = running.shape[-1], self.window
        if self._start + window + frames > self._buffer.shape[-1]:
            live = self._buffer[..., self._start : self._start + window]
            newest = live[..., -1:]
            if self._buffer.shape[-1] < 2 * (window + frames):
                moved = np.empty((*live.shape[:-1], 4 * (window + frames)), dtype=np.float64)
            else:  # the live part lies beyond ``window``: moving it to the front cannot overlap
                moved = self._buffer
            np.subtract(live, newest, out=moved[..., :window])
            self._buffer, self._start = moved, 0
        at = self._start + window
        np.add(running, self._buffer[..., at - 1 : at], out=self._buffer[..., at : at + frames])
        self._start += frames
        return at


class ForwardMin:
    """``out[k] = min(g[k .. k+L-1])`` over a stream; output lags input by ``L - 1`` samples.

    van Herk / Gil-Werman: the stream (after ``L - 1`` priming ones) is cut into chunks of ``L``
    samples. The window starting at ``k`` reaches from ``k`` to the end of its chunk and on into the
    next one up to ``k+L-1``, so its minimum is ``min(suffix[k], prefix[k+L-1])``, the running minima
    from the chunk's end and from its start. Each sample's prefix and suffix minimum is computed
    once, so a block costs the same whatever ``L``, and nothing is recomputed for the look-ahead.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        keep = window - 1
        # The last ``L - 1`` samples (no output window starts at them yet), then the new block:
        # raw values while their chunk is incomplete, its suffix minima once it is complete.
        self._pending = _Scratch((keep + 1024,))
        self._pending.get(keep)[:keep] = 1.0
        self._received = keep  # stream position of the next input sample
        self._prefix = 1.0  # minimum of the current chunk so far (inf when it is empty)

    def at_unity(self) -> bool:
        """All of the look-ahead holds 1: the next outputs are ones while inputs are."""
        # The pending samples are the end of one complete chunk (the first one's suffix minimum is
        # the least of them) followed by the current chunk (its prefix minimum).
        keep = self.window - 1
        complete = self._received % self.window < keep
        return self._prefix >= 1.0 and (not complete or float(self._pending.get(keep)[0]) >= 1.0)

    def process(self, g: Samples) -> Samples:
        frames = g.shape[0]
        window, keep = self.window, self.window - 1
        pending = self._pending.get(keep + frames)
        pending[keep : keep + frames] = g
        out = np.empty(frames, dtype=np.float64)
        # prefix minima of the new samples, restarting at each chunk boundary
        start, position = 0, self._received
        while start < frames:
            stop = min(frames, start + window - position % window)
            piece = out[start:stop]
            np.minimum.accumulate(g[start:stop], out=piece)
            if position % window:
                np.minimum(piece, self._prefix, out=piece)
            position += stop - start
            self._prefix = float(piece[-1]) if position % window else np.inf
            start = stop
        # suffix minima of the chunks this block completed, from the first pending sample on
        first = self._received - keep  # stream position of pending[0]
        end = self._received + frames
        chunk_end = (self._received // window + 1) * window
        while chunk_end <= end:
            chunk = pending[max(chunk_end - window, first) - first : chunk_end - first][::-1]
            np.minimum.accumulate(chunk, out=chunk)
            chunk_end += window
        # the window starting at pending[j]: suffix minimum there, prefix minimum at its last sample
        np.minimum(out, pending[:frames], out=out)
        pending[:keep] = pending[frames : frames + keep]
        self._received = end
        return out


class GainSmoother:
    """Required gain in, applied gain out (``≤`` required, ramped); lags by ``latency`` samples.

    ``lookahead`` (default ``window``) is the forward-minimum window of step 1; a caller whose
    required gain needs its own forward minimum first passes the two windows' sum minus one (two
    forward minima in a row are one over the joined window) and saves a pass.
    """

    def __init__(self, window: int, release_step: float, lookahead: int | None = None) -> None:
        self.window = window
        self._forward_min = ForwardMin(lookahead or window)
        self.latency = self._forward_min.window - 1
        self.release_step = release_step
        self._steps = _Scratch((1024,))
        self._steps_ready = 0
        self._r_last = 1.0
        self._ones_run = window - 1  # trailing samples of r that are exactly 1
        # r all ones: the exact cumulative sums the box average returns to at unity, so that the
        # fast path and the slow path agree to the last bit
        self._unit_csum = np.arange(-(window - 1), 1.0)
        self._box = WindowSums(window)
        self._box.reset(self._unit_csum)
        self._unity = True

    def at_unity(self) -> bool:
        """No reduction pending anywhere in the state (the common case for quiet programs)."""
        return self._unity

    def _release_steps(self, frames: int) -> Samples:
        steps = self._steps.get(frames)
        if self._steps_ready < frames:
            np.multiply(np.arange(frames, dtype=np.float64), self.release_step, out=steps[:frames])
            self._steps_ready = frames
        return steps[:frames]

    def process(self, required: Samples) -> Samples:
        frames = required.shape[0]
        # Fast path: nothing to reduce now or in the look-ahead; the slow path would return ones
        # and leave the state as it is, so both paths give identical output.
        if self._unity and float(np.minimum.reduce(required)) >= 1.0:
            return np.ones(frames, dtype=np.float64)
        m = self._forward_min.process(required)
        steps = self._release_steps(frames)
        r = np.subtract(m, steps)
        np.minimum.accumulate(r, out=r)
        np.minimum(r, self._r_last + self.release_step, out=r)
        r += steps
        np.minimum(r, m, out=r)
        # Rounding in the closed form leaves 1 - 1e-16 where the gain is fully released; snapping
        # it to 1 lets the fast path take over again.
        released = r > 1.0 - 1e-12
        r[released] = 1.0
        self._r_last = float(r[-1])
        if self._r_last < 1.0:
            self._ones_run = 0
        else:  # the last reduced sample is the first False from the end
            last_reduced = int(released[::-1].argmin())
            all_ones = bool(released[frames - 1 - last_reduced])
            self._ones_run = self._ones_run + frames if all_ones else last_reduced
        smoothed = self._box.process(np.cumsum(r, out=r))  # r is not needed after this
        smoothed /= self.window
        self._unity = (
            self._r_last == 1.0
            and self._ones_run >= self.window - 1
            and self._forward_min.at_unity()
        )
        if self._unity:
            self._box.reset(self._unit_csum)
        return smoothed


class DelayLine:
    """Delays a multichannel float32 stream by ``frames`` (primed with silence), optionally scaling
    what comes out by a per-frame gain."""

    def __init__(self, frames: int, channels: int) -> None:
        self.frames = frames
        self._ring = np.zeros((frames, channels), dtype=np.float32)
        self._at = 0  # the oldest frame, where the next one is written

    def process(self, block: Block, gain: Samples | None = None) -> Block:
        frames, length = block.shape[0], self.frames
        out = np.empty(block.shape, dtype=np.float32)
        if frames >= length:
            out[: length - self._at] = self._ring[self._at :]
            out[length - self._at : length] = self._ring[: self._at]
            out[length:] = block[: frames - length]
            self._ring[:] = block[frames - length :]
            self._at = 0
        else:
            first = min(frames, length - self._at)
            out[:first] = self._ring[self._at : self._at + first]
            out[first:] = self._ring[: frames - first]
            self._ring[self._at : self._at + first] = block[:first]
            self._ring[: frames - first] = block[first:]
            self._at = (self._at + frames) % length
        if gain is not None:
            # float64 product rounded once to float32, as multiplying in float64 and converting
            np.multiply(out, gain[:, None], out=out, casting="same_kind")
        return out


class LookAheadLimiter:
    """Streaming peak limiter. ``process(block)`` returns a block of the same length (the first
    ``latency_frames`` samples of the stream are silence).

    With ``true_peak`` the peak it holds is the reconstructed waveform's (``TruePeakDetector``:
    the sample and three points interpolated after it, ITU-R BS.1770-4 style), and a sample's
    required gain is the least of the two intervals it bounds; the detector's look-ahead adds
    ``HALF_SPAN`` frames of latency. A block whose samples stay below ``ceiling /
    OVERSHOOT_BOUND`` cannot reach the ceiling between them, so it is not measured at all.
    """

    def __init__(
        self,
        sample_rate: int,
        ceiling: float,
        *,
        lookahead_s: float = DEFAULT_LOOKAHEAD_S,
        release_s: float = DEFAULT_RELEASE_S,
        channels: int = 2,
        true_peak: bool = False,
    ) -> None:
        self.set_ceiling(ceiling)
        self.window = _odd_window(lookahead_s, sample_rate)
        self._smoother = GainSmoother(self.window, 1.0 / max(1.0, release_s * sample_rate))
        self._detector = TruePeakDetector(channels) if true_peak else None
        self._bound = OVERSHOOT_BOUND if true_peak else 1.0
        self._last_peak = 0.0  # the true peak of the interval before the next one measured
        # at least the largest magnitude the detector keeps from earlier blocks (the last block's
        # peak when it was as long as what is kept, else the largest since such a block)
        self._kept_peak = 0.0
        detector_delay = self._detector.delay_frames if self._detector is not None else 0
        self.latency_frames = self._smoother.latency + detector_delay
        self._delay = DelayLine(self.latency_frames, channels)
        self.min_gain = 1.0
        #: The last block came out exactly as it went in, only delayed (no gain, nothing clipped).
        self.passed = True

    def set_ceiling(self, ceiling: float) -> None:
        """Change the ceiling; the look-ahead turns the change into a ramp like any other."""
        if not 0.0 < ceiling <= 1.0:
            raise ValueError(f"ceiling must be in (0, 1], got {ceiling}")
        self.ceiling = float(ceiling)

    def process(self, block: Block) -> Block:
        if block.shape[0] == 0:
            return block
        # one compiled pass (two numpy reductions cost several times as much on a short block)
        block_peak = largest_magnitude(np.ascontiguousarray(block, dtype=np.float32))
        detector = self._detector
        quiet = self.ceiling / self._bound
        kept_peak = self._kept_peak
        if detector is not None:
            long_block = block.shape[0] >= detector.kept_frames
            self._kept_peak = block_peak if long_block else max(kept_peak, block_peak)
        if block_peak <= quiet and kept_peak <= quiet and self._smoother.at_unity():
            self.passed = True
            if detector is not None:
                detector.skip(block)
                self._last_peak = 0.0
            return self._delay.process(block)  # nothing to limit, now or pending
        if detector is None:
            peak = _loudest(block)
        else:
            interval = detector.process(block)
            peak = np.empty_like(interval)  # each sample bounds the interval before and after it
            peak[0] = max(interval[0], self._last_peak)
            np.maximum(interval[1:], interval[:-1], out=peak[1:])
            self._last_peak = float(interval[-1])
        np.maximum(peak, self.ceiling * _FLOOR, out=peak)  # silence: as in ``LevelCeiling``
        required = np.divide(self.ceiling, peak, out=peak)
        np.minimum(required, 1.0, out=required)
        gain = self._smoother.process(required)
        lowest = float(np.minimum.reduce(gain))
        self.min_gain = min(self.min_gain, lowest)
        # A gain of 1 throughout is ``≤`` every sample's required gain: nothing is over the
        # ceiling, so the clip below leaves the delayed input as it is.
        self.passed = lowest >= 1.0
        out = self._delay.process(block, gain if lowest < 1.0 else None)
        # Rounding can only ever leave a few ULPs over the ceiling; this clip never shapes sound.
        np.clip(out, -self.ceiling, self.ceiling, out=out)
        return out


def _loudest(block: NDArray[np.floating]) -> Samples:
    """Row-wise maximum of ``|block|`` in float64 (faster than ``max(axis=1)`` for two or so
    channels)."""
    out: Samples = np.abs(block[:, 0], dtype=np.float64)
    for c in range(1, block.shape[1]):
        np.maximum(out, np.abs(block[:, c]), out=out)
    return out


class LevelCeiling:
    """Keeps the weighted mean-square of the output at or below a maximum in every window, for
    each of its weightings at once.

    ``weightings`` are stateful filters applied to the input (for the safety chain: A, C and none,
    as one ``Weightings`` bank that runs them in one pass), each with its maximum in
    ``max_mean_squares``; each writes the running sum of its weighted
    block's squares channel by channel, ``(channels, frames)`` float64, from the block's first
    frame on, into the array it is given (``Weighting``). The first weighting's is kept as
    ``energy`` (the chain's meter reuses it). One gain serves them all: a window's required gain
    is the least any weighting asks. ``passed`` says whether the last block came out as it went
    in, only delayed. Latency: two windows.
    """

    def __init__(
        self,
        sample_rate: int,
        max_mean_squares: Sequence[float],
        weightings: Sequence[Weighting] | Weightings,
        *,
        window_s: float = DEFAULT_LEVEL_WINDOW_S,
        release_s: float = 1.0,
        channels: int = 2,
    ) -> None:
        if not weightings or len(weightings) != len(max_mean_squares):
            raise ValueError("give one maximum mean square per weighting (at least one)")
        self._weigh = (
            weightings.running_energy_into
            if isinstance(weightings, Weightings)
            else _one_by_one(tuple(weightings))
        )
        self._count = len(weightings)
        self.channels = channels
        self.window = _odd_window(window_s, sample_rate)
        self._limits = np.zeros((self._count, 1), dtype=np.float64)
        self._window_limits = self._limits
        self.set_max_mean_squares(*max_mean_squares)
        # every weighting's running sums side by side, (weightings, channels, frames): one window
        # sum and one quick test for all of them; primed with silence
        self._energy = WindowSums(self.window, (self._count, channels))
        # A sample's gain limit is the minimum of ``required`` over the windows that hold it (one
        # forward minimum), which the smoother takes a forward minimum of again: one pass over both.
        self._smoother = GainSmoother(
            self.window,
            1.0 / max(1.0, release_s * sample_rate),
            lookahead=2 * self.window - 1,
        )
        self.latency_frames = self._smoother.latency
        self._delay = DelayLine(self.latency_frames, channels)
        self.min_gain = 1.0
        self.energy: Samples = np.zeros((channels, 0), dtype=np.float64)
        self.passed = True

    @property
    def max_mean_squares(self) -> list[float]:
        """Each weighting's maximum, in their order."""
        return [float(v) for v in self._limits[:, 0]]

    @property
    def max_mean_square(self) -> float:
        """The first weighting's maximum."""
        return float(self._limits[0, 0])

    def set_max_mean_squares(self, *values: float) -> None:
        """New maxima, in the order of the weightings (the first ones only, when fewer)."""
        for index, value in enumerate(values):
            if not value > 0.0:
                raise ValueError(f"the maximum mean square must be positive, got {value}")
            self._limits[index, 0] = float(value)
        self._window_limits = self.window * self._limits

    def process(self, block: Block) -> Block:
        frames = block.shape[0]
        if frames == 0:
            return block
        running = np.empty((self._count, self.channels, frames), dtype=np.float64)
        self._weigh(block, running)
        self.energy = running[0]
        self.passed = True
        window = self.window
        if self._smoother.at_unity() and self._every_window_under(running):
            # Only the last window's values matter to the sums of the windows still to come.
            self._energy.extend(running_from(running, max(0, frames - window)))
            return self._delay.process(block)
        window_sums = self._energy.process(running)
        # each weighting's loudest channel, as a share of its maximum; then the largest share
        shares = np.maximum.reduce(window_sums, axis=1)
        shares /= window * self._limits
        over: Samples = np.maximum.reduce(shares, axis=0)
        # No window over its maximum and none pending: the gain would be exactly 1 throughout.
        if float(np.maximum.reduce(over)) <= 1.0 and self._smoother.at_unity():
            return self._delay.process(block)
        required = over  # min(1, sqrt(1 / share)), in place
        # Silence would divide by zero; any floor far below 1 gives the same 1 (and costs less
        # than switching the warning off).
        np.maximum(over, _FLOOR, out=over)
        np.divide(1.0, over, out=required)
        np.sqrt(required, out=required)
        np.minimum(required, 1.0, out=required)
        gain = self._smoother.process(required)
        lowest = float(np.minimum.reduce(gain))
        self.min_gain = min(self.min_gain, lowest)
        self.passed = lowest >= 1.0  # times exactly 1.0, rounded to float32: the input unchanged
        return self._delay.process(block, gain)

    def _every_window_under(self, running: Samples) -> bool:
        """A cheap sufficient test that no trailing window ending in this block is over its
        weighting's maximum: cut the block into window-long chunks; a window ending in one chunk
        lies within it and the chunk before (the first chunk: the ``window - 1`` values before the
        block), so the sum of two neighbours bounds it. A few values of the running sums instead
        of a sum per window; at most 3 dB pessimistic, and the exact test follows whenever it
        fails."""
        window = self.window
        frames = running.shape[-1]
        limits = window * self._limits[:, 0]
        if frames <= window:  # every window ending in the block lies within it and the one before
            total = self._energy.trailing()
            total += running[..., -1]
            return bool((total <= self._window_limits).all())
        whole = frames // window
        # running sums before the block, at each whole chunk's end, and at the block's end
        marks = np.zeros((*running.shape[:-1], whole + 2), dtype=np.float64)
        marks[..., 1 : whole + 1] = running[..., window - 1 : whole * window : window]
        marks[..., -1] = running[..., -1]
        chunks = np.empty_like(marks)
        chunks[..., 0] = self._energy.trailing()
        np.subtract(marks[..., 1:], marks[..., :-1], out=chunks[..., 1:])
        pairs = chunks[..., :-1] + chunks[..., 1:]
        loudest = np.maximum.reduce(np.maximum.reduce(pairs, axis=2), axis=1)
        return bool(np.all(loudest <= limits))


def _one_by_one(weightings: tuple[Weighting, ...]) -> Callable[[Block, Samples], None]:
    """Separate weightings as one: each writes its own row of the running sums."""

    def weigh(block: Block, running: Samples) -> None:
        for weighting, into in zip(weightings, running, strict=True):
            weighting(block, into)

    return weigh
