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
running minimum), so the output does not depend on the block size. Steps 1 and 3 carry their state
across blocks (``ForwardMin``, ``WindowSums``), so a block costs a few passes over its own samples
however long ``L`` is, and nothing here needs scipy. The passes are compiled (``_cascade.c``: the
numpy calls they were cost more than their arithmetic at a playing device's block sizes), each
computing the values the numpy version computed, in the same order; that version is the reference
in ``tests/engine/test_chain_compiled_parts.py``.

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

from resonera.engine.safety._cascade import (
    append_running,
    delay,
    forward_min,
    largest_magnitude,
    release,
    required_gains,
    window_shares,
    window_test,
)
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

    def extend(self, running: Samples, skip: int = 0) -> int:
        """Take a block given as its running sums, from its frame ``skip`` on, without returning
        its window sums (compiled: ``_cascade.c``, ``append_running``); where in the buffer its
        cumulative sums now start."""
        frames, start = running.shape[-1] - skip, self._start
        if start + self.window + frames <= self._buffer.shape[-1]:  # room: ``reserve`` inline
            at, self._start = start + self.window, start + frames
        else:
            at = self.reserve(frames)
        append_running(running, self._buffer, skip, at)
        return at

    @property
    def buffer(self) -> Samples:
        """The cumulative sums (``reserve`` says where a block's go)."""
        return self._buffer

    @property
    def start(self) -> int:
        """Where in ``buffer`` the cumulative sums of the last ``window`` positions start."""
        return self._start

    def reserve(self, frames: int) -> int:
        """Make room for a block of ``frames`` values and take it: where in ``buffer`` its
        cumulative sums go (the block's running sums plus the value before them), for the caller
        to write."""
        window = self.window
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
        """Compiled (``_cascade.c``: ``forward_min``, the numpy version it replaced is the reference
        in ``tests/engine/test_chain_compiled_gains.py``)."""
        frames = g.shape[0]
        keep = self.window - 1
        out = np.empty(frames, dtype=np.float64)
        pending = self._pending.get(keep + frames)
        self._prefix = forward_min(g, pending, out, self.window, self._received, self._prefix)
        self._received += frames
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
        #: The lowest gain of the last block ``process`` returned.
        self.lowest = 1.0
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

    def process(self, required: Samples) -> Samples:
        frames = required.shape[0]
        # Fast path: nothing to reduce now or in the look-ahead; the slow path would return ones
        # and leave the state as it is, so both paths give identical output.
        if self._unity and float(np.minimum.reduce(required)) >= 1.0:
            self.lowest = 1.0
            return np.ones(frames, dtype=np.float64)
        smoothed = self._forward_min.process(required)
        # Steps 2 and 3 in one compiled pass, in place (``_cascade.c``: ``release``): the release
        # in closed form, its rounding's 1 - 1e-16 snapped to 1 where the gain is fully released
        # (so that the fast path takes over again), the box average on the running sums.
        at = self._box.reserve(frames)
        self._r_last, self._ones_run, self.lowest = release(
            smoothed,
            self._box.buffer,
            self.release_step,
            self._r_last,
            self._ones_run,
            self.window,
            at,
        )
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
    what comes out by a per-frame gain. A ring, compiled (``_cascade.c``: ``delay``)."""

    def __init__(self, frames: int, channels: int) -> None:
        self.frames = frames
        self._ring = np.zeros((frames, channels), dtype=np.float32)
        self._at = 0  # the oldest frame, where the next one is written

    def process(
        self, block: Block, gain: Samples | None = None, limit: float | None = None
    ) -> Block:
        """The frames ``frames`` behind ``block``, times ``gain`` (float64 products rounded once to
        float32, as numpy multiplies), clipped to ``±limit`` (as ``numpy.clip``: a NaN passes)."""
        out = np.empty(block.shape, dtype=np.float32)
        self._at = delay(
            self._ring, np.ascontiguousarray(block, dtype=np.float32), out, gain, self._at, limit
        )
        return out

    def write(self, block: Block) -> None:
        """Take ``block`` without returning what it pushes out."""
        x = np.ascontiguousarray(block, dtype=np.float32)
        self._at = delay(self._ring, x, None, None, self._at, None)

    def contents(self) -> Block:
        """The last ``frames`` frames of the stream, oldest first (a copy)."""
        return np.roll(self._ring, -self._at, axis=0)


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

    def process(self, block: Block, block_peak: float | None = None) -> Block:
        """``block_peak``: the block's largest magnitude (NaN when it holds a NaN) where the caller
        knows it (the safety chain: from the DC blocker's pass), else measured here."""
        if block.shape[0] == 0:
            return block
        if block_peak is None:
            # one compiled pass (two numpy reductions cost several times as much on a short block)
            block_peak = largest_magnitude(np.ascontiguousarray(block, dtype=np.float32))
        detector = self._detector
        quiet = self.ceiling / self._bound
        kept_peak = self._kept_peak
        if detector is not None:
            long_block = block.shape[0] >= detector.kept_frames
            self._kept_peak = block_peak if long_block else max(kept_peak, block_peak)
        if block_peak <= quiet and kept_peak <= quiet and self._smoother._unity:
            self.passed = True
            if detector is not None:
                detector.skip(block)
                self._last_peak = 0.0
            return self._delay.process(block)  # nothing to limit, now or pending
        floor = self.ceiling * _FLOOR  # silence: as in ``LevelCeiling``
        if detector is None:
            peak = _loudest(block)
            np.maximum(peak, floor, out=peak)
            required = np.divide(self.ceiling, peak, out=peak)
            np.minimum(required, 1.0, out=required)
        else:
            # each sample bounds the interval before and after it: its required gain is the
            # least of theirs (compiled: ``_cascade.c``, ``required_gains``)
            interval = detector.process(block)
            required = np.empty_like(interval)
            self._last_peak = required_gains(
                interval, self._last_peak, self.ceiling, floor, required
            )
        gain = self._smoother.process(required)
        lowest = self._smoother.lowest
        self.min_gain = min(self.min_gain, lowest)
        # A gain of 1 throughout is ``≤`` every sample's required gain: nothing is over the
        # ceiling, so the clip leaves the delayed input as it is. Rounding can only ever leave a
        # few ULPs over the ceiling; the clip never shapes sound.
        self.passed = lowest >= 1.0
        return self._delay.process(block, gain if lowest < 1.0 else None, self.ceiling)


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
        clip: float | None = None,
    ) -> None:
        """``clip``: where a gain was applied, the output is clipped to ``±clip`` (the safety
        chain's peak ceiling: the limiter before held its input under it and gains of at most 1
        only lower samples, so this clip takes off rounding alone, never shapes sound)."""
        if not weightings or len(weightings) != len(max_mean_squares):
            raise ValueError("give one maximum mean square per weighting (at least one)")
        self._weigh = (
            weightings.running_energy_into
            if isinstance(weightings, Weightings)
            else _one_by_one(tuple(weightings))
        )
        self._count = len(weightings)
        self.channels = channels
        self.clip = clip
        self.window = _odd_window(window_s, sample_rate)
        self._limits = np.zeros((self._count, 1), dtype=np.float64)
        self._window_limits = np.zeros(self._count, dtype=np.float64)
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
        #: The first weighting's running sums of the last block, ``(channels, frames)`` (valid until
        #: the next block: the array is reused).
        self.energy: Samples = np.zeros((channels, 0), dtype=np.float64)
        # reused while the blocks keep their length (a fresh array of this size each block cost
        # the page faults of a new allocation)
        self._running = np.empty((self._count, channels, 0), dtype=np.float64)
        self._first = self._running[0]  # its first weighting's rows, ``energy``
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
        self._window_limits = self.window * self._limits[:, 0]  # what a window's sum may reach

    def process(self, block: Block) -> Block:
        frames = block.shape[0]
        if frames == 0:
            return block
        running = self._running
        if running.shape[-1] != frames:
            running = self._running = np.empty((self._count, self.channels, frames))
            self._first = running[0]
        self._weigh(block, running)
        self.energy = self._first
        self.passed = True
        window, sums = self.window, self._energy
        # The quick test (no window over its maximum, bounded by two neighbouring window-long
        # chunks' energy: a few values of the running sums, at most 3 dB pessimistic), then the
        # exact one when it fails; both compiled (``_cascade.c``: ``window_test``,
        # ``window_shares``).
        # (the smoother's and the sums' state read directly: this runs on every block)
        if self._smoother._unity and window_test(
            running, sums._buffer, sums._start, window, self._window_limits
        ):
            # Only the last window's values matter to the sums of the windows still to come.
            sums.extend(running, max(0, frames - window))
            return self._delay.process(block)
        # each frame's largest share of its weighting's maximum over the windows ending there,
        # and the gain that share requires, min(1, sqrt(1 / share))
        required = np.empty(frames, dtype=np.float64)
        at = sums.reserve(frames)  # first: it may move the buffer
        over = window_shares(running, sums._buffer, at, window, self._window_limits, required)
        # No window over its maximum and none pending: the gain would be exactly 1 throughout.
        if not over and self._smoother.at_unity():
            return self._delay.process(block)
        gain = self._smoother.process(required)
        lowest = self._smoother.lowest
        self.min_gain = min(self.min_gain, lowest)
        self.passed = lowest >= 1.0  # times exactly 1.0, rounded to float32: the input unchanged
        return self._delay.process(block, gain, None if self.passed else self.clip)


def _one_by_one(weightings: tuple[Weighting, ...]) -> Callable[[Block, Samples], None]:
    """Separate weightings as one: each writes its own row of the running sums."""

    def weigh(block: Block, running: Samples) -> None:
        for weighting, into in zip(weightings, running, strict=True):
            weighting(block, into)

    return weigh
