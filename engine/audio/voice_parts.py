"""What the voices are made of: accumulated-phase oscillators, held sines as rotations, slides,
pan laws, and what the voices of one renderer share.

How they are used, and why they are fast, is ``voices.py``'s docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from resonera.common.errors import ProgramError
from resonera.common.program_model import Curve, LayerModel
from resonera.engine.audio.noise import NoiseTables

__all__ = [
    "MAX_CHUNK",
    "TWO_PI",
    "Acc",
    "Oscillator",
    "Param",
    "Span",
    "StereoRotation",
    "VoiceContext",
    "balance",
    "balance_arrays",
    "check_audible",
    "constant_power",
    "constant_power_arrays",
    "slide_params",
]

TWO_PI: Final = 2.0 * math.pi
#: The longest chunk a voice is asked for (the renderer cuts longer blocks). A render's 16,384-frame
#: blocks synthesise in one chunk: fewer numpy calls per second of sound.
MAX_CHUNK: Final = 16384

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
#: Scratch space of shape (2, MAX_CHUNK), float32, shared by the voices of one renderer.
Scratch = NDArray[np.float32]
#: Channel-major accumulator, shape (2, n), float32.
Acc = NDArray[np.float32]


@dataclass
class VoiceContext:
    """What voices share within one renderer: the rate, noise tables and decoded backgrounds."""

    sample_rate: int
    seed: int
    noise: NoiseTables
    backgrounds: dict[str, F32]


def constant_power(pan: float) -> tuple[float, float]:
    theta = (pan + 1.0) * math.pi / 4.0
    return math.cos(theta), math.sin(theta)


def balance(pan: float) -> tuple[float, float]:
    return min(1.0, 1.0 - pan), min(1.0, 1.0 + pan)


def constant_power_arrays(pan: F64) -> tuple[F64, F64]:
    theta = (pan + 1.0) * (math.pi / 4.0)
    return np.cos(theta), np.sin(theta)


def balance_arrays(pan: F64) -> tuple[F64, F64]:
    return np.minimum(1.0, 1.0 - pan), np.minimum(1.0, 1.0 + pan)


class Param:
    """One parameter over a step: ``start`` → ``end`` along ``curve`` as progress goes 0 → 1."""

    __slots__ = ("curve", "end", "start")

    def __init__(self, start: float, end: float, curve: Curve) -> None:
        self.start = start
        self.end = end if curve != "hold" else start
        self.curve: Curve = curve if self.end != start else "hold"

    @property
    def constant(self) -> bool:
        return self.curve == "hold"

    def at(self, t: F64) -> F64:
        a, b = self.start, self.end
        match self.curve:
            case "hold":
                return np.full_like(t, a)
            case "linear":
                return a + (b - a) * t
            case "exponential":
                return a * np.exp(math.log(b / a) * t)
            case "ease":
                return a + (b - a) * (0.5 - 0.5 * np.cos(math.pi * t))


class Span:
    """Where a voice's step is: its own frames [start, end); progress t runs 0 → 1 over them."""

    __slots__ = ("end", "start")

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end

    def progress(self, start: int, n: int) -> F64:
        """Slide progress at absolute frames start … start + n − 1, held at 1 past the end."""
        k = np.arange(start - self.start, start - self.start + n, dtype=np.float64)
        return np.clip(k / max(1, self.end - self.start), 0.0, 1.0)


def slide_params(layer: LayerModel, target: LayerModel | None, names: Sequence[str]) -> list[Param]:
    params = []
    for name in names:
        start = float(getattr(layer, name))
        curve = layer.curve(name) if target is not None else "hold"
        end = float(getattr(target, name)) if target is not None else start
        params.append(Param(start, end, curve))
    return params


class Oscillator:
    """A sine with an accumulated float64 phase in [0, 2π)."""

    __slots__ = ("phase",)

    def __init__(self) -> None:
        self.phase = 0.0

    def constant(self, n: int, omega: float) -> F64:
        """``sin(phase + ω·k)`` for k < n (float64), advancing the phase."""
        out = np.sin(self.phase + omega * np.arange(n, dtype=np.float64))
        self.phase = math.fmod(self.phase + omega * n, TWO_PI)
        return out

    def sliding(self, omega: F64) -> F64:
        """``sin`` of the phase accumulated sample by sample from per-sample increments ``omega``."""
        phase = np.empty(len(omega), np.float64)
        phase[0] = self.phase
        np.cumsum(omega[:-1], out=phase[1:])
        phase[1:] += self.phase
        self.phase = math.fmod(self.phase + float(np.sum(omega)), TWO_PI)
        if self.phase < 0.0:
            self.phase += TWO_PI
        return np.sin(phase)


class StereoRotation:
    """Two held sines, one per ear (``oscillators[0]`` left, ``[1]`` right; they may be the same).

    ``sin(φ + ωk) = sin φ·cos ωk + cos φ·sin ωk``: ``cos ωk`` and ``sin ωk`` are tabulated once (two
    rows, k < ``frames``), so a chunk costs four array operations on (2, n) float32 whatever the
    frequencies. The phases stay in the oscillators, accumulated in float64.
    """

    __slots__ = ("_a", "_b", "_cos", "_omega", "_sin", "oscillators")

    def __init__(
        self, left: Oscillator, right: Oscillator, omega: tuple[float, float], frames: int
    ):
        self.oscillators = (left, right)
        self._omega = omega
        k = np.arange(max(1, min(MAX_CHUNK, frames)), dtype=np.float64)
        angles = np.outer(np.array(omega, np.float64), k)
        self._cos = np.cos(angles).astype(np.float32)
        self._sin = np.sin(angles).astype(np.float32)
        self._a = np.empty((2, 1), np.float32)  # per-chunk coefficients, filled in place
        self._b = np.empty((2, 1), np.float32)

    def add(self, acc: Acc, gains: tuple[float, float], scratch: NDArray[np.float32]) -> None:
        """``acc[c] += gains[c]·sin(φc + ωc·k)``; advances each distinct oscillator by n."""
        n = acc.shape[1]
        left, right = self.oscillators
        if n > self._cos.shape[1]:  # longer than planned: tabulate again (never in the hot path)
            fresh = StereoRotation(left, right, self._omega, n)
            self._cos, self._sin = fresh._cos, fresh._sin
        a, b = self._a, self._b
        a[0, 0] = gains[0] * math.sin(left.phase)
        a[1, 0] = gains[1] * math.sin(right.phase)
        b[0, 0] = gains[0] * math.cos(left.phase)
        b[1, 0] = gains[1] * math.cos(right.phase)
        tmp = scratch[:, :n]
        np.multiply(self._cos[:, :n], a, out=tmp)
        acc += tmp
        np.multiply(self._sin[:, :n], b, out=tmp)
        acc += tmp
        left.phase = math.fmod(left.phase + self._omega[0] * n, TWO_PI)
        if right is not left:
            right.phase = math.fmod(right.phase + self._omega[1] * n, TWO_PI)


def check_audible(hz: float, sample_rate: int) -> None:
    nyquist = sample_rate / 2.0
    if not 0.0 < hz < nyquist:
        raise ProgramError(
            f"{hz:g} Hz cannot be rendered at {sample_rate} Hz (must be below {nyquist:g} Hz)"
        )
