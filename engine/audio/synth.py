"""Render a ``Program`` into stereo float32 blocks, sample-exact whatever the block size.

Contracts:

- ``ProgramRenderer.render(frames)`` returns exactly ``frames`` frames (shape ``(frames, 2)``,
  float32). Frames past the end of the program are silence; ``done`` turns True once the last
  program frame has been rendered. Callers MAY change the block size from call to call: the
  concatenated output is the same (within float rounding, far below 1e-6) as one big block.
- Everything that can fail (a frequency above Nyquist, a missing or unreadable background file)
  fails in the constructor, before a sample exists. Noise tables and background files are
  prepared there too, so no block later waits on them.
- Output stays within [-1, 1] when the program keeps its gain rule (the layer gains of a step add
  up to at most 1.0, slides included): every voice's per-ear amplitude is at most its gain, and
  crossfade and fade gains are ≤ 1 and complementary.

How a program sounds: see ``voices.py`` for each layer kind and ``docs/programs.md`` for the
format. Step changes crossfade (the step's ``crossfade_s``, else the program's, else 50 ms;
shortened for very short steps) with complementary raised-cosine gains (sin² + cos² = 1). A new
layer in the same slot and of the same kind as the old one starts from the old one's state
(oscillator phases, noise table positions, pulse phase, file position), so a layer that slides
into the next step, or simply continues, goes on without a seam. The program's fade-in and
fade-out are raised-cosine; the first and the last sample are exactly 0.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from resonera.common.program_model import LayerModel, NoiseLayer, Program, slide_target
from resonera.engine.audio.background import load_background
from resonera.engine.audio.noise import NoiseTables
from resonera.engine.audio.voice_parts import (
    MAX_CHUNK,
    Oscillator,
    Span,
    VoiceContext,
    check_audible,
)
from resonera.engine.audio.voices import Voice, voice_for

__all__ = [
    "CHANNELS",
    "DEFAULT_CROSSFADE_S",
    "MAX_CHUNK",
    "ProgramRenderer",
    "SineBank",
    "Voice",
    "voice_for",
]

CHANNELS: Final = 2
DEFAULT_CROSSFADE_S: Final = 0.05
TWO_PI: Final = 2.0 * math.pi

Stereo64 = NDArray[np.float64]


class SineBank:
    """A few sine oscillators with fixed (left, right) amplitudes: ``render(frames)`` → (frames, 2).

    A small stand-alone helper (tests, previews); phases are accumulated in float64 and wrapped.
    """

    def __init__(
        self,
        frequencies_hz: Sequence[float],
        ear_gains: Sequence[tuple[float, float]],
        sample_rate: int,
    ) -> None:
        if len(frequencies_hz) != len(ear_gains):
            raise ValueError("one (left, right) gain pair per frequency")
        for f in frequencies_hz:
            check_audible(f, sample_rate)
        self._omega = [TWO_PI * f / sample_rate for f in frequencies_hz]
        self._oscillators = [Oscillator() for _ in frequencies_hz]
        self._gains = np.array(ear_gains, np.float64).reshape(len(frequencies_hz), CHANNELS)

    @property
    def phases(self) -> NDArray[np.float64]:
        """Current phase of each oscillator in radians, in [0, 2π) (a copy)."""
        return np.array([osc.phase for osc in self._oscillators], np.float64)

    def render(self, frames: int) -> Stereo64:
        out = np.zeros((frames, CHANNELS), np.float64)
        for osc, omega, gains in zip(self._oscillators, self._omega, self._gains, strict=True):
            out += osc.constant(frames, omega)[:, None] * gains[None, :]
        return out


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

    def full(self, start: int, stop: int) -> bool:
        """True when the crossfade gain is 1 over frames [start, stop)."""
        return start >= self.start + self.xfade_in and stop <= self.end

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

    ``crossfade_s`` (when given) overrides every step's crossfade. Not thread-safe: one caller
    renders, block after block.
    """

    def __init__(
        self, program: Program, sample_rate: int, *, crossfade_s: float | None = None
    ) -> None:
        if sample_rate <= 0:
            raise ValueError("sample_rate must be positive")
        if crossfade_s is not None and not (math.isfinite(crossfade_s) and crossfade_s >= 0.0):
            raise ValueError("crossfade_s must be a finite number ≥ 0")
        self.program = program
        self.sample_rate = sample_rate
        noise = NoiseTables(sample_rate, program.seed)
        backgrounds = {
            path: load_background(path, sample_rate, field)
            for field, path in program.background_paths()
        }
        self._ctx = VoiceContext(sample_rate, program.seed, noise, backgrounds)
        # Build every voice once now: a frequency the rate cannot carry fails here, not
        # mid-session; noise tables are made now, not when a later step first needs them.
        for index, step in enumerate(program.steps):
            for slot, layer in enumerate(step.layers):
                voice_for(layer, self._ctx, target=self._target(index, slot), key=(index, slot))
                if isinstance(layer, NoiseLayer):
                    for colour, weight in enumerate(layer.weights()):
                        if weight > 0.0:
                            noise.prepare(colour)
        self._spans = self._plan(program, sample_rate, crossfade_s)
        self.total_frames: int = self._spans[-1].end if self._spans else 0
        self._fade_in = min(round(program.fade_in_s * sample_rate), self.total_frames)
        self._fade_out = min(round(program.fade_out_s * sample_rate), self.total_frames)
        self._position = 0
        self._next_span = 0
        self._active: list[tuple[_Span, list[Voice]]] = []
        self._scratch = np.empty((CHANNELS, MAX_CHUNK), np.float32)

    def _target(self, index: int, slot: int) -> LayerModel | None:
        following = self.program.steps[index + 1] if index + 1 < len(self.program.steps) else None
        return slide_target(following, slot)

    @staticmethod
    def _plan(program: Program, sample_rate: int, override: float | None) -> list[_Span]:
        bounds: list[tuple[int, int, int]] = []  # (step index, start, end); empty steps dropped
        elapsed = 0.0
        for index, step in enumerate(program.steps):
            start = round(elapsed * sample_rate)
            elapsed += step.duration_s
            end = round(elapsed * sample_rate)
            if end > start:
                bounds.append((index, start, end))

        def crossfade(index: int) -> int:
            seconds = override
            if seconds is None:
                own = program.steps[index].crossfade_s
                seconds = own if own is not None else program.crossfade_s
            return round(seconds * sample_rate)

        # The crossfade at a boundary never exceeds either neighbouring step, so at most two steps
        # ever sound at once.
        fades = [
            min(crossfade(prev[0]), prev[2] - prev[1], nxt[2] - nxt[1])
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

    def step_at(self, seconds: float) -> int | None:
        """Index of the step that sounds at ``seconds`` into the program (None outside it)."""
        frame = round(seconds * self.sample_rate)
        for span in self._spans:
            if span.start <= frame < span.end:
                return span.index
        return None

    def render(self, frames: int) -> NDArray[np.float32]:
        """The next ``frames`` frames, shape ``(frames, 2)``; silence past the program's end."""
        if frames < 0:
            raise ValueError("frames must be ≥ 0")
        acc = np.zeros((CHANNELS, frames), np.float32)
        wanted = min(frames, self.total_frames - self._position)
        filled = 0
        while filled < wanted:
            filled += self._render_chunk(acc, filled, wanted - filled)
        if wanted > 0:
            self._envelope(acc[:, :wanted], self._position - wanted)
        out = np.empty((frames, CHANNELS), np.float32)
        out[:, 0] = acc[0]  # two strided copies: far cheaper than a transposing copy
        out[:, 1] = acc[1]
        return out

    def _render_chunk(self, acc: NDArray[np.float32], offset: int, limit: int) -> int:
        """Render up to ``limit`` frames into ``acc[:, offset:]``, up to the next timeline edge."""
        pos = self._position
        if self._active and self._active[0][0].stop <= pos:
            self._active = [(span, voices) for span, voices in self._active if span.stop > pos]
        while self._next_span < len(self._spans) and self._spans[self._next_span].start == pos:
            self._start_span(self._spans[self._next_span])
            self._next_span += 1
        stop = pos + min(limit, MAX_CHUNK)
        for span, _ in self._active:
            for edge in (span.start + span.xfade_in, span.end, span.stop):
                if pos < edge < stop:
                    stop = edge
        if self._next_span < len(self._spans):
            stop = min(stop, self._spans[self._next_span].start)
        count = stop - pos
        chunk = acc[:, offset : offset + count]
        for span, voices in self._active:
            if span.full(pos, stop):
                for voice in voices:
                    voice.add_to(chunk, pos, self._scratch)
            else:
                mix = np.zeros((CHANNELS, count), np.float32)
                for voice in voices:
                    voice.add_to(mix, pos, self._scratch)
                chunk += mix * span.gain(np.arange(pos, stop, dtype=np.float64))
        self._position = stop
        return count

    def _start_span(self, span: _Span) -> None:
        step = self.program.steps[span.index]
        voices = [
            voice_for(
                layer,
                self._ctx,
                target=slide_target(
                    self.program.steps[span.index + 1]
                    if span.index + 1 < len(self.program.steps)
                    else None,
                    slot,
                ),
                span=Span(span.start, span.end),
                key=(span.index, slot),
            )
            for slot, layer in enumerate(step.layers)
        ]
        if self._active:
            previous = self._active[-1][1]
            for new, old in zip(voices, previous, strict=False):
                new.take_over(old)
        self._active.append((span, voices))

    def _envelope(self, acc: NDArray[np.float32], start: int) -> None:
        count = acc.shape[1]
        in_fade_in = self._fade_in and start < self._fade_in
        in_fade_out = self._fade_out and start + count > self.total_frames - self._fade_out
        if not (in_fade_in or in_fade_out):
            return
        index = np.arange(start, start + count, dtype=np.float64)
        env = np.ones(count, np.float64)
        if in_fade_in:
            env *= _raised_cosine(index / self._fade_in)
        if in_fade_out:
            env *= _raised_cosine((self.total_frames - 1 - index) / self._fade_out)
        acc *= env.astype(np.float32)
