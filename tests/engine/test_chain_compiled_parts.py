"""The safety chain's compiled parts against the numpy code they replaced (issue 22, the chain's
cost): the true-peak detector (six ``numpy.convolve`` calls per stereo block before), the three
weightings of the level ceiling (three calls of the cascade before, one pass now), and the per-block
bookkeeping that cost more in numpy calls than in arithmetic: the gain smoother (forward minimum,
release, box average), the delay lines, the level ceiling's window sums and quick test, the meter's
delayed energy and the DC blocker's float32 frames. The reference versions live here alone (the
benchmark's previous chain is built from them too: ``benchmarks/bench_safety_chain.py``); the
chain built from them must play, bit for bit, what the chain plays."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from resonera.common.profile import HearingProfile
from resonera.engine.safety._cascade import (
    append_running,
    delay,
    delay_running,
    largest_magnitude,
    window_test,
)
from resonera.engine.safety.aweighting import (
    AWeightingFilter,
    CascadeFilter,
    CWeightingFilter,
    Unweighted,
    WeightingBank,
)
from resonera.engine.safety.chain import ChainLimits, SafetyChain, _Delay
from resonera.engine.safety.dcblock import DcBlocker
from resonera.engine.safety.limiter import (
    _FLOOR,
    DEFAULT_LEVEL_WINDOW_S,
    DelayLine,
    ForwardMin,
    GainSmoother,
    LevelCeiling,
    LookAheadLimiter,
    Weighting,
    Weightings,
    WindowSums,
    _loudest,
    running_from,
)
from resonera.engine.safety.meter import MelMeter, _db
from resonera.engine.safety.truepeak import HALF_SPAN, PHASE_TAPS, TruePeakDetector

Samples = NDArray[np.float64]
Block = NDArray[np.float32]

RATE = 48_000
T0 = 1_800_000_000.0


class NumpyTruePeakDetector:
    """The detector as it was: one ``numpy.convolve`` per phase and channel."""

    def __init__(self, channels: int = 2) -> None:
        self.channels = channels
        self.delay_frames = HALF_SPAN
        self.kept_frames = 2 * HALF_SPAN - 1
        self._history = np.zeros((self.kept_frames, channels), dtype=np.float64)
        self._kernels = [np.ascontiguousarray(row[::-1]) for row in PHASE_TAPS]

    def skip(self, block: NDArray[np.float32]) -> None:
        padded = np.concatenate((self._history, block.astype(np.float64)))
        self._history[:] = padded[len(padded) - self.kept_frames :]

    def process(self, block: NDArray[np.float32]) -> NDArray[np.float64]:
        frames = len(block)
        padded = np.concatenate((self._history, block.astype(np.float64)))
        self.skip(block)
        centre = padded[HALF_SPAN - 1 : HALF_SPAN - 1 + frames]
        peak: NDArray[np.float64] = np.abs(centre).max(axis=1)
        for kernel in self._kernels:
            for c in range(self.channels):
                np.maximum(peak, np.abs(np.convolve(padded[:, c], kernel, "valid")), out=peak)
        return peak


class NumpyForwardMin(ForwardMin):
    """The forward minimum as it was: numpy's running minima, chunk by chunk."""

    def process(self, g: Samples) -> Samples:
        frames = g.shape[0]
        window, keep = self.window, self.window - 1
        pending = self._pending.get(keep + frames)
        pending[keep : keep + frames] = g
        out = np.empty(frames, dtype=np.float64)
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
        first = self._received - keep
        end = self._received + frames
        chunk_end = (self._received // window + 1) * window
        while chunk_end <= end:
            chunk = pending[max(chunk_end - window, first) - first : chunk_end - first][::-1]
            np.minimum.accumulate(chunk, out=chunk)
            chunk_end += window
        np.minimum(out, pending[:frames], out=out)
        pending[:keep] = pending[frames : frames + keep]
        self._received = end
        return out


class NumpyWindowSums(WindowSums):
    """Window sums as they were: the running sums appended by ``numpy.add``."""

    def extend(self, running: Samples, skip: int = 0) -> int:
        tail = running_from(running, skip)
        at = self.reserve(tail.shape[-1])
        np.add(tail, self.buffer[..., at - 1 : at], out=self.buffer[..., at : at + tail.shape[-1]])
        return at

    def process(self, running: Samples) -> Samples:
        at = self.extend(running)
        frames = running.shape[-1]
        sums: Samples = (
            self.buffer[..., at : at + frames]
            - self.buffer[..., at - self.window : at - self.window + frames]
        )
        return sums


class NumpyGainSmoother(GainSmoother):
    """The smoother as it was: each step a few numpy calls over the block."""

    def __init__(self, window: int, release_step: float, lookahead: int | None = None) -> None:
        super().__init__(window, release_step, lookahead)
        self._forward_min = NumpyForwardMin(self._forward_min.window)
        self._box = NumpyWindowSums(window)
        self._box.reset(self._unit_csum)

    def process(self, required: Samples) -> Samples:
        frames = required.shape[0]
        if self._unity and float(np.minimum.reduce(required)) >= 1.0:
            return np.ones(frames, dtype=np.float64)
        m = self._forward_min.process(required)
        steps = np.multiply(np.arange(frames, dtype=np.float64), self.release_step)
        r = np.subtract(m, steps)
        np.minimum.accumulate(r, out=r)
        np.minimum(r, self._r_last + self.release_step, out=r)
        r += steps
        np.minimum(r, m, out=r)
        released = r > 1.0 - 1e-12
        r[released] = 1.0
        self._r_last = float(r[-1])
        if self._r_last < 1.0:
            self._ones_run = 0
        else:
            last_reduced = int(released[::-1].argmin())
            all_ones = bool(released[frames - 1 - last_reduced])
            self._ones_run = self._ones_run + frames if all_ones else last_reduced
        assert isinstance(self._box, NumpyWindowSums)
        smoothed = self._box.process(np.cumsum(r, out=r))
        smoothed /= self.window
        self._unity = (
            self._r_last == 1.0
            and self._ones_run >= self.window - 1
            and self._forward_min.at_unity()
        )
        if self._unity:
            self._box.reset(self._unit_csum)
        return smoothed


class NumpyDelayLine(DelayLine):
    """The delay line as it was: slices of a ring copied by numpy, the clip by ``numpy.clip``."""

    def process(
        self, block: Block, gain: Samples | None = None, limit: float | None = None
    ) -> Block:
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
            np.multiply(out, gain[:, None], out=out, casting="same_kind")
        if limit is not None:
            np.clip(out, -limit, limit, out=out)
        return out

    def write(self, block: Block) -> None:
        """The chain's ring of its recent output as it was."""
        keep = min(len(block), self.frames)
        at = self._at
        first = min(keep, self.frames - at)
        self._ring[at : at + first] = block[len(block) - keep : len(block) - keep + first]
        self._ring[: keep - first] = block[len(block) - keep + first :]
        self._at = (at + keep) % self.frames


class NumpyLevelCeiling(LevelCeiling):
    """The level ceiling as it was: its window sums, shares and quick test in numpy."""

    def __init__(
        self,
        sample_rate: int,
        max_mean_squares: list[float],
        weightings: tuple[Weighting, ...] | Weightings,
        *,
        window_s: float = DEFAULT_LEVEL_WINDOW_S,
        clip: float | None = None,
    ) -> None:
        super().__init__(sample_rate, max_mean_squares, weightings, window_s=window_s, clip=clip)
        self._energy = NumpyWindowSums(self.window, (len(max_mean_squares), self.channels))
        self._smoother = NumpyGainSmoother(
            self.window, self._smoother.release_step, self._smoother.latency + 1
        )
        self._delay = NumpyDelayLine(self.latency_frames, self.channels)

    def process(self, block: Block) -> Block:
        frames = block.shape[0]
        if frames == 0:
            return block
        running = np.empty((len(self._limits), self.channels, frames), dtype=np.float64)
        self._weigh(block, running)
        self.energy = running[0]
        self.passed = True
        window = self.window
        if self._smoother.at_unity() and self._every_window_under(running):
            self._energy.extend(running_from(running, max(0, frames - window)))
            return self._delay.process(block)
        assert isinstance(self._energy, NumpyWindowSums)
        window_sums = self._energy.process(running)
        shares = np.maximum.reduce(window_sums, axis=1)
        shares /= window * self._limits
        over: Samples = np.maximum.reduce(shares, axis=0)
        if float(np.maximum.reduce(over)) <= 1.0 and self._smoother.at_unity():
            return self._delay.process(block)
        required = over
        np.maximum(over, _FLOOR, out=over)
        np.divide(1.0, over, out=required)
        np.sqrt(required, out=required)
        np.minimum(required, 1.0, out=required)
        gain = self._smoother.process(required)
        lowest = float(np.minimum.reduce(gain))
        self.min_gain = min(self.min_gain, lowest)
        self.passed = lowest >= 1.0
        out = self._delay.process(block, gain)
        if not self.passed and self.clip is not None:  # the chain's clip, as it was
            np.clip(out, -self.clip, self.clip, out=out)
        return out

    def _every_window_under(self, running: Samples) -> bool:
        window = self.window
        frames = running.shape[-1]
        limits = window * self._limits[:, 0]
        if frames <= window:
            total = self._energy.trailing()
            total += running[..., -1]
            return bool((total <= limits[:, None]).all())
        whole = frames // window
        marks = np.zeros((*running.shape[:-1], whole + 2), dtype=np.float64)
        marks[..., 1 : whole + 1] = running[..., window - 1 : whole * window : window]
        marks[..., -1] = running[..., -1]
        chunks = np.empty_like(marks)
        chunks[..., 0] = self._energy.trailing()
        np.subtract(marks[..., 1:], marks[..., :-1], out=chunks[..., 1:])
        pairs = chunks[..., :-1] + chunks[..., 1:]
        loudest = np.maximum.reduce(np.maximum.reduce(pairs, axis=2), axis=1)
        return bool(np.all(loudest <= limits))


class NumpyLookAheadLimiter(LookAheadLimiter):
    """The limiter as it was: its required gains and clip in numpy, on the numpy smoother and
    delay line."""

    def __init__(self, sample_rate: int, ceiling: float, *, true_peak: bool = False) -> None:
        super().__init__(sample_rate, ceiling, true_peak=true_peak)
        smoother = self._smoother
        self._smoother = NumpyGainSmoother(
            smoother.window, smoother.release_step, smoother.latency + 1
        )
        self._delay = NumpyDelayLine(self.latency_frames, 2)

    def process(self, block: Block, block_peak: float | None = None) -> Block:
        """``block_peak`` is not used: the limiter measured each block itself."""
        if block.shape[0] == 0:
            return block
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
            return self._delay.process(block)
        if detector is None:
            peak = _loudest(block)
        else:
            interval = detector.process(block)
            peak = np.empty_like(interval)
            peak[0] = max(interval[0], self._last_peak)
            np.maximum(interval[1:], interval[:-1], out=peak[1:])
            self._last_peak = float(interval[-1])
        np.maximum(peak, self.ceiling * _FLOOR, out=peak)
        required = np.divide(self.ceiling, peak, out=peak)
        np.minimum(required, 1.0, out=required)
        gain = self._smoother.process(required)
        lowest = float(np.minimum.reduce(gain))
        self.min_gain = min(self.min_gain, lowest)
        self.passed = lowest >= 1.0
        out = self._delay.process(block, gain if lowest < 1.0 else None)
        np.clip(out, -self.ceiling, self.ceiling, out=out)
        return out


class NumpyRunningDelay(_Delay):
    """The meter's delayed energy as it was: joined by ``numpy.concatenate``."""

    def process(self, running: Samples) -> tuple[Samples, ...]:
        frames, delay = running.shape[1], self._pending.shape[1]
        if frames >= delay:
            return super().process(running)
        joined = np.concatenate((self._pending, running + self._pending[:, -1:]), axis=1)
        self._pending = running_from(joined, frames)
        return (joined[:, :frames],)


class NumpyMelMeter(MelMeter):
    """The meter as it was: each second's energy a numpy array of the channels."""

    def __init__(self, sample_rate: int, *, spl_at_unit_rms: float, channels: int = 2) -> None:
        super().__init__(sample_rate, channels=channels, spl_at_unit_rms=spl_at_unit_rms)
        self._numpy_sum = np.zeros(channels, np.float64)

    def update_energy(self, *pieces: Samples) -> list[float]:
        whole = np.zeros(len(self._numpy_sum), np.float64)
        frames = 0
        completed: list[float] = []
        for running in pieces:
            length = running.shape[1]
            if length == 0:
                continue
            whole += running[:, -1]
            start = 0
            while start < length:
                take = min(self.sample_rate - self._frames, length - start)
                end = running[:, start + take - 1]
                self._numpy_sum += end - running[:, start - 1] if start else end
                self._frames += take
                start += take
                if self._frames == self.sample_rate:
                    level = float(np.max(self._numpy_sum)) / self.sample_rate
                    completed.append(self.offset_db + _db(level))
                    self._numpy_sum[:] = 0.0
                    self._frames = 0
            frames += length
        if frames == 0:
            return []
        self.block_level = self.offset_db + _db(float(whole.max()) / frames)
        self.mels.extend(completed)
        return completed

    def flush(self) -> tuple[float, float] | None:
        if self._frames == 0:
            return None
        level = self.offset_db + _db(float(np.max(self._numpy_sum)) / self._frames)
        length = self._frames / self.sample_rate
        self._numpy_sum[:] = 0.0
        self._frames = 0
        return level, length


class NumpyDcBlocker(DcBlocker):
    """The DC blocker as it was: float64 channels from the cascade, transposed, then float32."""

    def process(self, block: Block) -> Block:
        result: Block = self.filter_channels(block).T.astype(np.float32)
        self.last_peak = largest_magnitude(np.ascontiguousarray(result))
        return result


def program(seed: int, seconds: float) -> NDArray[np.float32]:
    """Something of everything the chain holds: a loud 20 Hz tone, a square near fs/4, noise, DC,
    pulses, each with a random level (some far under every limit, some far over)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    square = np.sign(np.sin(2 * np.pi * rng.uniform(2_000, RATE / 4) * t))
    pulses = (np.sin(2 * np.pi * t / rng.uniform(0.04, 0.06)) > 0.9).astype(np.float64)
    parts = (
        np.sin(2 * np.pi * 20 * t),
        square,
        rng.standard_normal(len(t)),
        np.ones(len(t)),
        pulses,
    )
    levels = rng.choice([0.0, 0.003, 0.05, 0.4, 1.0], size=len(parts))
    x = sum(level * part for level, part in zip(levels, parts, strict=True))
    swell = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.3, 3.0) * t)
    left = np.clip(x * swell, -1.0, 1.0)
    return np.stack([left, rng.uniform(0.2, 1.0) * left], axis=1).astype(np.float32)


def chain(
    spl_at_unit_rms: float, peak_ceiling: float, *, reference: bool, numpy_peaks: bool = True
) -> SafetyChain:
    """The chain; with ``reference``, built from the numpy parts (the true-peak detector's too
    unless ``numpy_peaks`` is false: its sums in another order differ by up to 1e-12)."""
    made = SafetyChain(
        sample_rate=RATE,
        limits=ChainLimits(spl_at_unit_rms=spl_at_unit_rms, peak_ceiling=peak_ceiling),
        profile=HearingProfile(),
        ledger=None,
        wall_clock=lambda: T0,
    )
    if reference:
        made.dc_blocker = NumpyDcBlocker(RATE)
        made.limiter = NumpyLookAheadLimiter(RATE, made.limiter.ceiling, true_peak=True)
        if numpy_peaks:
            made.limiter._detector = NumpyTruePeakDetector()  # type: ignore[assignment]
        made.level = NumpyLevelCeiling(
            RATE,
            made.level.max_mean_squares,
            (
                AWeightingFilter(RATE).running_energy_into,
                CWeightingFilter(RATE).running_energy_into,
                Unweighted().running_energy_into,
            ),
            clip=made.peak_ceiling,
        )
        made._weighted = NumpyRunningDelay(made.level.latency_frames, 2)
        made.meter = NumpyMelMeter(RATE, spl_at_unit_rms=spl_at_unit_rms)
        made._recent = NumpyDelayLine(made._recent.frames, 2)
    return made


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    spl_at_unit_rms=st.floats(60.0, 135.0),
    peak_ceiling=st.floats(0.3, 1.0),
    sizes=st.lists(st.sampled_from([13, 64, 256, 1024, 4096]), min_size=1, max_size=4),
)
def test_the_chain_plays_and_meters_what_it_did_with_the_numpy_parts(
    seed: int, spl_at_unit_rms: float, peak_ceiling: float, sizes: list[int]
) -> None:
    signal = program(seed, 1.5)
    compiled = chain(spl_at_unit_rms, peak_ceiling, reference=False)
    numpy_parts = chain(spl_at_unit_rms, peak_ceiling, reference=True)
    at, turn = 0, 0
    while at < len(signal):
        block = signal[at : at + sizes[turn % len(sizes)]]
        np.testing.assert_allclose(compiled(block), numpy_parts(block), rtol=0, atol=1e-7)
        assert compiled.level.passed == numpy_parts.level.passed
        assert compiled.limiter.passed == numpy_parts.limiter.passed
        at, turn = at + len(block), turn + 1
    np.testing.assert_allclose(compiled.mels, numpy_parts.mels, rtol=0, atol=1e-6)


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    spl_at_unit_rms=st.floats(60.0, 135.0),
    peak_ceiling=st.floats(0.3, 1.0),
    sizes=st.lists(st.sampled_from([13, 256, 1024, 2400, 2401, 9000]), min_size=1, max_size=4),
    gain_at=st.integers(0, 40),
    limit_at=st.integers(0, 60),
    fault=st.booleans(),
)
def test_the_chain_plays_bit_for_bit_what_it_played_with_its_bookkeeping_in_numpy(  # noqa: PLR0917 - hypothesis's draws
    seed: int,
    spl_at_unit_rms: float,
    peak_ceiling: float,
    sizes: list[int],
    gain_at: int,
    limit_at: int,
    fault: bool,
) -> None:
    """Every sample, every second's level and every decision (the ceiling and the limiter passing
    the block or not, the meter weighting the output itself or not) as with the numpy smoother,
    delay lines, window sums, quick test, delayed energy and DC blocker; through a gain ramp, a
    lowered level limit and, sometimes, a NaN."""
    signal = program(seed, 1.5)
    if fault:
        signal[int(1.2 * RATE), 1] = np.nan
    compiled = chain(spl_at_unit_rms, peak_ceiling, reference=False)
    numpy_parts = chain(spl_at_unit_rms, peak_ceiling, reference=True, numpy_peaks=False)
    at, turn = 0, 0
    while at < len(signal):
        if turn == gain_at:
            for made in (compiled, numpy_parts):
                made.set_gain_db(-9.0, 0.2)
        if turn == limit_at:
            for made in (compiled, numpy_parts):
                made.set_level_limit(62.0)
        block = signal[at : at + sizes[turn % len(sizes)]]
        np.testing.assert_array_equal(compiled(block), numpy_parts(block))
        assert compiled.level.passed == numpy_parts.level.passed
        assert compiled.limiter.passed == numpy_parts.limiter.passed
        assert compiled.meter_filtered_frames == numpy_parts.meter_filtered_frames
        assert compiled.fault == numpy_parts.fault
        at, turn = at + len(block), turn + 1
    assert compiled.mels == numpy_parts.mels
    assert compiled.limiter.min_gain == numpy_parts.limiter.min_gain
    assert compiled.level.min_gain == numpy_parts.level.min_gain


def gains(seed: int, frames: int, nan: bool) -> Samples:
    """Required gains as the chain makes them: long runs of 1, dips of every depth and length."""
    rng = np.random.default_rng(seed)
    g = np.ones(frames)
    for _ in range(frames // 300 + 1):
        start, length = int(rng.integers(0, frames)), int(rng.integers(1, 900))
        g[start : start + length] = np.minimum(
            g[start : start + length], rng.uniform(0.01, 1.0, min(length, frames - start))
        )
    if nan:
        g[int(rng.integers(frames // 2, frames))] = np.nan
    return g


def stream(sizes: list[int], total: int) -> list[slice]:
    cuts, at, turn = [], 0, 0
    while at < total:
        cuts.append(slice(at, min(total, at + sizes[turn % len(sizes)])))
        at, turn = at + sizes[turn % len(sizes)], turn + 1
    return cuts


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    window=st.integers(3, 700),
    sizes=st.lists(st.integers(1, 1500), min_size=1, max_size=4),
    nan=st.booleans(),
)
def test_the_compiled_forward_minimum_is_the_numpy_one(
    seed: int, window: int, sizes: list[int], nan: bool
) -> None:
    g = gains(seed, 4000, nan)
    compiled, numpy_version = ForwardMin(window), NumpyForwardMin(window)
    for piece in stream(sizes, len(g)):
        np.testing.assert_array_equal(compiled.process(g[piece]), numpy_version.process(g[piece]))
        assert compiled.at_unity() == numpy_version.at_unity()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    window=st.integers(3, 1300),
    extra=st.sampled_from([0, 1, 2, 700]),
    release=st.floats(1e-5, 0.02),
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=4),
    nan=st.booleans(),
)
def test_the_compiled_gain_smoother_is_the_numpy_one(  # noqa: PLR0917 - hypothesis's draws
    seed: int, window: int, extra: int, release: float, sizes: list[int], nan: bool
) -> None:
    """Bit for bit, and the same state after every block: the same fast path taken next."""
    g = gains(seed, 12_000, nan)
    lookahead = window + extra if extra else None
    compiled = GainSmoother(window, release, lookahead)
    numpy_version = NumpyGainSmoother(window, release, lookahead)
    for piece in stream(sizes, len(g)):
        np.testing.assert_array_equal(compiled.process(g[piece]), numpy_version.process(g[piece]))
        assert compiled.at_unity() == numpy_version.at_unity()
        assert (compiled._r_last, compiled._ones_run) == (
            numpy_version._r_last,
            numpy_version._ones_run,
        ) or np.isnan(compiled._r_last) == np.isnan(numpy_version._r_last)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    length=st.integers(1, 3000),
    channels=st.integers(1, 3),
    sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=4),
)
def test_the_compiled_delay_line_is_the_numpy_one(
    seed: int, length: int, channels: int, sizes: list[int]
) -> None:
    rng = np.random.default_rng(seed)
    compiled, numpy_version = DelayLine(length, channels), NumpyDelayLine(length, channels)
    recent, numpy_recent = DelayLine(length, channels), NumpyDelayLine(length, channels)
    for turn in range(12):
        frames = sizes[turn % len(sizes)]
        block = rng.standard_normal((frames, channels)).astype(np.float32)
        gain = rng.uniform(0.0, 1.0, frames) if turn % 3 else None
        np.testing.assert_array_equal(
            compiled.process(block, gain), numpy_version.process(block, gain)
        )
        recent.write(block)
        numpy_recent.write(block)
        np.testing.assert_array_equal(recent.contents(), numpy_recent.contents())


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    delay=st.integers(2, 3000),
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=4),
)
def test_the_compiled_delayed_energy_is_the_numpy_one(
    seed: int, delay: int, sizes: list[int]
) -> None:
    rng = np.random.default_rng(seed)
    compiled, numpy_version = _Delay(delay, 2), NumpyRunningDelay(delay, 2)
    for turn in range(12):
        running = np.cumsum(rng.uniform(0.0, 1.0, (2, sizes[turn % len(sizes)])), axis=1)
        got, expected = compiled.process(running), numpy_version.process(running)
        assert len(got) == len(expected)
        for piece, reference in zip(got, expected, strict=True):
            np.testing.assert_array_equal(piece, reference)


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    window_s=st.sampled_from([0.001, 0.025, 0.05]),
    sizes=st.lists(st.sampled_from([13, 64, 1024, 2401, 4800, 9000]), min_size=1, max_size=4),
)
def test_the_compiled_level_ceiling_is_the_numpy_one_with_any_weightings(
    seed: int, window_s: float, sizes: list[int]
) -> None:
    """One weighting (the chain before issue 22), two, three, and a window of any length."""
    signal = program(seed, 1.0)
    for count in (1, 2, 3):
        limits = [1e-3, 4e-3, 0.05][:count]
        clip = 0.3 if count == 2 else None
        compiled = LevelCeiling(RATE, limits, weightings(count), window_s=window_s, clip=clip)
        numpy_version = NumpyLevelCeiling(
            RATE, limits, weightings(count), window_s=window_s, clip=clip
        )
        for piece in stream(sizes, len(signal)):
            np.testing.assert_array_equal(
                compiled.process(signal[piece]), numpy_version.process(signal[piece])
            )
            assert compiled.passed == numpy_version.passed


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    ceiling=st.floats(0.05, 1.0),
    true_peak=st.booleans(),
    sizes=st.lists(st.sampled_from([1, 13, 64, 1024, 4800]), min_size=1, max_size=4),
)
def test_the_compiled_limiter_is_the_numpy_one(
    seed: int, ceiling: float, true_peak: bool, sizes: list[int]
) -> None:
    """On sample peaks (the chain before issue 22) and true peaks."""
    signal = program(seed, 1.0)
    compiled = LookAheadLimiter(RATE, ceiling, true_peak=true_peak)
    numpy_version = NumpyLookAheadLimiter(RATE, ceiling, true_peak=true_peak)
    for piece in stream(sizes, len(signal)):
        np.testing.assert_array_equal(
            compiled.process(signal[piece]), numpy_version.process(signal[piece])
        )
        assert compiled.passed == numpy_version.passed
    assert compiled.min_gain == numpy_version.min_gain


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    sizes=st.lists(st.integers(1, 70_000), min_size=1, max_size=4),
    pieces=st.integers(1, 3),
)
def test_the_meter_counts_every_second_as_it_did(seed: int, sizes: list[int], pieces: int) -> None:
    """Every second's MEL, the last block's level and a last partial second, bit for bit, whole
    blocks or in pieces (the chain's delayed energy), across seconds."""
    rng = np.random.default_rng(seed)
    signal = (rng.uniform(0.0, 0.5) * rng.standard_normal((150_000, 2))).astype(np.float32)
    energy = np.cumsum(signal.T.astype(np.float64) ** 2, axis=1)
    meter, numpy_meter = (m(RATE, spl_at_unit_rms=95.0) for m in (MelMeter, NumpyMelMeter))
    for piece in stream(sizes, signal.shape[0]):
        block = running_from(energy[:, : piece.stop], piece.start)
        cuts = np.linspace(0, block.shape[1], pieces + 1).astype(int)
        parts = [running_from(block[:, :b], a) for a, b in itertools.pairwise(cuts)]
        assert meter.update_energy(*parts) == numpy_meter.update_energy(*parts)
        assert meter.block_level == numpy_meter.block_level
    assert meter.mels == numpy_meter.mels
    assert meter.flush() == numpy_meter.flush()


def weightings(count: int) -> tuple[Weighting, ...]:
    """The first ``count`` of the chain's A, C and unweighted measures, new."""
    made: tuple[CascadeFilter, ...] = (AWeightingFilter(RATE), CWeightingFilter(RATE), Unweighted())
    return tuple(m.running_energy_into for m in made[:count])


def test_the_dc_blocker_writes_the_frames_it_wrote_through_float64_channels() -> None:
    rng = np.random.default_rng(5)
    for channels in (1, 2, 3):
        compiled, numpy_version = DcBlocker(RATE, channels), NumpyDcBlocker(RATE, channels)
        for frames in (1, 7, 1024, 5000):
            block = (0.5 + rng.standard_normal((frames, channels))).astype(np.float32)
            if frames == 1024:
                block = np.asfortranarray(block)  # as any stage may hand it on
            if frames == 7:
                block[3, channels - 1] = np.nan  # its peak as the limiter's own test reads it
            got = compiled.process(block)
            assert got.flags.c_contiguous and got.dtype == np.float32
            np.testing.assert_array_equal(got, numpy_version.process(block))
            assert compiled.last_peak == numpy_version.last_peak or (
                np.isnan(compiled.last_peak) and np.isnan(numpy_version.last_peak)
            )
            compiled.reset()  # after a NaN
            numpy_version.reset()


def test_the_compiled_parts_refuse_arrays_they_cannot_use_and_say_which() -> None:
    ring = np.zeros((10, 2), np.float32)
    block = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="at must be a frame of the ring"):
        delay(ring, block, None, None, 10, None)
    with pytest.raises(ValueError, match="gain needs out and one value per frame of x"):
        DelayLine(10, 2).process(block, np.ones(3))
    with pytest.raises(ValueError, match="ring and x must be"):
        DelayLine(10, 2).process(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="running must hold at least one frame and fewer"):
        delay_running(np.zeros((2, 4)), np.zeros((2, 0)), np.zeros((2, 0)))
    with pytest.raises(ValueError, match="the buffer must hold a window before at"):
        append_running(np.zeros((2, 4)), WindowSums(8, (2,)).buffer, 0, 0)
    with pytest.raises(ValueError, match="running and buffer must be"):
        window_test(np.zeros((2, 4)), WindowSums(8, (2,)).buffer, 0, 8, np.ones(1))
    with pytest.raises(TypeError, match="g must be a C-contiguous float64 array"):
        ForwardMin(5).process(np.ones(4, dtype=np.float32))


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_the_compiled_true_peak_is_the_numpy_one_whatever_the_blocks(channels: int) -> None:
    rng = np.random.default_rng(channels)
    compiled, numpy_version = TruePeakDetector(channels), NumpyTruePeakDetector(channels)
    for _ in range(200):
        frames = int(rng.choice([1, 3, 14, 15, 16, 511, 512, 513, 1024, 5000]))
        block = (rng.uniform(0.0, 2.0) * rng.standard_normal((frames, channels))).astype(np.float32)
        if rng.random() < 0.2:  # the quiet path takes blocks without measuring them
            compiled.skip(block)
            numpy_version.skip(block)
            continue
        np.testing.assert_allclose(
            compiled.process(block), numpy_version.process(block), rtol=0, atol=1e-12
        )


def test_a_non_finite_sample_reaches_the_true_peak_as_it_did() -> None:
    for bad in (np.nan, np.inf, -np.inf):
        block = np.zeros((100, 2), dtype=np.float32)
        block[50, 1] = bad
        compiled = TruePeakDetector().process(block)
        reference = NumpyTruePeakDetector().process(block)
        assert np.array_equal(np.isnan(compiled), np.isnan(reference))
        assert np.array_equal(np.isinf(compiled), np.isinf(reference))
        assert not np.isfinite(compiled).all()


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_the_weighting_bank_is_each_weighting_bit_for_bit(channels: int) -> None:
    rng = np.random.default_rng(channels)
    one_by_one = (AWeightingFilter(RATE, channels), CWeightingFilter(RATE, channels))
    one_by_one[0].running_energy(rng.standard_normal((300, channels)).astype(np.float32))
    # the bank takes its filters' states as they are
    bank_a = AWeightingFilter(RATE, channels)
    bank_a._zi[...] = one_by_one[0]._zi
    bank = WeightingBank((bank_a, CWeightingFilter(RATE, channels), Unweighted(channels)))
    separate = (*one_by_one, Unweighted(channels))
    for frames in (1, 2, 100, 1024, 4097):
        block = rng.standard_normal((frames, channels)).astype(np.float32)
        expected = np.stack([f.running_energy(block) for f in separate])
        got = np.empty((3, channels, frames), dtype=np.float64)
        bank.running_energy_into(block, got)
        assert np.array_equal(got, expected)


def test_the_bank_refuses_arrays_it_cannot_fill_and_says_which() -> None:
    bank = WeightingBank((AWeightingFilter(RATE), Unweighted()))
    block = np.zeros((10, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="y must have as many values as x for every filter"):
        bank.running_energy_into(block, np.empty((1, 2, 10)))
    with pytest.raises(TypeError, match="y must be a C-contiguous float64 array"):
        bank.running_energy_into(block, np.empty((2, 2, 10), dtype=np.float32))
    with pytest.raises(ValueError, match="one channel count"):
        WeightingBank((AWeightingFilter(RATE, 1), Unweighted(2)))
