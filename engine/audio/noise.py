"""Seeded white, pink and brown noise, cheap enough for thousands of times real time.

Each colour is two long tables of Gaussian noise, spectrally shaped by FFT so that each loops
seamlessly (shaping a circular signal leaves no seam), of coprime lengths ``2**19`` and
``3**3 · 5**6`` samples (about 12 s and 10 s at 44.1 kHz; both lengths FFT quickly). An ear hears
``(A[i + a] + B[i + b]) / √2``: each table repeats, but their sum repeats only after
``2**19 · 3**3 · 5**6`` samples (58 days at 44.1 kHz), and reading two contiguous slices per block
costs a fraction of generating and filtering noise sample by sample. Offsets are drawn from the
program's seed and the layer's (step, slot); the right ear reads half a table away from the left,
so the ears are independent and a render is reproducible.
Reading depends only on the absolute frame, so the output does not depend on the block size.

Memory (the device plays within 100 MB): a colour is built only when a program uses it, in
float32 (no float64 temporaries, no forward FFT, the big temporaries in their own memory maps so
they are returned at once), and each table is stored once (both ears read it): 3.8 MB a colour,
about 10 MB more while it is built.

Shapes: white is flat; pink falls 3 dB per octave above 10 Hz; brown falls 6 dB per octave above
20 Hz (both flat below, without DC, so the level does not wander). Every table has unit rms and is
clipped at ±3.5 (a few samples in ten thousand), so an ear's sum never exceeds 3.5·√2 ≈ 4.95: with
the layer's rms set to ``NOISE_RMS·gain`` = 0.2·gain, noise peaks stay within ``gain``.
"""

from __future__ import annotations

import math
import mmap
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

__all__ = ["COLOURS", "NOISE_RMS", "NoiseReader", "NoiseTables"]

COLOURS: Final = ("white", "pink", "brown")
#: rms of a noise layer of gain 1 in one ear (centred), so that peaks stay within the gain.
NOISE_RMS: Final = 0.2
TABLE_LENGTHS: Final = (2**19, 3**3 * 5**6)
CLIP: Final = 3.5
PINK_FLOOR_HZ: Final = 10.0
BROWN_FLOOR_HZ: Final = 20.0

F32 = NDArray[np.float32]
_NORM: Final = 1.0 / math.sqrt(2.0)
_HALVES: Final = tuple(length // 2 for length in TABLE_LENGTHS)
_SHAPE_CHUNK: Final = 1 << 16
#: numpy 2 transforms float32 in single precision, into a given ``out``.
_FFT_OUT: Final = np.lib.NumpyVersion(np.__version__) >= "2.0.0"


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
    """``table[position : position + n]``, wrapping around."""
    end = position + n
    length = len(table)
    if end <= length:
        return table[position:end]
    return np.concatenate((table[position:], table[: end - length]))


def _mapped(count: int, dtype: type[np.floating[Any]]) -> NDArray[Any]:
    """An uninitialised array in its own anonymous memory map, unmapped when the array dies.

    glibc raises its mmap threshold to the size of each large block freed, so big temporaries
    freed by one table stay in the heap (resident) after it; mapped here, they go back at once.
    """
    size = count * np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, max(1, size)), dtype, count)


def shaped_table(colour: str, length: int, sample_rate: int, rng: np.random.Generator) -> F32:
    """A seamless loop of ``colour`` noise, unit rms, clipped at ±``CLIP`` (float32 throughout).

    White noise is drawn as it is. A coloured table is drawn in the frequency domain: the
    spectrum of Gaussian white noise is itself Gaussian (independent real and imaginary parts),
    so drawing it directly, shaping it and inverting it once gives the same kind of noise as
    shaping the transform of a drawn table, without the forward transform's time and memory.
    """
    x: F32 = _mapped(length, np.float32)
    if colour == "white":
        rng.standard_normal(dtype=np.float32, out=x)
    else:
        if colour == "pink":
            floor_hz, power = PINK_FLOOR_HZ, 0.5
        elif colour == "brown":
            floor_hz, power = BROWN_FLOOR_HZ, 1.0
        else:
            raise ValueError(f"unknown noise colour {colour!r}")
        bins = length // 2 + 1
        parts: F32 = _mapped(2 * bins, np.float32)
        rng.standard_normal(dtype=np.float32, out=parts)
        spectrum = parts.view(np.complex64)
        hz_per_bin = sample_rate / length
        for first in range(0, bins, _SHAPE_CHUNK):  # in slices: no table-sized temporaries
            hz = np.arange(first, min(bins, first + _SHAPE_CHUNK), dtype=np.float32)
            hz *= np.float32(hz_per_bin)
            np.maximum(hz, np.float32(floor_hz), out=hz)
            spectrum[first : first + len(hz)] *= hz ** np.float32(-power)
        spectrum[0] = 0.0  # no DC
        if _FFT_OUT:
            np.fft.irfft(spectrum, n=length, out=x)  # type: ignore[arg-type]  # float32 since 2.0
        else:  # numpy 1.x: a float64 result, copied
            x[:] = np.fft.irfft(spectrum, n=length)
        del spectrum, parts
    x -= np.float32(x.mean(dtype=np.float64))
    x *= np.float32(math.sqrt(length / float(np.dot(x, x))))  # unit rms; a dot needs no temporary
    np.clip(x, -CLIP, CLIP, out=x)
    return x


class NoiseTables:
    """The tables of one renderer (one seed, one rate), built on first use or by ``prepare``.

    The right ear reads each table half its length away from the left ear's position.
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
            a, b = (
                shaped_table(
                    COLOURS[colour],
                    length,
                    self.sample_rate,
                    np.random.default_rng([self.seed, colour, index]),
                )
                for index, length in enumerate(TABLE_LENGTHS)
            )
            tables = self._tables[colour] = (a, b)
        return tables

    def reader(self, key: tuple[int, int]) -> NoiseReader:
        """The seeded reader of the layer at (step, slot) ``key``."""
        rng = np.random.default_rng([self.seed, 1_000_003 + key[0], key[1]])
        return NoiseReader(int(rng.integers(TABLE_LENGTHS[0])), int(rng.integers(TABLE_LENGTHS[1])))

    def _sum(
        self, colour: int, reader: NoiseReader, n: int, out: F32 | NDArray[np.float64]
    ) -> None:
        """``out[ear] = A[…] + B[…]`` for both ears (``out`` has shape (2, ≥ n))."""
        table_a, table_b = self.prepare(colour)
        for ear in (0, 1):
            a = (reader.a + ear * _HALVES[0]) % TABLE_LENGTHS[0]
            b = (reader.b + ear * _HALVES[1]) % TABLE_LENGTHS[1]
            np.add(_segment(table_a, a, n), _segment(table_b, b, n), out=out[ear, :n])

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
        tmp = scratch[:, :n]
        self._sum(colour, reader, n, tmp)
        column = self._column
        column[0, 0] = scales[0] * _NORM
        column[1, 0] = scales[1] * _NORM
        tmp *= column
        acc += tmp

    def read(self, colour: int, reader: NoiseReader, n: int) -> NDArray[np.float64]:
        """(2, n) samples of unit-rms noise (float64) at ``reader`` (not advanced)."""
        total = np.empty((2, n), np.float64)
        self._sum(colour, reader, n, total)
        total *= _NORM
        return total
