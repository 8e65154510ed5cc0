from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal as scipy_signal

from resonera.engine.safety.limiter import ForwardMin, LevelCeiling, LookAheadLimiter, WindowSums
from resonera.engine.safety.truepeak import OVERSHOOT_BOUND

RATE = 48_000


SEEDS = st.integers(0, 10_000)
#: The blocks a sound card or a render asks for, a few of them in a row.
BLOCK_SIZES = st.lists(st.integers(64, 8192), min_size=1, max_size=4)


# Sound alone, no dates: left out of the faketime pass (make pytest-future).
pytestmark = pytest.mark.dateless


def run(
    limiter: LookAheadLimiter | LevelCeiling, signal: np.ndarray, sizes: list[int]
) -> np.ndarray:
    out = []
    pos = 0
    i = 0
    while pos < len(signal):
        n = sizes[i % len(sizes)]
        out.append(limiter.process(signal[pos : pos + n]))
        pos += n
        i += 1
    return np.concatenate(out)


def same_whatever_the_blocks(
    make: Callable[[], LookAheadLimiter | LevelCeiling], signal: np.ndarray, sizes: list[int]
) -> None:
    """Fed in blocks of ``sizes``, a fresh ``make()`` puts out what it does in 1024-frame blocks."""
    reference = run(make(), signal, [1024])
    np.testing.assert_allclose(run(make(), signal, sizes), reference, atol=1e-6)


def loud_signal(seed: int, seconds: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    env = np.repeat(rng.uniform(0.05, 2.0, size=n // 480 + 1), 480)[:n]
    left = env * np.sin(2 * np.pi * 220 * t)
    right = env * np.sin(2 * np.pi * 331 * t + 1.0)
    return np.stack([left, right], axis=1).astype(np.float32)


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, ceiling=st.floats(0.05, 1.0), sizes=BLOCK_SIZES)
def test_no_sample_exceeds_the_ceiling_and_the_gain_never_jumps(
    seed: int, ceiling: float, sizes: list[int]
) -> None:
    signal = loud_signal(seed)
    limiter = LookAheadLimiter(RATE, ceiling)
    out = run(limiter, signal, sizes)
    assert np.max(np.abs(out)) <= ceiling * (1 + 1e-6)
    # the gain is the ratio of output to delayed input where the input is not tiny
    delayed = signal[: len(signal) - limiter.latency_frames]
    body = out[limiter.latency_frames :]
    mask = np.abs(delayed[:, 0]) > 0.05
    gain = body[mask, 0] / delayed[mask, 0]
    idx = np.flatnonzero(mask)
    consecutive = np.diff(idx) == 1
    assert np.all(np.abs(np.diff(gain))[consecutive] <= 1.0 / limiter.window + 1e-4)


@settings(max_examples=15, deadline=None)
@given(seed=SEEDS, sizes=BLOCK_SIZES)
def test_output_does_not_depend_on_the_block_size(seed: int, sizes: list[int]) -> None:
    same_whatever_the_blocks(lambda: LookAheadLimiter(RATE, 0.5), loud_signal(seed, 0.3), sizes)


def test_quiet_signal_passes_unchanged_after_the_latency() -> None:
    t = np.arange(RATE // 4) / RATE
    quiet = np.stack([0.3 * np.sin(2 * np.pi * 440 * t)] * 2, axis=1).astype(np.float32)
    limiter = LookAheadLimiter(RATE, 0.5)
    out = run(limiter, quiet, [512])
    np.testing.assert_allclose(
        out[limiter.latency_frames :], quiet[: -limiter.latency_frames], atol=1e-6
    )
    assert limiter.min_gain == 1.0


def test_lowering_the_ceiling_ramps_instead_of_jumping() -> None:
    t = np.arange(RATE) / RATE
    tone = np.stack([0.8 * np.sin(2 * np.pi * 300 * t)] * 2, axis=1).astype(np.float32)
    limiter = LookAheadLimiter(RATE, 1.0)
    first = limiter.process(tone[: RATE // 2])
    limiter.set_ceiling(0.2)
    second = limiter.process(tone[RATE // 2 :])
    out = np.concatenate([first, second])
    assert np.max(np.abs(second[limiter.latency_frames :])) <= 0.2 * (1 + 1e-6)
    assert np.max(np.abs(np.diff(out[:, 0]))) < 0.8 * 2 * np.pi * 300 / RATE * 1.5


def identity(block: np.ndarray, out: np.ndarray) -> None:
    """No weighting: the running sums of the squares, channel by channel, as ``LevelCeiling``
    takes them."""
    np.cumsum(np.square(block.T.astype(np.float64)), axis=1, out=out)


def window_mean_squares(out: np.ndarray, window: int) -> np.ndarray:
    energy = out.astype(np.float64) ** 2
    csum = np.concatenate((np.zeros((1, 2)), np.cumsum(energy, axis=0)))
    means: np.ndarray = np.max((csum[window:] - csum[:-window]) / window, axis=1)
    return means


@settings(max_examples=20, deadline=None)
@given(seed=SEEDS, max_db=st.floats(-40.0, -6.0), sizes=BLOCK_SIZES)
def test_level_ceiling_holds_every_window_and_every_second(
    seed: int, max_db: float, sizes: list[int]
) -> None:
    signal = loud_signal(seed, seconds=2.5)
    max_ms = 10 ** (max_db / 10)
    ceiling = LevelCeiling(RATE, [max_ms], [identity])
    out = run(ceiling, signal, sizes)
    assert window_mean_squares(out, ceiling.window).max() <= max_ms * (1 + 1e-6)
    # a one-second window holds at most one partial short window beyond its whole ones
    bound = max_ms * (1 + ceiling.window / RATE)
    assert window_mean_squares(out, RATE).max() <= bound


def test_level_ceiling_leaves_quiet_sound_alone() -> None:
    t = np.arange(RATE) / RATE
    quiet = np.stack([0.1 * np.sin(2 * np.pi * 440 * t)] * 2, axis=1).astype(np.float32)
    ceiling = LevelCeiling(RATE, [0.1], [identity])
    out = run(ceiling, quiet, [1024])
    lat = ceiling.latency_frames
    np.testing.assert_allclose(out[lat:], quiet[:-lat], atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(seed=SEEDS, max_db=st.floats(-30.0, -6.0), sizes=BLOCK_SIZES)
def test_level_ceiling_output_does_not_depend_on_the_block_size(
    seed: int, max_db: float, sizes: list[int]
) -> None:
    ceiling = 10 ** (max_db / 10)
    same_whatever_the_blocks(
        lambda: LevelCeiling(RATE, [ceiling], [identity]), loud_signal(seed, 0.6), sizes
    )


def stream(sizes: list[int], total: int) -> list[slice]:
    """Consecutive slices of ``total`` samples, cycling through ``sizes``."""
    out, at, i = [], 0, 0
    while at < total:
        out.append(slice(at, at + sizes[i % len(sizes)]))
        at += sizes[i % len(sizes)]
        i += 1
    return out


@settings(max_examples=40, deadline=None)
@given(
    seed=SEEDS,
    window=st.integers(3, 700),
    sizes=st.lists(st.integers(1, 1500), min_size=1, max_size=4),
)
def test_forward_minimum_is_the_minimum_of_each_window_whatever_the_blocks(
    seed: int, window: int, sizes: list[int]
) -> None:
    g = np.random.default_rng(seed).uniform(0.0, 1.2, 3000)
    forward = ForwardMin(window)
    out = np.concatenate([forward.process(g[s]) for s in stream(sizes, len(g))])
    primed = np.concatenate([np.ones(window - 1), g])
    expected = np.array([primed[k : k + window].min() for k in range(len(g))])
    np.testing.assert_array_equal(out, expected)
    assert forward.at_unity() == bool(g[len(g) - window + 1 :].min() >= 1.0)


@settings(max_examples=30, deadline=None)
@given(
    seed=SEEDS,
    window=st.integers(1, 3000),
    sizes=st.lists(st.integers(1, 9000), min_size=1, max_size=4),
)
def test_window_sums_are_the_sums_of_each_trailing_window(
    seed: int, window: int, sizes: list[int]
) -> None:
    x = np.random.default_rng(seed).uniform(0.0, 2.0, (2, 20_000))
    sums = WindowSums(window, (2,))
    out = np.concatenate(
        [sums.process(np.cumsum(x[:, s], axis=1)) for s in stream(sizes, x.shape[1])], axis=1
    )
    csum = np.concatenate((np.zeros((2, window)), np.cumsum(x, axis=1)), axis=1)
    np.testing.assert_allclose(out, csum[:, window:] - csum[:, :-window], rtol=1e-9, atol=1e-9)
    assert out.min() >= 0.0
    # what the level ceiling's quick test adds to the next window: the last ``window - 1`` values
    last = x[:, x.shape[1] - (window - 1) :].sum(axis=1)
    np.testing.assert_allclose(sums.trailing(), last, rtol=1e-9, atol=1e-9)


@settings(max_examples=8, deadline=None)
@given(seed=SEEDS, sizes=st.lists(st.integers(16, 3000), min_size=1, max_size=4))
def test_the_true_peak_limiter_holds_the_waveform_between_samples_whatever_the_blocks(
    seed: int, sizes: list[int]
) -> None:
    """Content near fs/4 peaks up to 3 dB between its samples; measured here by scipy's 8-times
    polyphase interpolation, not the limiter's own."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.4 * RATE)) / RATE
    x = np.sin(2 * np.pi * RATE / 4 * rng.uniform(0.95, 1.05) * t + np.pi / 4)
    x *= rng.uniform(0.3, 1.0) / np.abs(x).max()
    signal = np.stack([x, -x * rng.uniform(0.2, 1.0)], axis=1).astype(np.float32)
    # silence after it, as the player pushes through at the end: the abrupt end is measured too
    signal = np.concatenate((signal, np.zeros((2048, 2), np.float32)))
    ceiling = 0.4
    same_whatever_the_blocks(lambda: LookAheadLimiter(RATE, ceiling, true_peak=True), signal, sizes)
    out = run(LookAheadLimiter(RATE, ceiling, true_peak=True), signal, sizes)
    true_peak = np.abs(scipy_signal.resample_poly(out.astype(np.float64), 8, 1, axis=0)).max()
    assert true_peak <= ceiling * 10 ** (0.25 / 20)  # within what four points per sample miss


def test_a_block_far_below_the_ceiling_is_not_measured_between_its_samples() -> None:
    quiet = np.full((4096, 2), 0.4 / OVERSHOOT_BOUND, np.float32)
    limiter = LookAheadLimiter(RATE, 0.4, true_peak=True)
    out = run(limiter, quiet, [1024])
    assert limiter.passed and limiter.min_gain == 1.0
    np.testing.assert_array_equal(out[limiter.latency_frames :], quiet[: -limiter.latency_frames])
