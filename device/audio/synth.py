"""Render a ``Program`` into stereo float32 blocks, sample-exact whatever the block size.

Contracts:

- ``ProgramRenderer.render(frames)`` returns exactly ``frames`` frames (shape ``(frames, 2)``,
  float32). Frames past the end of the program are silence; ``done`` turns True once the last
  program frame has been rendered. Callers MAY change the block size from call to call: the
  concatenated output is the same (within float rounding, far below 1e-6) as one big block.
- Every oscillator keeps its phase ACCUMULATED in float64 and wrapped to [0, 2π) after each chunk,
  so a 3-hour session is as clean at its end as at its start and a later frequency slide (a
  per-sample increment instead of a constant one) slots in without changing the model.
- Output stays within [-1, 1] when the program keeps its gain rule (the layer gains of a step add
  up to at most 1.0): every voice's per-ear amplitude is at most its gain, and crossfade and fade
  gains are ≤ 1 and complementary (they add up to 1, never to more).

How a program sounds:

- A ``ToneLayer`` is one sine; its pan uses the constant-power (−3 dB centre) law: left ``gain·cos
  θ``, right ``gain·sin θ`` with ``θ = (pan + 1)·π/4``. A centred tone is therefore ``gain/√2`` in
  each ear (and ``gain`` in one ear when panned hard).
- A ``BinauralLayer`` is ``carrier − beat/2`` at ``gain`` in the left ear and ``carrier + beat/2``
  at ``gain`` in the right ear (safety.md, "Programs").
- Step changes crossfade (``crossfade_s``, 50 ms by default, shortened for very short steps) from
  the old layers to the new ones with complementary raised-cosine gains (sin² + cos² = 1, so
  correlated layers never add up above full scale). A new layer in the same slot and of the same
  kind as the old one starts from the old one's phase, so the two stay coherent through the
  crossfade.
- The program's fade-in and fade-out are raised-cosine; the first and the last sample are exactly
  0.

Adding a layer kind (noise, isochronic, ...): write a ``Voice`` subclass and a ``case`` in
``voice_for``; mypy's exhaustiveness check on the ``match`` names the spot when a new layer type
is added to the program model.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, assert_never

import numpy as np
from numpy.typing import NDArray

from resonera.common.errors import ProgramError
from resonera.common.program import BinauralLayer, Program, ToneLayer

__all__ = [
    "CHANNELS",
    "DEFAULT_CROSSFADE_S",
    "BinauralVoice",
    "ProgramRenderer",
    "SineBank",
    "ToneVoice",
    "Voice",
    "voice_for",
]

CHANNELS: Final = 2
DEFAULT_CROSSFADE_S: Final = 0.05
TWO_PI: Final = 2.0 * math.pi

Stereo64 = NDArray[np.float64]


class Voice(ABC):
    """One layer turned into sound: a stateful generator of stereo float64 frames.

    ``render(frames)`` MUST return shape ``(frames, 2)`` and advance the voice's state by exactly
    ``frames``; rendering ``a`` then ``b`` frames MUST equal rendering ``a + b`` (within rounding).
    Per-ear amplitude MUST stay within the layer's gain.
    """

    @abstractmethod
    def render(self, frames: int) -> Stereo64: ...

    def take_over(self, previous: Voice) -> None:  # noqa: B027 - optional hook, default no-op
        """Continue from ``previous`` (the voice in the same slot of the step before), if it can.

        Called once, before the first ``render``, at the exact frame where this voice starts.
        """


class SineBank(Voice):
    """A few sine oscillators, each with a fixed (left, right) amplitude.

    Phases are accumulated in float64 and wrapped after every render, never computed from absolute
    time.
    """

    def __init__(
        self,
        frequencies_hz: Sequence[float],
        ear_gains: Sequence[tuple[float, float]],
        sample_rate: int,
    ) -> None:
        if len(frequencies_hz) != len(ear_gains):
            raise ValueError("one (left, right) gain pair per frequency")
        nyquist = sample_rate / 2.0
        for f in frequencies_hz:
            if not 0.0 < f < nyquist:
                raise ProgramError(
                    f"{f:g} Hz cannot be rendered at {sample_rate} Hz "
                    f"(must be below {nyquist:g} Hz)"
                )
        self._increment = np.array([TWO_PI * f / sample_rate for f in frequencies_hz], np.float64)
        self._phase = np.zeros(len(frequencies_hz), np.float64)
        self._gains = np.array(ear_gains, np.float64).reshape(len(frequencies_hz), CHANNELS)

    @property
    def phases(self) -> NDArray[np.float64]:
        """Current phase of each oscillator in radians, in [0, 2π) (a copy)."""
        return self._phase.copy()

    def render(self, frames: int) -> Stereo64:
        steps = np.arange(frames, dtype=np.float64)[:, None]
        phase = self._phase[None, :] + steps * self._increment[None, :]
        out: Stereo64 = np.sin(phase) @ self._gains
        self._phase = np.mod(self._phase + frames * self._increment, TWO_PI)
        return out

    def take_over(self, previous: Voice) -> None:
        # Same kind, same number of oscillators: continue their phases (a coherent crossfade).
        if (
            type(previous) is type(self)
            and isinstance(previous, SineBank)
            and previous._phase.shape == self._phase.shape
        ):
            self._phase = previous._phase.copy()


class ToneVoice(SineBank):
    def __init__(self, layer: ToneLayer, sample_rate: int) -> None:
        theta = (layer.pan + 1.0) * math.pi / 4.0
        gains = (layer.gain * math.cos(theta), layer.gain * math.sin(theta))
        super().__init__([layer.frequency_hz], [gains], sample_rate)


class BinauralVoice(SineBank):
    def __init__(self, layer: BinauralLayer, sample_rate: int) -> None:
        half = layer.beat_hz / 2.0
        super().__init__(
            [layer.carrier_hz - half, layer.carrier_hz + half],
            [(layer.gain, 0.0), (0.0, layer.gain)],
            sample_rate,
        )


def voice_for(layer: ToneLayer | BinauralLayer, sample_rate: int) -> Voice:
    """The voice that renders ``layer``. New layer kinds add a case here."""
    match layer:
        case ToneLayer():
            return ToneVoice(layer, sample_rate)
        case BinauralLayer():
            return BinauralVoice(layer, sample_rate)
        case _:
            assert_never(layer)


@dataclass(frozen=True)
class _Span:
    """Where one step sounds, in frames: its own [start, end) plus a crossfade into the next."""

    index: int
    start: int
    end: int
    xfade_in: int
    xfade_out: int

    @property
    def stop(self) -> int:
        return self.end + self.xfade_out

    def gain(self, frames: NDArray[np.float64]) -> NDArray[np.float64]:
        """Crossfade gain at absolute frame numbers ``frames`` (complementary to the neighbours)."""
        gain = np.ones_like(frames)
        if self.xfade_in:
            x = (frames - self.start + 0.5) / self.xfade_in
            gain = np.where(frames < self.start + self.xfade_in, np.sin(0.5 * np.pi * x) ** 2, gain)
        if self.xfade_out:
            x = (frames - self.end + 0.5) / self.xfade_out
            gain = np.where(frames >= self.end, np.cos(0.5 * np.pi * x) ** 2, gain)
        return gain


def _raised_cosine(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """0 at x ≤ 0, 1 at x ≥ 1, smooth in between."""
    result: NDArray[np.float64] = 0.5 - 0.5 * np.cos(np.pi * np.clip(x, 0.0, 1.0))
    return result


class ProgramRenderer:
    """Turns a validated ``Program`` into stereo float32 blocks (see the module docstring).

    Not thread-safe: one caller renders, block after block.
    """

    def __init__(
        self, program: Program, sample_rate: int, *, crossfade_s: float = DEFAULT_CROSSFADE_S
    ) -> None:
        if sample_rate <= 0:
            raise ValueError("sample_rate must be positive")
        if not (math.isfinite(crossfade_s) and crossfade_s >= 0.0):
            raise ValueError("crossfade_s must be a finite number ≥ 0")
        self.program = program
        self.sample_rate = sample_rate
        # Build every voice once now: a frequency the rate cannot carry fails here, not mid-session.
        for step in program.steps:
            for layer in step.layers:
                voice_for(layer, sample_rate)
        self._spans = self._plan(program, sample_rate, round(crossfade_s * sample_rate))
        self.total_frames: int = self._spans[-1].end if self._spans else 0
        self._fade_in = min(round(program.fade_in_s * sample_rate), self.total_frames)
        self._fade_out = min(round(program.fade_out_s * sample_rate), self.total_frames)
        self._position = 0
        self._next_span = 0
        self._active: list[tuple[_Span, list[Voice]]] = []

    @staticmethod
    def _plan(program: Program, sample_rate: int, crossfade: int) -> list[_Span]:
        bounds: list[tuple[int, int, int]] = []  # (step index, start, end); empty steps dropped
        elapsed = 0.0
        for index, step in enumerate(program.steps):
            start = round(elapsed * sample_rate)
            elapsed += step.duration_s
            end = round(elapsed * sample_rate)
            if end > start:
                bounds.append((index, start, end))
        # The crossfade at a boundary never exceeds either neighbouring step, so at most two steps
        # ever sound at once.
        fades = [
            min(crossfade, prev[2] - prev[1], nxt[2] - nxt[1])
            for prev, nxt in itertools.pairwise(bounds)
        ]
        return [
            _Span(
                index=index,
                start=start,
                end=end,
                xfade_in=fades[i - 1] if i > 0 else 0,
                xfade_out=fades[i] if i < len(fades) else 0,
            )
            for i, (index, start, end) in enumerate(bounds)
        ]

    @property
    def position_frames(self) -> int:
        return self._position

    @property
    def position_s(self) -> float:
        return self._position / self.sample_rate

    @property
    def remaining_frames(self) -> int:
        return self.total_frames - self._position

    @property
    def done(self) -> bool:
        return self._position >= self.total_frames

    @property
    def step_index(self) -> int | None:
        """Index in ``program.steps`` of the step sounding now (None before start or when done)."""
        current = [
            span.index for span, _ in self._active if span.start <= self._position < span.end
        ]
        return current[-1] if current else None

    def render(self, frames: int) -> NDArray[np.float32]:
        """The next ``frames`` frames, shape ``(frames, 2)``; silence past the program's end."""
        if frames < 0:
            raise ValueError("frames must be ≥ 0")
        out = np.zeros((frames, CHANNELS), np.float64)
        wanted = min(frames, self.total_frames - self._position)
        filled = 0
        while filled < wanted:
            chunk = self._render_chunk(wanted - filled)
            out[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        if wanted > 0:
            out[:wanted] *= self._envelope(self._position - wanted, wanted)[:, None]
        return out.astype(np.float32)

    def _render_chunk(self, limit: int) -> Stereo64:
        """Render up to ``limit`` frames, stopping at the next step start or end of a crossfade."""
        pos = self._position
        self._active = [(span, voices) for span, voices in self._active if span.stop > pos]
        while self._next_span < len(self._spans) and self._spans[self._next_span].start == pos:
            span = self._spans[self._next_span]
            voices = [
                voice_for(layer, self.sample_rate)
                for layer in self.program.steps[span.index].layers
            ]
            if self._active:
                previous = self._active[-1][1]
                for new, old in zip(voices, previous, strict=False):
                    new.take_over(old)
            self._active.append((span, voices))
            self._next_span += 1
        edges = [pos + limit] + [span.stop for span, _ in self._active]
        if self._next_span < len(self._spans):
            edges.append(self._spans[self._next_span].start)
        frames = min(edge for edge in edges if edge > pos)
        count = frames - pos
        index = np.arange(pos, frames, dtype=np.float64)
        chunk = np.zeros((count, CHANNELS), np.float64)
        for span, voices in self._active:
            mix = np.zeros((count, CHANNELS), np.float64)
            for voice in voices:
                mix += voice.render(count)
            chunk += mix * span.gain(index)[:, None]
        self._position = frames
        return chunk

    def _envelope(self, start: int, count: int) -> NDArray[np.float64]:
        index = np.arange(start, start + count, dtype=np.float64)
        env = np.ones(count, np.float64)
        if self._fade_in:
            env *= _raised_cosine(index / self._fade_in)
        if self._fade_out:
            env *= _raised_cosine((self.total_frames - 1 - index) / self._fade_out)
        return env
