"""The safety chain's meter reuses the level ceiling's A-weighting wherever the output is only the
delayed input (``safety/chain.py``). Against the meter weighting every block itself: the same audio,
the same dose events, every second's MEL within 0.01 dB, whatever the program, the gain ramps, the
block sizes, the ceiling's and the limiter's work, the attenuation at 100 % and abrupt mutes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resonera.common.profile import HearingProfile
from resonera.engine.safety.aweighting import AWeightingFilter, memory_frames
from resonera.engine.safety.chain import ChainLimits, DoseEvent, SafetyChain

#: RMS 1.0 at the ear is 100 dB SPL; peaks above 0.9 are limited.
LIMITS = ChainLimits(spl_at_unit_rms=100.0, peak_ceiling=0.9)


def program(rng: np.random.Generator, rate: int, seconds: float) -> np.ndarray:
    """Segments of tones, noise and silence at levels from far below the maximum to above it,
    switched abruptly (a mute is a jump to silence)."""
    frames = int(seconds * rate)
    out = np.zeros((frames, 2), dtype=np.float64)
    at = 0
    while at < frames:
        length = min(frames - at, int(rng.uniform(0.05, 1.5) * rate))
        kind = rng.choice(["tone", "noise", "silence"], p=[0.45, 0.4, 0.15])
        level_db = rng.uniform(40.0, 100.0)  # dB SPL of the segment's RMS
        rms = 10.0 ** ((level_db - 100.0) / 20.0)
        if kind == "tone":
            t = np.arange(length) / rate
            piece = np.sqrt(2) * np.sin(2 * np.pi * rng.uniform(60.0, 9000.0) * t)
            out[at : at + length] = rms * piece[:, None] * [1.0, rng.uniform(0.3, 1.0)]
        elif kind == "noise":
            out[at : at + length] = rms * rng.standard_normal((length, 2))
        at += length
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def chain(rate: int, shortcut: bool, events: list[DoseEvent], fallback: float) -> SafetyChain:
    made = SafetyChain(
        sample_rate=rate,
        limits=LIMITS,
        profile=HearingProfile(max_level_dba=85.0, fallback_level_dba=fallback),
        ledger=None,
        wall_clock=lambda: 1_800_000_000.0,
        on_dose_event=events.append,
        meter_shortcut=shortcut,
    )
    made.week_fraction = 0.999995  # 100 % of the week within the first seconds: the attenuation
    return made


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rate=st.sampled_from([44_100, 48_000]),
    sizes=st.lists(st.integers(64, 16_384), min_size=1, max_size=6),
    ramps=st.lists(
        st.tuples(st.integers(0, 200), st.floats(-30.0, 0.0), st.floats(0.005, 2.0)), max_size=4
    ),
    fallback=st.sampled_from([60.0, 70.0, 75.0]),
)
def test_the_shortcut_meters_every_second_as_the_meter_alone(
    seed: int,
    rate: int,
    sizes: list[int],
    ramps: list[tuple[int, float, float]],
    fallback: float,
) -> None:
    signal = program(np.random.default_rng(seed), rate, 8.0)
    events: tuple[list[DoseEvent], list[DoseEvent]] = ([], [])
    fast, exact = chain(rate, True, events[0], fallback), chain(rate, False, events[1], fallback)
    outs: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    at, index = 0, 0
    while at < len(signal):
        block = signal[at : at + sizes[index % len(sizes)]]
        for when, gain_db, ramp_s in ramps:
            if when == index:  # the session gain (a warning's attenuation, the volume)
                fast.set_gain_db(gain_db, ramp_s)
                exact.set_gain_db(gain_db, ramp_s)
        outs[0].append(fast(block))
        outs[1].append(exact(block))
        at, index = at + len(block), index + 1
    np.testing.assert_array_equal(np.concatenate(outs[0]), np.concatenate(outs[1]))
    # the same events at the same seconds (the fractions from MELs equal to within 0.01 dB)
    assert [(e.kind, e.percent, e.at) for e in events[0]] == [
        (e.kind, e.percent, e.at) for e in events[1]
    ]
    assert len(fast.mels) == len(exact.mels) == 8
    np.testing.assert_allclose(fast.mels, exact.mels, rtol=0, atol=0.01)
    assert exact.meter_filtered_frames == len(signal)


def test_a_quiet_program_is_metered_on_the_ceilings_weighting_alone() -> None:
    """Nothing for the ceiling or the limiter to do: the meter never runs its own filter, and still
    measures a 1 kHz tone (0 dB of A-weighting) at its level."""
    rate = 48_000
    t = np.arange(4 * rate) / rate
    x = (np.sqrt(2) * 10 ** ((70.0 - 100.0) / 20.0) * np.sin(2 * np.pi * 1000.0 * t)).astype(
        np.float32
    )
    fast = chain(rate, True, [], 75.0)
    fast.week_fraction = 0.0
    for start in range(0, len(x), 4096):
        fast(np.stack([x[start : start + 4096]] * 2, axis=1))
    assert fast.meter_filtered_frames == 0
    assert fast.mels[1:] == pytest.approx([70.0] * 3, abs=0.05)


def test_the_filter_memory_bounds_its_impulse_response() -> None:
    """Two signals that agree for the filter's memory give outputs that agree to 1e-12 after it."""
    rate = 44_100
    memory = memory_frames(rate)
    assert 0.1 * rate < memory < 0.3 * rate
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (3 * memory, 2)).astype(np.float32)
    b = a.copy()
    b[:memory] = rng.uniform(-1, 1, (memory, 2))  # different until ``memory`` frames ago
    fa, fb = AWeightingFilter(rate), AWeightingFilter(rate)
    ya, yb = fa.filter_channels(a), fb.filter_channels(b)
    assert np.max(np.abs(ya[:, 2 * memory :] - yb[:, 2 * memory :])) < 2e-12
