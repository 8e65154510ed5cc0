"""The A-weighting filter and exposure meter against the IEC 61672-1 formula, not against themselves."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import signal

import resonera.engine.safety.aweighting as aw
from resonera.engine.safety._cascade import cascade
from resonera.engine.safety.aweighting import AWeightingFilter, a_weighting_db
from resonera.engine.safety.meter import MelMeter

# Sound alone, no dates: left out of the faketime pass (make pytest-future).
pytestmark = pytest.mark.dateless

NOMINAL = {  # IEC 61672-1 nominal A-weightings (docs/safety.md §2)
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


def test_the_compiled_cascade_is_scipys_bit_for_bit_across_blocks_of_any_size() -> None:
    """Mono, stereo (the vector path) and three channels (the general one), the state carried
    across uneven blocks: the same values as scipy.signal.sosfilt on the whole stream."""
    sos = aw.design_a_weighting(44_100)
    rng = np.random.default_rng(5)
    for channels in (1, 2, 3):
        x = rng.standard_normal((70_000, channels)).astype(np.float32)
        expected = signal.sosfilt(sos, x.astype(np.float64), axis=0).T
        stream = AWeightingFilter(44_100, channels)
        cuts = [0, 1, 64, 1000, 16_384, 65_536, 70_000]
        got = np.concatenate(
            [stream.filter_channels(x[a:b]) for a, b in itertools.pairwise(cuts)], axis=1
        )
        assert np.array_equal(got, expected), channels


def test_the_compiled_cascade_refuses_arrays_it_cannot_filter_and_says_which() -> None:
    sos = aw.design_a_weighting(48_000)
    x = np.zeros((100, 2), dtype=np.float32)
    y, zi = np.empty((2, 100)), np.zeros((2, 3, 2))
    with pytest.raises(TypeError, match="x must be a C-contiguous float32 array"):
        cascade(sos, x.astype(np.float64), y, zi, False)
    with pytest.raises(TypeError, match="zi must be a C-contiguous float64 array"):
        cascade(sos, x, y, zi.astype(np.float32), False)
    with pytest.raises(ValueError, match="y must have as many values as x"):
        cascade(sos, x, np.empty((2, 99)), zi, False)
    with pytest.raises(ValueError, match="sos must hold whole sections"):
        cascade(sos.ravel()[:-1].copy(), x, y, zi, False)
    with pytest.raises(ValueError, match="zi must hold 2 values per section per channel"):
        cascade(sos, x, y, np.zeros(5), False)
    with pytest.raises(ValueError, match="whole frames"):
        cascade(sos, np.zeros(201, dtype=np.float32), y, zi, False)
    with pytest.raises((ValueError, BufferError)):
        cascade(sos, x, y, zi[:, :, :1], False)  # a strided view: not C-contiguous
    with pytest.raises(TypeError, match="takes 5 arguments"):
        cascade(sos, x, y, zi)  # type: ignore[call-arg]


C_NOMINAL = {  # IEC 61672-1 nominal C-weightings
    31.5: -3.0, 63: -0.8, 125: -0.2, 1000: 0.0, 4000: -0.8, 8000: -3.0, 16000: -8.5,
}  # fmt: skip


def test_the_c_formula_gives_the_nominal_values() -> None:
    for nominal, expected in C_NOMINAL.items():
        exact = 1000.0 * 10 ** (round(10 * np.log10(nominal / 1000.0)) / 10)
        assert float(aw.c_weighting_db(exact)) == pytest.approx(expected, abs=0.1), nominal


@pytest.mark.parametrize("rate", [44_100, 48_000])
def test_c_weighting_follows_its_formula_from_20_hz_to_16_khz(rate: int) -> None:
    """Measured with sines through the streaming filter, as the A-weighting's test does."""
    frequencies = np.geomspace(20.0, 16_000.0, 24)
    errors = {}
    for f in frequencies:
        seconds = max(1.0, 40.0 / f)
        t = np.arange(int(seconds * rate)) / rate
        y = aw.CWeightingFilter(rate, channels=1).process(
            np.sin(2 * np.pi * f * t)[:, None].astype(np.float32)
        )[:, 0]
        tail = slice(len(t) // 2, None)
        basis = np.stack([np.sin(2 * np.pi * f * t[tail]), np.cos(2 * np.pi * f * t[tail])])
        coef, *_ = np.linalg.lstsq(basis.T, y[tail].astype(np.float64), rcond=None)
        errors[float(f)] = float(20 * np.log10(np.hypot(*coef)) - aw.c_weighting_db(f))
    assert max(abs(e) for f, e in errors.items() if f <= 10_000) <= 0.5, errors
    assert max(abs(e) for e in errors.values()) <= 1.0, errors


@pytest.mark.parametrize("rate", [44_100, 48_000])
def test_c_weighting_low_section_is_scipys_bilinear_transform_of_its_poles(rate: int) -> None:
    _zeros, p, _gain = signal.bilinear_zpk([0, 0], [-2 * np.pi * aw.F_LOW[0]] * 2, 1.0, rate)
    sos = aw.design_c_weighting(rate)
    assert sos.shape == (2, 6)
    np.testing.assert_allclose(sos[0, 3:], np.real(np.poly(p)), rtol=1e-12)
    np.testing.assert_allclose(sos[1], aw.design_a_weighting(rate)[2], rtol=1e-12)
