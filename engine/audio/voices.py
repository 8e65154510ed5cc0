"""One ``Voice`` per layer of a step: oscillators, isochronic pulses, noise and background files.

A voice adds its sound into a channel-major float32 accumulator (``acc[0]`` left, ``acc[1]``
right) chunk by chunk, ``add_to(acc, start, scratch)`` for absolute frames ``start …
start + n``. It advances its state by exactly ``n`` frames, so the output does not depend on how
the timeline is cut into chunks (the renderer's block-size property).

Speed (issue 3, "Speed"): the costly part of a one-hour render is a few sines and noise, so

- a held (non-sliding) sine is a rotation: ``sin(φ0 + ωk) = sin φ0·cos ωk + cos φ0·sin ωk`` with
  ``cos ωk``, ``sin ωk`` tabulated once per oscillator for k < ``MAX_CHUNK``; the phase ``φ0`` is
  accumulated in float64 and wrapped after every chunk (never computed from absolute time).
- a sliding sine accumulates its per-sample phase increment (``cumsum`` of 2π·f[k]/rate) from the
  carried phase, so a 10 → 4 Hz beat slide sounds as a beat going from 10 to 4 Hz.
- noise is read from two long seeded tables per colour (``noise.py``), whose lengths are coprime.

The parts the voices are built of (oscillators, rotations, slides, pan laws) are ``voice_parts.py``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

from resonera.common.program_model import (
    BackgroundLayer,
    BinauralLayer,
    IsochronicLayer,
    LayerModel,
    MonauralLayer,
    NoiseLayer,
    ToneLayer,
)
from resonera.engine.audio.noise import NOISE_RMS
from resonera.engine.audio.voice_parts import (
    F32,
    F64,
    MAX_CHUNK,
    TWO_PI,
    Acc,
    Oscillator,
    Param,
    Span,
    StereoRotation,
    VoiceContext,
    balance,
    balance_arrays,
    check_audible,
    constant_power,
    constant_power_arrays,
    slide_params,
)

__all__ = [
    "MAX_CHUNK",
    "Acc",
    "BackgroundVoice",
    "BinauralVoice",
    "IsochronicVoice",
    "MonauralVoice",
    "NoiseVoice",
    "Oscillator",
    "StereoRotation",
    "ToneVoice",
    "Voice",
    "VoiceContext",
    "isochronic_envelope",
    "voice_for",
]


class Voice(ABC):
    """Renders one layer over its step (see the module docstring for the contract)."""

    def __init__(self, layer: LayerModel, span: Span, ctx: VoiceContext) -> None:
        self.layer = layer
        self.span = span
        self.ctx = ctx

    @abstractmethod
    def add_to(self, acc: Acc, start: int, scratch: F32) -> None:
        """Add this voice's frames ``start …`` into ``acc`` (shape (2, n)); advance by n."""

    def take_over(self, previous: Voice) -> None:  # noqa: B027 - optional hook, default no-op
        """Continue from ``previous`` (same slot, step before) at the frame this voice starts."""


class _Oscillating(Voice):
    """Voices made of sines whose frequencies, gain and pan may slide."""

    FREQS: tuple[str, ...] = ()

    def __init__(
        self, layer: LayerModel, target: LayerModel | None, span: Span, ctx: VoiceContext
    ) -> None:
        super().__init__(layer, span, ctx)
        self.params = slide_params(layer, target, (*self.FREQS, "gain", "pan"))
        self.constant = all(p.constant for p in self.params)
        # Frames this voice may render (its step plus a crossfade tail): the rotation tables' size.
        self.frames = span.end - span.start + ctx.sample_rate
        self.oscillators = [Oscillator() for _ in self._frequencies_now()]
        self._rotations: list[StereoRotation] | None = None
        #: Held voices: the rotations and their (left, right) gains, built on the first chunk.
        self._fast: list[tuple[StereoRotation, tuple[float, float]]] | None = None
        for p in self.params[: len(self.FREQS)]:
            for hz in (p.start, p.end):
                for f in self._ear_frequencies(hz):
                    check_audible(f, ctx.sample_rate)

    def _ear_frequencies(self, hz: float) -> tuple[float, ...]:
        return (hz,)

    def _frequencies_now(self) -> tuple[float, ...]:
        return (self.params[0].start,)

    def take_over(self, previous: Voice) -> None:
        if type(previous) is type(self) and isinstance(previous, _Oscillating):
            for mine, theirs in zip(self.oscillators, previous.oscillators, strict=False):
                mine.phase = theirs.phase

    def _values(self, start: int, n: int) -> list[F64] | None:
        """Per-sample parameter values, or None when every parameter holds."""
        if self.constant:
            return None
        t = self.span.progress(start, n)
        return [p.at(t) for p in self.params]


class ToneVoice(_Oscillating):
    FREQS = ("frequency_hz",)

    def add_to(self, acc: Acc, start: int, scratch: F32) -> None:
        if self._fast is not None:
            for rotation, gains in self._fast:
                rotation.add(acc, gains, scratch)
            return
        osc = self.oscillators[0]
        rate = self.ctx.sample_rate
        values = self._values(start, acc.shape[1])
        if values is None:
            f, gain, pan = (p.start for p in self.params)
            if self._rotations is None:
                omega = TWO_PI * f / rate
                self._rotations = [StereoRotation(osc, osc, (omega, omega), self.frames)]
            left, right = constant_power(pan)
            self._fast = [(self._rotations[0], (gain * left, gain * right))]
            self._rotations[0].add(acc, (gain * left, gain * right), scratch)
            return
        f_arr, gain_arr, pan_arr = values
        s = osc.sliding(TWO_PI / rate * f_arr) * gain_arr
        left_arr, right_arr = constant_power_arrays(pan_arr)
        acc[0] += s * left_arr
        acc[1] += s * right_arr


class BinauralVoice(_Oscillating):
    """Left: carrier − beat/2; right: carrier + beat/2 (each at ``gain``, balance pan)."""

    FREQS = ("carrier_hz", "beat_hz")

    def _frequencies_now(self) -> tuple[float, ...]:
        return (0.0, 0.0)

    def _ear_frequencies(self, hz: float) -> tuple[float, ...]:
        # Checked per parameter: the carrier bounds the ears well below Nyquist at any rate used.
        return (hz,)

    def add_to(self, acc: Acc, start: int, scratch: F32) -> None:
        if self._fast is not None:
            for rotation, gains in self._fast:
                rotation.add(acc, gains, scratch)
            return
        rate = self.ctx.sample_rate
        values = self._values(start, acc.shape[1])
        if values is None:
            carrier, beat, gain, pan = (p.start for p in self.params)
            if self._rotations is None:
                omega = (TWO_PI * (carrier - beat / 2) / rate, TWO_PI * (carrier + beat / 2) / rate)
                osc_l, osc_r = self.oscillators
                self._rotations = [StereoRotation(osc_l, osc_r, omega, self.frames)]
            left, right = balance(pan)
            self._fast = [(self._rotations[0], (gain * left, gain * right))]
            self._rotations[0].add(acc, (gain * left, gain * right), scratch)
            return
        carrier_arr, beat_arr, gain_arr, pan_arr = values
        left_arr, right_arr = balance_arrays(pan_arr)
        scale = TWO_PI / rate
        acc[0] += self.oscillators[0].sliding(scale * (carrier_arr - beat_arr / 2)) * (
            gain_arr * left_arr
        )
        acc[1] += self.oscillators[1].sliding(scale * (carrier_arr + beat_arr / 2)) * (
            gain_arr * right_arr
        )


class MonauralVoice(_Oscillating):
    """(sin(carrier − beat/2) + sin(carrier + beat/2)) / 2 in both ears, constant-power pan."""

    FREQS = ("carrier_hz", "beat_hz")

    def _frequencies_now(self) -> tuple[float, ...]:
        return (0.0, 0.0)

    def add_to(self, acc: Acc, start: int, scratch: F32) -> None:
        if self._fast is not None:
            for rotation, gains in self._fast:
                rotation.add(acc, gains, scratch)
            return
        rate = self.ctx.sample_rate
        n = acc.shape[1]
        values = self._values(start, n)
        if values is None:
            carrier, beat, gain, pan = (p.start for p in self.params)
            if self._rotations is None:
                self._rotations = [
                    StereoRotation(osc, osc, (TWO_PI * hz / rate,) * 2, self.frames)
                    for osc, hz in zip(
                        self.oscillators, (carrier - beat / 2, carrier + beat / 2), strict=True
                    )
                ]
            left, right = constant_power(pan)
            self._fast = [(r, (0.5 * gain * left, 0.5 * gain * right)) for r in self._rotations]
            for rotation in self._rotations:
                rotation.add(acc, (0.5 * gain * left, 0.5 * gain * right), scratch)
            return
        carrier_arr, beat_arr, gain_arr, pan_arr = values
        scale = TWO_PI / rate
        s = self.oscillators[0].sliding(scale * (carrier_arr - beat_arr / 2))
        s += self.oscillators[1].sliding(scale * (carrier_arr + beat_arr / 2))
        s *= 0.5 * gain_arr
        left_arr, right_arr = constant_power_arrays(pan_arr)
        acc[0] += s * left_arr
        acc[1] += s * right_arr


def isochronic_envelope(cycles: F64, duty: float, edge: float) -> F64:
    """Pulse gain (0…1) at pulse phases ``cycles`` (in periods): raised-cosine edges.

    Rise over [0, edge), on until duty − edge, fall until duty, silent to the end of the period.
    """
    u = cycles - np.floor(cycles)
    x = np.minimum(np.clip(u / edge, 0.0, 1.0), np.clip((duty - u) / edge, 0.0, 1.0))
    return 0.5 - 0.5 * np.cos(np.pi * x)


class IsochronicVoice(_Oscillating):
    FREQS = ("carrier_hz", "pulse_hz")

    def __init__(
        self, layer: IsochronicLayer, target: LayerModel | None, span: Span, ctx: VoiceContext
    ) -> None:
        super().__init__(layer, target, span, ctx)
        self.duty, self.edge = layer.duty, layer.edge
        self.pulse_phase = 0.0  # in periods, [0, 1)

    def _ear_frequencies(self, hz: float) -> tuple[float, ...]:
        return (hz,)

    def take_over(self, previous: Voice) -> None:
        super().take_over(previous)
        if isinstance(previous, IsochronicVoice):
            self.pulse_phase = previous.pulse_phase

    def add_to(self, acc: Acc, start: int, scratch: F32) -> None:
        rate = self.ctx.sample_rate
        n = acc.shape[1]
        values = self._values(start, n)
        if values is None:
            carrier, pulse, gain, pan = (p.start for p in self.params)
            tone = self.oscillators[0].constant(n, TWO_PI * carrier / rate)
            step = pulse / rate
            cycles = self.pulse_phase + step * np.arange(n, dtype=np.float64)
            self.pulse_phase = math.fmod(self.pulse_phase + step * n, 1.0)
            s = tone * isochronic_envelope(cycles, self.duty, self.edge) * gain
            left, right = constant_power(pan)
            acc[0] += (s * left).astype(np.float32)
            acc[1] += (s * right).astype(np.float32)
            return
        carrier_arr, pulse_arr, gain_arr, pan_arr = values
        tone = self.oscillators[0].sliding(TWO_PI / rate * carrier_arr)
        increments = pulse_arr / rate
        cycles = np.empty(n, np.float64)
        cycles[0] = self.pulse_phase
        np.cumsum(increments[:-1], out=cycles[1:])
        cycles[1:] += self.pulse_phase
        self.pulse_phase = math.fmod(self.pulse_phase + float(np.sum(increments)), 1.0)
        s = tone * isochronic_envelope(cycles, self.duty, self.edge) * gain_arr
        left_arr, right_arr = constant_power_arrays(pan_arr)
        acc[0] += s * left_arr
        acc[1] += s * right_arr


class NoiseVoice(Voice):
    """Seeded noise: per ear, per colour, the sum of two long tables read from seeded offsets."""

    def __init__(
        self,
        layer: NoiseLayer,
        target: LayerModel | None,
        span: Span,
        ctx: VoiceContext,
        key: tuple[int, int],
    ) -> None:
        super().__init__(layer, span, ctx)
        self.params = slide_params(layer, target, ("gain", "pan"))
        start_w = layer.weights()
        end_w = target.weights() if isinstance(target, NoiseLayer) else start_w
        curve = layer.curve("mix") if target is not None else "hold"
        self.mix = [Param(a, b, curve) for a, b in zip(start_w, end_w, strict=True)]
        self.constant = all(p.constant for p in (*self.params, *self.mix))
        self.reader = ctx.noise.reader(key)
        gain, pan = self.params[0].start, self.params[1].start
        left, right = balance(pan)
        #: Held noise: (colour, (left scale, right scale)) of each colour that sounds.
        self._held = [
            (colour, (NOISE_RMS * p.start * gain * left, NOISE_RMS * p.start * gain * right))
            for colour, p in enumerate(self.mix)
            if p.start > 0.0
        ]

    def take_over(self, previous: Voice) -> None:
        if isinstance(previous, NoiseVoice):
            self.reader = previous.reader.copy()

    def add_to(self, acc: Acc, start: int, scratch: F32) -> None:
        n = acc.shape[1]
        tables = self.ctx.noise
        if self.constant:
            for colour, scales in self._held:
                tables.add(acc, colour, self.reader, scales, scratch)
            self.reader.advance(n)
            return
        t = self.span.progress(start, n)
        gain_arr, pan_arr = (p.at(t) for p in self.params)
        ears = np.stack(balance_arrays(pan_arr))
        for colour, param in enumerate(self.mix):
            if param.constant and param.start == 0.0:
                continue
            weight_arr = param.at(t) * (NOISE_RMS * gain_arr)
            acc += tables.read(colour, self.reader, n) * (weight_arr * ears)
        self.reader.advance(n)


class BackgroundVoice(Voice):
    """A decoded file (``ctx.backgrounds[path]``, seamless loop, shape (frames, 2)), looped."""

    def __init__(
        self, layer: BackgroundLayer, target: LayerModel | None, span: Span, ctx: VoiceContext
    ) -> None:
        super().__init__(layer, span, ctx)
        self.params = slide_params(layer, target, ("gain", "pan"))
        self.audio = ctx.backgrounds[layer.path]
        self.position = 0

    def take_over(self, previous: Voice) -> None:
        if isinstance(previous, BackgroundVoice) and previous.audio is self.audio:
            self.position = previous.position

    def add_to(self, acc: Acc, start: int, scratch: F32) -> None:
        n = acc.shape[1]
        length = self.audio.shape[1]
        index = (self.position + np.arange(n)) % length
        self.position = (self.position + n) % length
        if all(p.constant for p in self.params):
            gain, pan = self.params[0].start, self.params[1].start
            for channel, ear in enumerate(balance(pan)):
                acc[channel] += self.audio[channel][index] * np.float32(gain * ear)
            return
        t = self.span.progress(start, n)
        gain_arr, pan_arr = (p.at(t) for p in self.params)
        for channel, ear_arr in enumerate(balance_arrays(pan_arr)):
            acc[channel] += self.audio[channel][index] * (gain_arr * ear_arr)


def voice_for(
    layer: LayerModel,
    ctx: VoiceContext,
    *,
    target: LayerModel | None = None,
    span: Span | None = None,
    key: tuple[int, int] = (0, 0),
) -> Voice:
    """The voice that renders ``layer`` over ``span``, sliding to ``target`` if it slides.

    ``key`` (step, slot) picks a noise layer's seeded table offsets. New layer kinds add a case.
    """
    span = span or Span(0, ctx.sample_rate)
    target = target if layer.slides else None
    match layer:
        case ToneLayer():
            return ToneVoice(layer, target, span, ctx)
        case BinauralLayer():
            return BinauralVoice(layer, target, span, ctx)
        case MonauralLayer():
            return MonauralVoice(layer, target, span, ctx)
        case IsochronicLayer():
            return IsochronicVoice(layer, target, span, ctx)
        case NoiseLayer():
            return NoiseVoice(layer, target, span, ctx, key)
        case BackgroundLayer():
            return BackgroundVoice(layer, target, span, ctx)
