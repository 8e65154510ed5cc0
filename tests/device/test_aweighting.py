"""The A-weighting filter and exposure meter against the IEC 61672-1 formula, not against themselves."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from scipy import signal

import resonera.device.safety.aweighting as aw
from resonera.device.audio.meter import MelMeter
from resonera.device.safety.aweighting import AWeightingFilter, a_weighting_db

NOMINAL = {  # IEC 61672-1 nominal A-weightings (safety.md)
    31.5: -39.4, 63: -26.2, 100: -19.1, 250: -8.6, 500: -3.2, 1000: 0.0,
    2000: 1.2, 4000: 1.0, 8000: -1.1, 10000: -2.5, 16000: -6.6,
}  # fmt: skip


def test_the_formula_gives_the_nominal_values() -> None:
    for nominal, expected in NOMINAL.items():
        # nominal band frequencies stand for exact base-10 ones: 31.5 Hz is 10^1.5 Hz
        exact = 1000.0 * 10 ** (round(10 * np.log10(nominal / 1000.0)) / 10)
        assert float(a_weighting_db(exact)) == pytest.approx(expected, abs=0.1), nominal


def measured_gain_db(rate: int, frequency: float) -> float:
    """Steady-state gain of the filter for one sine, by least-squares fit of its amplitude."""
    seconds = max(1.0, 40.0 / frequency)
    t = np.arange(int(seconds * rate)) / rate
    x = np.sin(2 * np.pi * frequency * t)
    y = AWeightingFilter(rate, channels=1).process(x[:, None].astype(np.float32))[:, 0]
    tail = slice(len(t) // 2, None)
    basis = np.stack(
        [np.sin(2 * np.pi * frequency * t[tail]), np.cos(2 * np.pi * frequency * t[tail])]
    )
    coef, *_ = np.linalg.lstsq(basis.T, y[tail].astype(np.float64), rcond=None)
    return float(20 * np.log10(np.hypot(*coef)))


@pytest.mark.parametrize("rate", [44_100, 48_000])
def test_filter_follows_the_formula_from_20_hz_to_16_khz(rate: int) -> None:
    frequencies = np.geomspace(20.0, 16_000.0, 36)
    errors = {float(f): measured_gain_db(rate, f) - float(a_weighting_db(f)) for f in frequencies}
    up_to_10k = [abs(e) for f, e in errors.items() if f <= 10_000]
    assert max(up_to_10k) <= 0.5, errors
    assert max(abs(e) for e in errors.values()) <= 1.0, errors


def test_block_boundaries_do_not_change_the_output() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20_000, 2)).astype(np.float32)
    whole = AWeightingFilter(48_000).process(x)
    f = AWeightingFilter(48_000)
    pieces = np.concatenate([f.process(x[i : i + 777]) for i in range(0, len(x), 777)])
    np.testing.assert_allclose(pieces, whole, atol=1e-6)


def test_mel_of_a_calibrated_1khz_sine_is_within_0_2_db() -> None:
    rate, level = 48_000, 78.0
    t = np.arange(3 * rate) / rate
    rms = 10 ** ((level - 100.0) / 20)
    x = np.sqrt(2) * rms * np.sin(2 * np.pi * 1000 * t)
    meter = MelMeter(rate, spl_at_unit_rms=100.0)
    mels = meter.update(np.stack([x, x], axis=1).astype(np.float32))
    assert len(mels) == 3
    assert mels[1] == pytest.approx(level, abs=0.2)


def pink_noise(rate: int, seconds: float, seed: int) -> np.ndarray:
    n = int(rate * seconds)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / rate)
    spectrum[1:] /= np.sqrt(f[1:])
    spectrum[0] = 0
    x = np.fft.irfft(spectrum, n)
    scaled: np.ndarray = x / np.sqrt(np.mean(x**2)) * 0.05
    return scaled


@pytest.mark.parametrize("rate", [44_100, 48_000])
def test_pink_noise_meters_within_0_5_db_of_its_level_by_the_formula(rate: int) -> None:
    x = pink_noise(rate, 4.0, seed=7)
    # the reference: apply A(f) to the noise's own spectrum (Parseval), no filter involved
    spectrum = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / rate).astype(np.float64)
    weights = np.zeros_like(f)
    weights[1:] = 10 ** (a_weighting_db(f[1:]) / 10)
    power = np.abs(spectrum) ** 2 * weights
    power[1:-1] *= 2
    mean_square = power.sum() / len(x) ** 2
    expected = 100.0 + 10 * np.log10(mean_square)
    meter = MelMeter(rate, spl_at_unit_rms=100.0)
    mels = meter.update(np.stack([x, x], axis=1).astype(np.float32))
    laeq = 10 * np.log10(np.mean([10 ** (m / 10) for m in mels[1:]]))
    assert laeq == pytest.approx(expected, abs=0.5)


def test_the_compiled_and_public_filter_paths_agree() -> None:
    x = np.random.default_rng(3).standard_normal((5000, 2)).astype(np.float32)
    fast = AWeightingFilter(44_100)
    fast_out = np.concatenate([fast.process(x[:1234]), fast.process(x[1234:])])
    slow = AWeightingFilter(44_100)
    slow._sosfilt = aw._public_sosfilt
    slow_out = np.concatenate([slow.process(x[:1234]), slow.process(x[1234:])])
    np.testing.assert_allclose(fast_out, slow_out, atol=1e-6)


# The design is numpy alone; scipy.signal (a development dependency) checks it.


@pytest.mark.parametrize("rate", [32_000, 44_100, 48_000, 96_000])
def test_low_sections_are_scipys_bilinear_transform_of_the_iec_poles(rate: int) -> None:
    poles = -2 * np.pi * np.array([aw.F_LOW[0], aw.F_LOW[0], aw.F_LOW[1], aw.F_LOW[2]])
    zeros, expected_poles, _ = signal.bilinear_zpk(np.zeros(4), poles, 1.0, rate)
    sos = aw.design_a_weighting(rate)
    low_zeros = np.concatenate([np.roots(section[:3]) for section in sos[:2]])
    low_poles = np.concatenate([np.roots(section[3:]) for section in sos[:2]])
    np.testing.assert_allclose(np.sort(low_zeros.real), np.sort(zeros.real), atol=1e-6)
    np.testing.assert_allclose(np.sort(low_poles.real), np.sort(expected_poles.real), rtol=1e-7)


@pytest.mark.parametrize("rate", [32_000, 44_100, 48_000, 96_000])
def test_high_section_matches_the_analogue_pole_pair_at_0_hz_and_at_the_pole(rate: int) -> None:
    section = aw.design_a_weighting(rate)[2]
    f = np.array([1e-3, aw.F_HIGH])
    _, h = signal.freqz(section[:3], section[3:], worN=f, fs=rate)
    analogue = 1.0 / (1.0 + (f / aw.F_HIGH) ** 2)
    np.testing.assert_allclose(np.abs(h), analogue, rtol=1e-9)
    np.testing.assert_allclose(np.abs(np.roots(section[3:])), np.exp(-2 * np.pi * aw.F_HIGH / rate))


@pytest.mark.parametrize("rate", [44_100, 48_000])
def test_response_and_streaming_output_agree_with_scipy_signal(rate: int) -> None:
    sos = aw.design_a_weighting(rate)
    f = np.geomspace(10.0, 0.49 * rate, 200)
    _, expected = signal.sosfreqz(sos, worN=f, fs=rate)
    np.testing.assert_allclose(aw.sos_response(sos, f, rate), expected, rtol=1e-7)
    x = np.random.default_rng(4).standard_normal((9000, 2)).astype(np.float32)
    reference = signal.sosfilt(sos, x.astype(np.float64), axis=0)
    stream = AWeightingFilter(rate)
    out = np.concatenate([stream.process(x[i : i + 1000]) for i in range(0, len(x), 1000)])
    np.testing.assert_allclose(out, reference, atol=1e-5)


def test_a_rate_below_32_khz_is_refused_with_the_rate_named() -> None:
    with pytest.raises(ValueError, match="at least 32 kHz, got 22050"):
        AWeightingFilter(22_050)


def test_without_scipy_the_filter_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda _name: None)
    monkeypatch.delitem(sys.modules, "scipy.signal._sosfilt", raising=False)
    aw._compiled_sosfilt.cache_clear()
    try:
        with pytest.raises(aw.FilterUnavailableError, match="install scipy"):
            AWeightingFilter(48_000)
    finally:
        aw._compiled_sosfilt.cache_clear()


def test_long_blocks_filtered_channel_by_channel_on_two_threads_match_short_ones() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3 * aw.PARALLEL_MIN_FRAMES + 123, 2)).astype(np.float32)
    short = AWeightingFilter(44_100)
    expected = np.concatenate([short.process(x[i : i + 1000]) for i in range(0, len(x), 1000)])
    long = AWeightingFilter(44_100)
    step = aw.PARALLEL_MIN_FRAMES + 17  # the filter state carries across the parallel blocks too
    got = np.concatenate([long.process(x[i : i + step]) for i in range(0, len(x), step)])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert long._helper is not None  # the long blocks did go to the helper thread
    assert short._helper is None
