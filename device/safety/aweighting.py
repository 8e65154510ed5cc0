"""A-weighting (IEC 61672-1:2013) as a streaming digital filter at 44.1, 48 kHz or any rate above 32 kHz.

The analogue response (IEC 61672-1 Annex E, also in ``shared/docs/safety.md``)::

    R_A(f) = 12194² f⁴ / ((f² + 20.6²) √((f² + 107.7²)(f² + 737.9²)) (f² + 12194²)),
    A(f) = 20 log10 R_A(f) + 2.00 dB

has four zeros at 0 Hz and poles at 20.6 Hz (double), 107.7 Hz, 737.9 Hz and 12194 Hz (double). The
low-frequency part (every zero and the first four poles) goes through the bilinear transform, which is
exact enough far below Nyquist. The 12194 Hz double pole does not: its bilinear image puts two zeros at
Nyquist and droops by 1.5 dB at 10 kHz and 8.5 dB at 16 kHz (44.1 kHz). It becomes a *matched* biquad
instead (M. Vicanek, "Matched Second Order Digital Filters", 2016): the analogue poles mapped exactly
(``z = e^{sT}``) and a first-order numerator chosen in closed form so that the magnitude equals the
analogue one at 0 Hz and at 12194 Hz. The whole filter is then within 0.04 dB of A(f) up to 10 kHz and
0.3 dB up to 16 kHz at 44.1 kHz (0.02 / 0.2 dB at 48 kHz), checked against the formula in
``tests/device/test_aweighting.py``.

The design is numpy alone. Filtering uses scipy's compiled second-order-section cascade, loaded from its
extension file by itself: importing ``scipy.signal`` costs a playing device some 75 MB of memory, the one
extension about 2 MB.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from numpy.typing import NDArray

from resonera.common.errors import ResoneraError

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

F_LOW: Final = (20.598997, 107.65265, 737.86223)
F_HIGH: Final = 12194.217
A1000: Final = 1.9997  # dB: the constant that makes A(1 kHz) = 0

Block = NDArray[np.float32]
Samples = NDArray[np.float64]
#: ``(sos, x, zi)``: filters ``x`` (channels, frames) in place, carrying ``zi`` (channels, sections, 2).
SosFilter = Callable[[Samples, Samples, Samples], None]


class FilterUnavailableError(ResoneraError):
    """scipy, whose compiled filter cascade the A-weighting runs on, is not installed."""


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


@lru_cache(maxsize=8)
def _design(sample_rate: int) -> Samples:
    if sample_rate < 32_000:
        raise ValueError(f"A-weighting needs a sample rate of at least 32 kHz, got {sample_rate}")
    analogue = -2 * np.pi * np.array([F_LOW[0], F_LOW[0], F_LOW[1], F_LOW[2]])
    fs2 = 2.0 * sample_rate
    digital = (fs2 + analogue) / (fs2 - analogue)  # bilinear; the zeros at 0 Hz map to z = 1
    sos = np.zeros((3, 6))
    # the double 20.6 Hz pole (nearest the unit circle) with two of the zeros, as zpk2sos pairs them
    sos[0, :3], sos[0, 3:] = [1.0, -2.0, 1.0], np.poly(digital[:2])
    sos[1, :3], sos[1, 3:] = [1.0, -2.0, 1.0], np.poly(digital[2:])
    sos[2, :3], sos[2, 3:] = _matched_high_pole_pair(sample_rate)
    sos[0, :3] /= np.abs(sos_response(sos, 1000.0, sample_rate))
    return sos


_SOSFILT_MODULE: Final = "scipy.signal._sosfilt"


@cache
def _compiled_sosfilt() -> SosFilter:
    """scipy's compiled cascade, without importing ``scipy.signal`` (see the module docstring)."""
    loaded = sys.modules.get(_SOSFILT_MODULE)
    if loaded is not None:
        already: SosFilter = loaded._sosfilt
        return already
    spec = importlib.util.find_spec("scipy")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FilterUnavailableError(
            "the A-weighting filter needs scipy (its compiled sosfilt); install scipy"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "signal"
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = folder / f"_sosfilt{suffix}"
        if path.is_file():
            ext_spec = importlib.util.spec_from_file_location(_SOSFILT_MODULE, path)
            if ext_spec is not None and ext_spec.loader is not None:
                module = importlib.util.module_from_spec(ext_spec)
                ext_spec.loader.exec_module(module)
                compiled: SosFilter = module._sosfilt
                return compiled
    return _public_sosfilt


def _public_sosfilt(sos: Samples, x: Samples, zi: Samples) -> None:
    """The same cascade through ``scipy.signal`` (heavier import), for a scipy laid out otherwise."""
    from scipy.signal import sosfilt

    y, zf = sosfilt(sos, x, axis=-1, zi=np.moveaxis(zi, 0, 1))
    x[...] = y
    zi[...] = np.moveaxis(zf, 1, 0)


@lru_cache(maxsize=8)
def memory_frames(sample_rate: int, tolerance: float = 1e-12) -> int:
    """Frames after which the filter forgets its input: the sum of ``|h[n]|`` over the impulse
    response's tail from there on is below ``tolerance`` (about 0.2 s at any rate for 1e-12; the
    20.6 Hz double pole decays slowest). Two streams that agree over this many frames give weighted
    outputs that differ by less than ``tolerance`` times their largest difference before that."""
    sos = _design(sample_rate)
    response = np.zeros((1, sample_rate), dtype=np.float64)  # 1 s: far beyond the memory
    response[0, 0] = 1.0
    _compiled_sosfilt()(sos, response, np.zeros((1, sos.shape[0], 2)))
    tail = np.cumsum(np.abs(response[0, ::-1]))[::-1]
    return int(np.argmax(tail < tolerance))


#: Blocks at least this long have their channels filtered side by side, on two cores: the cascade
#: runs without the interpreter lock, and at render block sizes it is the largest single cost. Shorter
#: (playback) blocks stay on the calling thread, where handing work over would cost more than it saves.
PARALLEL_MIN_FRAMES: Final = 16384


class AWeightingFilter:
    """Streaming: the filter state carries across blocks, so the output ignores block boundaries."""

    def __init__(self, sample_rate: int, channels: int = 2) -> None:
        self.sos = design_a_weighting(sample_rate)
        self.channels = channels
        self._zi = np.zeros((channels, self.sos.shape[0], 2), dtype=np.float64)
        self._sosfilt = _compiled_sosfilt()
        self._helper: ThreadPoolExecutor | None = None

    def reset(self) -> None:
        """Forget all input (the state of a filter that has only seen silence)."""
        self._zi[...] = 0.0

    def filter_channels(self, block: Block) -> Samples:
        """The weighted ``(frames, channels)`` block as ``(channels, frames)`` float64 (no copy back)."""
        # C-contiguous (channels, frames) float64: the layout the compiled cascade filters in place
        y = np.array(block.T, dtype=np.float64, order="C")
        if len(block) < PARALLEL_MIN_FRAMES or self.channels < 2:
            self._sosfilt(self.sos, y, self._zi)
            return y
        if self._helper is None:
            from concurrent.futures import ThreadPoolExecutor  # renders only: not at every start

            self._helper = ThreadPoolExecutor(1, thread_name_prefix="resonera-aweighting")
        # The cascade writes its state at every sample: the two threads' states in one array
        # would share a cache line, and each write would wait for the other core (measured: the
        # two channels took as long as one thread filtering both). Each filters a copy of its own.
        # The helper's call is made first and is all compiled code, so it starts at once.
        states = [self._zi[c : c + 1].copy() for c in range(self.channels)]
        first = self._helper.submit(self._sosfilt, self.sos, y[:1], states[0])
        for c in range(1, self.channels):
            self._sosfilt(self.sos, y[c : c + 1], states[c])
        first.result()
        self._zi[:] = np.concatenate(states)
        return y

    def process(self, block: Block) -> Block:
        result: Block = self.filter_channels(block).T.astype(np.float32)
        return result

    __call__ = process
