"""Seeded white, pink and brown noise, cheap enough for thousands of times real time.

Each colour is two long tables of Gaussian noise, spectrally shaped by FFT so that each loops
seamlessly (shaping a circular signal leaves no seam), of coprime lengths ``2**20`` and ``3**13``
samples (about 24 s and 36 s at 44.1 kHz). An ear hears ``(A[i + a] + B[i + b]) / √2``: each table
repeats, but their sum repeats only after ``2**20 · 3**13`` samples (more than a year), and reading
two contiguous slices per block costs a fraction of generating and filtering noise sample by
sample. Offsets are drawn from the program's seed and the layer's (step, slot), the right ear
reads half a table away from the left (stored as a second row, so both ears are one slice), so
the ears are independent and a render is reproducible.
Reading depends only on the absolute frame, so the output does not depend on the block size.

Shapes: white is flat; pink falls 3 dB per octave above 10 Hz; brown falls 6 dB per octave above
20 Hz (both flat below, without DC, so the level does not wander). Every table has unit rms and is
clipped at ±3.5 (a few samples in ten thousand), so an ear's sum never exceeds 3.5·√2 ≈ 4.95: with
the layer's rms set to ``NOISE_RMS·gain`` = 0.2·gain, noise peaks stay within ``gain``.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = ["COLOURS", "NOISE_RMS", "NoiseReader", "NoiseTables"]

COLOURS: Final = ("white", "pink", "brown")
#: rms of a noise layer of gain 1 in one ear (centred), so that peaks stay within the gain.
NOISE_RMS: Final = 0.2
TABLE_LENGTHS: Final = (2**20, 3**13)
CLIP: Final = 3.5
PINK_FLOOR_HZ: Final = 10.0
BROWN_FLOOR_HZ: Final = 20.0

F32 = NDArray[np.float32]
_NORM: Final = 1.0 / math.sqrt(2.0)


class NoiseReader:
    """Where a layer reads each of the two tables (the same offsets for every colour)."""

    __slots__ = ("a", "b")

    def __init__(self, a: int, b: int) -> None:
        self.a, self.b = a, b

    def advance(self, n: int) -> None:
        self.a = (self.a + n) % TABLE_LENGTHS[0]
        self.b = (self.b + n) % TABLE_LENGTHS[1]

    def copy(self) -> NoiseReader:
        return NoiseReader(self.a, self.b)


def _segment(table: F32, position: int, n: int) -> F32:
    """``table[:, position : position + n]``, wrapping around (``table`` has shape (2, length))."""
    end = position + n
    length = table.shape[1]
    if end <= length:
        return table[:, position:end]
    return np.concatenate((table[:, position:], table[:, : end - length]), axis=1)


def shaped_table(colour: str, length: int, sample_rate: int, rng: np.random.Generator) -> F32:
    """A seamless loop of ``colour`` noise, unit rms, clipped at ±``CLIP``."""
    x = rng.standard_normal(length)
    if colour != "white":
        spectrum = np.fft.rfft(x)
        freqs = np.fft.rfftfreq(length, 1.0 / sample_rate)
        if colour == "pink":
            shape = 1.0 / np.sqrt(np.maximum(freqs, PINK_FLOOR_HZ))
        elif colour == "brown":
            shape = 1.0 / np.maximum(freqs, BROWN_FLOOR_HZ)
        else:
            raise ValueError(f"unknown noise colour {colour!r}")
        shape[0] = 0.0
        x = np.fft.irfft(spectrum * shape, n=length)
    x -= x.mean()
    x /= x.std()
    np.clip(x, -CLIP, CLIP, out=x)
    return x.astype(np.float32)


class NoiseTables:
    """The tables of one renderer (one seed, one rate), built on first use or by ``prepare``.

    Each table is stored as two rows, the second being the first rotated by half its length: the
    right ear's samples sit under the left ear's, so both ears are one (2, n) slice.
    """

    def __init__(self, sample_rate: int, seed: int) -> None:
        self.sample_rate = sample_rate
        self.seed = seed
        self._tables: dict[int, tuple[F32, F32]] = {}
        self._column = np.empty((2, 1), np.float32)

    def prepare(self, colour: int) -> tuple[F32, F32]:
        """Build (once) the two tables of colour index ``colour`` (0 white, 1 pink, 2 brown)."""
        tables = self._tables.get(colour)
        if tables is None:
            rows = []
            for index, length in enumerate(TABLE_LENGTHS):
                rng = np.random.default_rng([self.seed, colour, index])
                table = shaped_table(COLOURS[colour], length, self.sample_rate, rng)
                rows.append(np.stack((table, np.roll(table, -(length // 2)))))
            tables = self._tables[colour] = (rows[0], rows[1])
        return tables

    def reader(self, key: tuple[int, int]) -> NoiseReader:
        """The seeded reader of the layer at (step, slot) ``key``."""
        rng = np.random.default_rng([self.seed, 1_000_003 + key[0], key[1]])
        return NoiseReader(int(rng.integers(TABLE_LENGTHS[0])), int(rng.integers(TABLE_LENGTHS[1])))

    def add(
        self,
        acc: F32,
        colour: int,
        reader: NoiseReader,
        scales: tuple[float, float],
        scratch: F32,
    ) -> None:
        """``acc[c] += scales[c] · noise[c]`` (unit-rms noise of ``colour``; reader not advanced)."""
        n = acc.shape[1]
        table_a, table_b = self.prepare(colour)
        tmp = scratch[:, :n]
        np.add(_segment(table_a, reader.a, n), _segment(table_b, reader.b, n), out=tmp)
        column = self._column
        column[0, 0] = scales[0] * _NORM
        column[1, 0] = scales[1] * _NORM
        tmp *= column
        acc += tmp

    def read(self, colour: int, reader: NoiseReader, n: int) -> NDArray[np.float64]:
        """(2, n) samples of unit-rms noise (float64) at ``reader`` (not advanced)."""
        table_a, table_b = self.prepare(colour)
        total = _segment(table_a, reader.a, n).astype(np.float64)
        total += _segment(table_b, reader.b, n)
        total *= 1.0 / math.sqrt(2.0)
        return total
