"""The safety chain's compiled parts against the numpy code they replaced (issue 22, the chain's
cost): the true-peak detector (six ``numpy.convolve`` calls per stereo block before) and the three
weightings of the level ceiling (three calls of the cascade before, one pass now). The reference
versions live here alone; the chain built from them must play what the chain plays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from resonera.common.profile import HearingProfile
from resonera.engine.safety.aweighting import (
    AWeightingFilter,
    CWeightingFilter,
    Unweighted,
    WeightingBank,
)
from resonera.engine.safety.chain import ChainLimits, SafetyChain
from resonera.engine.safety.limiter import LevelCeiling
from resonera.engine.safety.truepeak import HALF_SPAN, PHASE_TAPS, TruePeakDetector

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


def chain(spl_at_unit_rms: float, peak_ceiling: float, *, reference: bool) -> SafetyChain:
    made = SafetyChain(
        sample_rate=RATE,
        limits=ChainLimits(spl_at_unit_rms=spl_at_unit_rms, peak_ceiling=peak_ceiling),
        profile=HearingProfile(),
        ledger=None,
        wall_clock=lambda: T0,
    )
    if reference:
        made.limiter._detector = NumpyTruePeakDetector()  # type: ignore[assignment]
        made.level = LevelCeiling(
            RATE,
            made.level.max_mean_squares,
            (
                AWeightingFilter(RATE).running_energy_into,
                CWeightingFilter(RATE).running_energy_into,
                Unweighted().running_energy_into,
            ),
        )
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
