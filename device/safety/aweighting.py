"""A-weighting (IEC 61672-1:2013) as a streaming digital filter at 44.1, 48 kHz or any rate above 32 kHz.

The analogue response (IEC 61672-1 Annex E, also in ``shared/docs/safety.md``)::

    R_A(f) = 12194² f⁴ / ((f² + 20.6²) √((f² + 107.7²)(f² + 737.9²)) (f² + 12194²)),
    A(f) = 20 log10 R_A(f) + 2.00 dB

has four zeros at 0 Hz and poles at 20.6 Hz (double), 107.7 Hz, 737.9 Hz and 12194 Hz (double). The
low-frequency part (every zero and the first four poles) goes through the bilinear transform, which is
exact enough far below Nyquist. The 12194 Hz double pole does not: its bilinear image puts two zeros at
Nyquist and droops by 1.5 dB at 10 kHz and 8.5 dB at 16 kHz (44.1 kHz). It is replaced by a biquad whose
poles and zeros are fitted by least squares to that pole pair's magnitude from 500 Hz to 97 % of
Nyquist, which keeps the whole filter within 0.1 dB of A(f) from 20 Hz to 16 kHz at 44.1 and 48 kHz
(checked against the formula in ``tests/device/test_aweighting.py``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from scipy import optimize, signal

F_LOW: Final = (20.598997, 107.65265, 737.86223)
F_HIGH: Final = 12194.217
A1000: Final = 1.9997  # dB: the constant that makes A(1 kHz) = 0

Block = NDArray[np.float32]


def a_weighting_db(frequency_hz: NDArray[np.floating[Any]] | float) -> NDArray[np.float64]:
    """A(f) in dB from the IEC 61672-1 formula (0 dB at 1 kHz)."""
    f2 = np.square(np.asarray(frequency_hz, dtype=np.float64))
    ra = (F_HIGH**2 * f2 * f2) / (
        (f2 + F_LOW[0] ** 2)
        * np.sqrt((f2 + F_LOW[1] ** 2) * (f2 + F_LOW[2] ** 2))
        * (f2 + F_HIGH**2)
    )
    result: NDArray[np.float64] = 20.0 * np.log10(ra) + A1000
    return result


def _high_pole_pair(sample_rate: int) -> tuple[list[float], list[float]]:
    """Zeros and poles of a biquad fitted to |1 / (1 + j f / 12194)|² (see the module docstring)."""
    top = min(20_000.0, 0.97 * sample_rate / 2)
    f = np.geomspace(500.0, top, 300)
    weight = np.where(f <= 16_000.0, 1.0, 0.2)
    target_db = -20.0 * np.log10(1.0 + (f / F_HIGH) ** 2)

    def response_db(x: NDArray[np.float64], freqs: NDArray[np.float64]) -> NDArray[np.float64]:
        b = np.poly([x[2], x[3]])
        a = np.poly([x[0], x[1]])
        _, h = signal.freqz(b, a, worN=freqs, fs=sample_rate)
        _, h0 = signal.freqz(b, a, worN=[1.0], fs=sample_rate)
        db: NDArray[np.float64] = 20.0 * np.log10(np.abs(h) / np.abs(h0[0]))
        return db

    def residuals(x: NDArray[np.float64]) -> NDArray[np.float64]:
        out: NDArray[np.float64] = weight * (response_db(x, f) - target_db)
        return out

    start = np.exp(-2 * np.pi * F_HIGH / sample_rate)
    fit = optimize.least_squares(
        residuals,
        x0=[start, start, -0.5, -0.5],
        bounds=([-0.99, -0.99, -1.0, -1.0], [0.99, 0.99, 1.0, 1.0]),
    )
    p1, p2, z1, z2 = (float(v) for v in fit.x)
    return [z1, z2], [p1, p2]


@lru_cache(maxsize=8)
def design_a_weighting(sample_rate: int) -> NDArray[np.float64]:
    """Second-order sections of the A-weighting filter at ``sample_rate``, 0 dB at 1 kHz."""
    if sample_rate < 32_000:
        raise ValueError(f"A-weighting needs a sample rate of at least 32 kHz, got {sample_rate}")
    poles = [-2 * np.pi * F_LOW[0]] * 2 + [-2 * np.pi * F_LOW[1], -2 * np.pi * F_LOW[2]]
    zd, pd, _k = signal.bilinear_zpk([0.0] * 4, poles, 1.0, sample_rate)
    high_zeros, high_poles = _high_pole_pair(sample_rate)
    sos = signal.zpk2sos(np.concatenate((zd, high_zeros)), np.concatenate((pd, high_poles)), 1.0)
    _, h = signal.sosfreqz(sos, worN=[1000.0], fs=sample_rate)
    sos[0, :3] /= np.abs(h[0])
    result: NDArray[np.float64] = sos
    return result


try:  # scipy's compiled cascade without sosfilt's per-call argument handling (4x less overhead
    # per block, which matters at 256-frame blocks); the public function is the fallback.
    from scipy.signal._sosfilt import _sosfilt as _compiled_sosfilt
except ImportError:  # pragma: no cover - depends on the installed scipy
    _compiled_sosfilt = None  # type: ignore[assignment]


class AWeightingFilter:
    """Streaming: the filter state carries across blocks, so the output ignores block boundaries."""

    def __init__(self, sample_rate: int, channels: int = 2) -> None:
        self.sos = design_a_weighting(sample_rate)
        self.channels = channels
        self._zi = np.zeros((channels, self.sos.shape[0], 2), dtype=np.float64)

    def process(self, block: Block) -> Block:
        # (channels, frames), C-contiguous float64: the layout the compiled cascade filters in place
        y = np.array(block.T, dtype=np.float64, order="C")
        if _compiled_sosfilt is not None:
            _compiled_sosfilt(self.sos, y, self._zi)
        else:
            zi = np.moveaxis(self._zi, 0, 1)
            y, zi = signal.sosfilt(self.sos, y, axis=-1, zi=zi)
            self._zi = np.ascontiguousarray(np.moveaxis(zi, 1, 0))
        result: Block = y.T.astype(np.float32)
        return result

    __call__ = process
