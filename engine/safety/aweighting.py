"""A- and C-weighting (IEC 61672-1:2013) as streaming digital filters at 44.1, 48 kHz or any rate above
32 kHz, from one design.

The analogue response (IEC 61672-1 Annex E, also in ``docs/safety.md``)::

    R_A(f) = 12194² f⁴ / ((f² + 20.6²) √((f² + 107.7²)(f² + 737.9²)) (f² + 12194²)),
    A(f) = 20 log10 R_A(f) + 2.00 dB

has four zeros at 0 Hz and poles at 20.6 Hz (double), 107.7 Hz, 737.9 Hz and 12194 Hz (double).
C-weighting is the same curve without the 107.7 and 737.9 Hz poles and two of the zeros::

    R_C(f) = 12194² f² / ((f² + 20.6²)(f² + 12194²)),   C(f) = 20 log10 R_C(f) + 0.06 dB

so both are built by one design (``_design``), which takes the curve's low poles. The
low-frequency part (every zero and the first four poles) goes through the bilinear transform, which is
exact enough far below Nyquist. The 12194 Hz double pole does not: its bilinear image puts two zeros at
Nyquist and droops by 1.5 dB at 10 kHz and 8.5 dB at 16 kHz (44.1 kHz). It becomes a *matched* biquad
instead (M. Vicanek, "Matched Second Order Digital Filters", 2016): the analogue poles mapped exactly
(``z = e^{sT}``) and a first-order numerator chosen in closed form so that the magnitude equals the
analogue one at 0 Hz and at 12194 Hz. The whole filter is then within 0.04 dB of A(f) up to 10 kHz and
0.3 dB up to 16 kHz at 44.1 kHz (0.02 / 0.2 dB at 48 kHz), checked against the formula in
``tests/device/test_aweighting.py``.

The design is numpy alone. Filtering runs on the compiled cascade in ``_cascade.c``: the same arithmetic
as scipy's ``sosfilt``, bit for bit, but both channels of a stereo block side by side in one vector
register and the float32 block read as it comes, about 1.8 times as fast as scipy's channel after
channel. At render block sizes the weighting was the safety chain's largest cost; a playing device
imports neither ``scipy.signal`` (some 75 MB) nor its extension.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray

from resonera.engine.safety._cascade import bank, cascade, cascade_frames

F_LOW: Final = (20.598997, 107.65265, 737.86223)
F_HIGH: Final = 12194.217
A1000: Final = 1.9997  # dB: the constant that makes A(1 kHz) = 0
C1000: Final = 0.0619  # dB: the constant that makes C(1 kHz) = 0

Curve = Literal["A", "C"]
#: Each curve's low poles (Hz); each comes with one zero at 0 Hz.
_LOW_POLES: Final[dict[Curve, tuple[float, ...]]] = {
    "A": (F_LOW[0], F_LOW[0], F_LOW[1], F_LOW[2]),
    "C": (F_LOW[0], F_LOW[0]),
}

Block = NDArray[np.float32]
Samples = NDArray[np.float64]


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


def c_weighting_db(frequency_hz: NDArray[np.floating[Any]] | float) -> NDArray[np.float64]:
    """C(f) in dB from the IEC 61672-1 formula (0 dB at 1 kHz)."""
    f2 = np.square(np.asarray(frequency_hz, dtype=np.float64))
    rc = (F_HIGH**2 * f2) / ((f2 + F_LOW[0] ** 2) * (f2 + F_HIGH**2))
    result: NDArray[np.float64] = 20.0 * np.log10(rc) + C1000
    return result


def sos_response(
    sos: Samples, frequency_hz: NDArray[np.floating[Any]] | float, sample_rate: int
) -> NDArray[np.complex128]:
    """Complex frequency response of second-order sections (what ``scipy.signal.sosfreqz`` gives)."""
    z1 = np.exp(-2j * np.pi * np.asarray(frequency_hz, dtype=np.float64) / sample_rate)
    z2 = z1 * z1
    h: NDArray[np.complex128] = np.ones_like(z1)
    for b0, b1, b2, a0, a1, a2 in sos:
        h *= (b0 + b1 * z1 + b2 * z2) / (a0 + a1 * z1 + a2 * z2)
    return h


def _matched_high_pole_pair(sample_rate: int) -> tuple[list[float], list[float]]:
    """``b, a`` of the matched biquad for ``1 / (1 + s/ω₀)²`` (Vicanek's low-pass with Q = ½)."""
    w0 = 2 * np.pi * F_HIGH / sample_rate
    pole = np.exp(-w0)
    a1, a2 = -2.0 * pole, pole * pole
    # |H(e^jω)|² = (B0 φ0 + B1 φ1) / (A0 φ0 + A1 φ1 + A2 φ2) with φ0 = cos²(ω/2), φ1 = sin²(ω/2),
    # φ2 = 4 φ0 φ1; B0 = A0 gives 1 at 0 Hz, B1 gives the analogue Q² = ¼ at ω₀.
    big_a0, big_a1, big_a2 = (1 + a1 + a2) ** 2, (1 - a1 + a2) ** 2, -4 * a2
    phi1 = np.sin(w0 / 2) ** 2
    phi0 = 1 - phi1
    target = 0.25 * (big_a0 * phi0 + big_a1 * phi1 + big_a2 * 4 * phi0 * phi1)
    big_b1 = (target - big_a0 * phi0) / phi1
    b0 = 0.5 * (np.sqrt(big_a0) + np.sqrt(big_b1))
    b1 = np.sqrt(big_a0) - b0
    return [float(b0), float(b1), 0.0], [1.0, float(a1), float(a2)]


def design_a_weighting(sample_rate: int) -> Samples:
    """Second-order sections of the A-weighting filter at ``sample_rate``, 0 dB at 1 kHz."""
    return _design(sample_rate).copy()


def design_c_weighting(sample_rate: int) -> Samples:
    """Second-order sections of the C-weighting filter at ``sample_rate``, 0 dB at 1 kHz."""
    return _design(sample_rate, "C").copy()


@lru_cache(maxsize=16)
def _design(sample_rate: int, curve: Curve = "A") -> Samples:
    if sample_rate < 32_000:
        raise ValueError(
            f"{curve}-weighting needs a sample rate of at least 32 kHz, got {sample_rate}"
        )
    analogue = -2 * np.pi * np.array(_LOW_POLES[curve])
    fs2 = 2.0 * sample_rate
    digital = (fs2 + analogue) / (fs2 - analogue)  # bilinear; the zeros at 0 Hz map to z = 1
    low = len(digital) // 2
    sos = np.zeros((low + 1, 6))
    # pole pairs in order, the double 20.6 Hz pole (nearest the unit circle) first, each with two
    # of the zeros, as zpk2sos pairs them
    for k in range(low):
        sos[k, :3], sos[k, 3:] = [1.0, -2.0, 1.0], np.poly(digital[2 * k : 2 * k + 2])
    sos[low, :3], sos[low, 3:] = _matched_high_pole_pair(sample_rate)
    sos[0, :3] /= np.abs(sos_response(sos, 1000.0, sample_rate))
    return sos


@lru_cache(maxsize=8)
def memory_frames(sample_rate: int, tolerance: float = 1e-12) -> int:
    """Frames after which the filter forgets its input: the sum of ``|h[n]|`` over the impulse
    response's tail from there on is below ``tolerance`` (about 0.2 s at any rate for 1e-12; the
    20.6 Hz double pole decays slowest). Two streams that agree over this many frames give weighted
    outputs that differ by less than ``tolerance`` times their largest difference before that."""
    sos = _design(sample_rate)
    impulse = np.zeros((sample_rate, 1), dtype=np.float32)  # 1 s: far beyond the memory
    impulse[0, 0] = 1.0
    response = np.empty((1, sample_rate), dtype=np.float64)
    cascade(sos, impulse, response, np.zeros((1, sos.shape[0], 2)), False)
    tail = np.cumsum(np.abs(response[0, ::-1]))[::-1]
    return int(np.argmax(tail < tolerance))


class CascadeFilter:
    """Second-order sections run by the compiled cascade, streaming: the filter state carries
    across blocks, so the output ignores block boundaries."""

    def __init__(self, sos: Samples, channels: int = 2) -> None:
        self.sos = np.ascontiguousarray(sos, dtype=np.float64)
        self.channels = channels
        self._zi = np.zeros((channels, self.sos.shape[0], 2), dtype=np.float64)
        #: The largest magnitude of the last block ``process`` returned (NaN when it held one).
        self.last_peak = 0.0

    def reset(self) -> None:
        """Forget all input (the state of a filter that has only seen silence)."""
        self._zi[...] = 0.0

    def filter_channels(self, block: Block) -> Samples:
        """The weighted ``(frames, channels)`` block as ``(channels, frames)`` float64."""
        return self._run(block, energy=False)

    def running_energy(self, block: Block) -> Samples:
        """The running sum of the weighted block's squares, ``(channels, frames)`` float64, from
        its first frame on (inclusive): the weighted energy of any stretch of the block is the
        difference of two values. Filters as ``filter_channels`` does, in the same one pass."""
        return self._run(block, energy=True)

    def running_energy_into(self, block: Block, out: Samples) -> None:
        """``running_energy`` written into ``out``, ``(channels, frames)`` float64, C-contiguous."""
        cascade(self.sos, np.ascontiguousarray(block, dtype=np.float32), out, self._zi, True)

    def _run(self, block: Block, *, energy: bool) -> Samples:
        x = np.ascontiguousarray(block, dtype=np.float32)
        y = np.empty((self.channels, len(x)), dtype=np.float64)
        cascade(self.sos, x, y, self._zi, energy)
        return y

    def process(self, block: Block) -> Block:
        """The filtered block, ``(frames, channels)`` float32 as it came (C-contiguous), each value
        rounded once from the cascade's float64; its largest magnitude in ``last_peak``, from the
        same pass."""
        x = np.ascontiguousarray(block, dtype=np.float32)
        result: Block = np.empty(x.shape, dtype=np.float32)
        self.last_peak = cascade_frames(self.sos, x, result, self._zi)
        return result

    __call__ = process


class AWeightingFilter(CascadeFilter):
    """The A-weighting filter at ``sample_rate`` (``design_a_weighting``)."""

    def __init__(self, sample_rate: int, channels: int = 2) -> None:
        super().__init__(_design(sample_rate), channels)


class Unweighted(CascadeFilter):
    """No weighting (Z): one section that passes the signal as it is, so that its running energy
    comes from the compiled cascade like the weighted ones'."""

    def __init__(self, channels: int = 2) -> None:
        super().__init__(np.array([[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]]), channels)


class CWeightingFilter(CascadeFilter):
    """The C-weighting filter at ``sample_rate`` (``design_c_weighting``)."""

    def __init__(self, sample_rate: int, channels: int = 2) -> None:
        super().__init__(_design(sample_rate, "C"), channels)


class WeightingBank:
    """Several filters' running energies of the same block in one pass of the compiled cascade
    (``_cascade.c``: ``bank``): each filter's values exactly as its own ``running_energy_into``
    gives them, bit for bit, but the block is read once and the filters' recurrences, which do not
    wait on one another, run side by side (the safety chain's A, C and unweighted measures cost
    about what the A-weighting alone did). It starts from the filters' states as they are, and
    carries its own from then on."""

    def __init__(self, filters: Sequence[CascadeFilter]) -> None:
        if not filters or len({f.channels for f in filters}) != 1:
            raise ValueError("a weighting bank needs at least one filter, all of one channel count")
        self.channels = filters[0].channels
        self.sos = np.ascontiguousarray(np.concatenate([f.sos for f in filters]), dtype=np.float64)
        self.counts = tuple(f.sos.shape[0] for f in filters)
        self._zi = np.concatenate([f._zi.ravel() for f in filters])  # each filter's in turn

    def __len__(self) -> int:
        return len(self.counts)

    def running_energy_into(self, block: Block, out: Samples) -> None:
        """Each filter's running energy of ``block`` into ``out``, ``(filters, channels,
        frames)`` float64, C-contiguous."""
        bank(self.sos, self.counts, np.ascontiguousarray(block, dtype=np.float32), out, self._zi)
