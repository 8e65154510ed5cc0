from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from pydantic import ValidationError

from resonera.common.errors import ProgramError
from resonera.common.program import (
    BUILTIN_PROGRAMS,
    BinauralLayer,
    IsochronicLayer,
    MonauralLayer,
    NoiseLayer,
    Program,
    Step,
    ToneLayer,
)
from resonera.engine.audio.levels import SILENCE_DBFS, LevelMeter
from resonera.engine.audio.synth import ProgramRenderer, SineBank

# Sound alone, no dates: left out of the faketime pass (make pytest-future).
pytestmark = pytest.mark.dateless

RATE = 48000


def render_all(renderer: ProgramRenderer, block: int | None = None) -> NDArray[np.float32]:
    if block is None:
        return renderer.render(renderer.total_frames)
    parts = []
    while not renderer.done:
        parts.append(renderer.render(block))
    return np.concatenate(parts)[: renderer.total_frames]


def dominant_hz(signal: NDArray[np.floating], rate: int) -> float:
    """Frequency of the strongest FFT bin, refined by parabolic interpolation (log magnitude)."""
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal)), n=1 << 20))
    k = int(np.argmax(spectrum[1:])) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-30)
    offset = 0.5 * (a - c) / (a - 2 * b + c)
    return float((k + offset) * rate / (1 << 20))


def program(*steps: Step, fade_in_s: float = 0.0, fade_out_s: float = 0.0) -> Program:
    return Program(name="test", fade_in_s=fade_in_s, fade_out_s=fade_out_s, steps=list(steps))


def test_tone_is_the_exact_sine_with_constant_power_pan() -> None:
    prog = program(Step(duration_s=1.0, layers=[ToneLayer(frequency_hz=1000.0, gain=0.5)]))
    out = render_all(ProgramRenderer(prog, RATE), block=1000)
    n = np.arange(RATE)
    ideal = 0.5 * math.cos(math.pi / 4) * np.sin(2 * np.pi * 1000.0 * n / RATE)
    np.testing.assert_allclose(out[:, 0], ideal, atol=1e-6)
    np.testing.assert_allclose(out[:, 1], ideal, atol=1e-6)
    assert dominant_hz(out[:, 0], RATE) == pytest.approx(1000.0, abs=0.01)


@pytest.mark.parametrize(("pan", "left", "right"), [(-1.0, 0.4, 0.0), (1.0, 0.0, 0.4)])
def test_hard_pan_puts_the_whole_gain_in_one_ear(pan: float, left: float, right: float) -> None:
    layer = ToneLayer(frequency_hz=500.0, gain=0.4, pan=pan)
    out = render_all(ProgramRenderer(program(Step(duration_s=0.1, layers=[layer])), RATE))
    assert np.abs(out).max(axis=0) == pytest.approx([left, right], abs=1e-4)


def test_binaural_ears_are_carrier_minus_and_plus_half_the_beat() -> None:
    layer = BinauralLayer(carrier_hz=200.0, beat_hz=10.0, gain=0.3)
    out = render_all(ProgramRenderer(program(Step(duration_s=2.0, layers=[layer])), RATE), 4096)
    assert dominant_hz(out[:, 0], RATE) == pytest.approx(195.0, abs=0.01)
    assert dominant_hz(out[:, 1], RATE) == pytest.approx(205.0, abs=0.01)
    assert np.abs(out).max(axis=0) == pytest.approx([0.3, 0.3], abs=1e-4)


layers = st.one_of(
    st.builds(
        ToneLayer,
        frequency_hz=st.floats(20.0, 16000.0),
        gain=st.floats(0.0, 0.5),
        pan=st.floats(-1.0, 1.0),
    ),
    st.builds(
        BinauralLayer,
        carrier_hz=st.floats(40.0, 1500.0),
        beat_hz=st.floats(0.5, 45.0),
        gain=st.floats(0.0, 0.5),
    ),
)
steps = st.builds(
    Step,
    duration_s=st.floats(0.001, 0.15),
    layers=st.lists(layers, min_size=1, max_size=2),
)


@st.composite
def programs(draw: st.DrawFn) -> Program:
    chosen = draw(st.lists(steps, min_size=1, max_size=4))
    total = sum(s.duration_s for s in chosen)
    fade_in = draw(st.floats(0.0, total / 2))
    fade_out = draw(st.floats(0.0, total / 2))
    return program(*chosen, fade_in_s=fade_in, fade_out_s=fade_out)


@settings(max_examples=40, deadline=None)
@given(
    prog=programs(),
    rate=st.sampled_from([44100, 48000]),
    blocks=st.lists(st.integers(64, 8192), min_size=1, max_size=12),
)
def test_output_is_the_same_whatever_the_block_sizes(
    prog: Program, rate: int, blocks: list[int]
) -> None:
    reference = ProgramRenderer(prog, rate)
    whole = reference.render(reference.total_frames)
    renderer = ProgramRenderer(prog, rate)
    parts = []
    i = 0
    while not renderer.done:
        parts.append(renderer.render(blocks[i % len(blocks)]))
        i += 1
    pieces = np.concatenate(parts)
    np.testing.assert_allclose(pieces[: len(whole)], whole, atol=1e-6, rtol=0)
    assert not pieces[len(whole) :].any()
    # The gain rule (gains of a step ≤ 1) keeps every sample within full scale.
    assert np.abs(whole).max(initial=0.0) <= 1.0
    assert renderer.position_s == pytest.approx(renderer.total_frames / rate)


def test_full_gain_binaural_with_two_tones_stays_within_full_scale() -> None:
    step_a = Step(
        duration_s=0.2,
        layers=[
            BinauralLayer(carrier_hz=100.0, beat_hz=4.0, gain=0.5),
            ToneLayer(frequency_hz=100.0, gain=0.5, pan=-1.0),
        ],
    )
    step_b = Step(duration_s=0.2, layers=[ToneLayer(frequency_hz=102.0, gain=1.0, pan=-1.0)])
    out = render_all(ProgramRenderer(program(step_a, step_b, step_a), RATE), 333)
    assert np.abs(out).max() <= 1.0


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (ToneLayer(frequency_hz=440.0, gain=0.8), ToneLayer(frequency_hz=660.0, gain=0.8)),
        (
            BinauralLayer(carrier_hz=200.0, beat_hz=10.0, gain=0.8),
            BinauralLayer(carrier_hz=200.0, beat_hz=8.0, gain=0.8),
        ),
        (
            ToneLayer(frequency_hz=300.5, gain=0.8, pan=1.0),
            BinauralLayer(carrier_hz=250.0, beat_hz=40.0, gain=0.8),
        ),
    ],
)
def test_step_changes_have_no_jump_larger_than_the_signals_own_slope(
    first: ToneLayer | BinauralLayer, second: ToneLayer | BinauralLayer
) -> None:
    prog = program(Step(duration_s=0.5, layers=[first]), Step(duration_s=0.5, layers=[second]))
    renderer = ProgramRenderer(prog, RATE)
    out = render_all(renderer, block=700).astype(np.float64)
    f_max = max(_top_frequency(first), _top_frequency(second))
    bound = 2 * math.pi * f_max / RATE * 0.8 * 1.2
    boundary = RATE // 2
    around = out[boundary - 4800 : boundary + 4800]
    assert np.abs(np.diff(around, axis=0)).max() <= bound
    if type(first) is type(second):
        # Same kind in the same slot: the new oscillators continue the old phases, so even a hard
        # switch is continuous.
        hard = render_all(ProgramRenderer(prog, RATE, crossfade_s=0.0)).astype(np.float64)
        assert np.abs(np.diff(hard, axis=0)).max() <= bound
    else:
        # New oscillators start from phase 0: without the crossfade the output would jump.
        hard = render_all(ProgramRenderer(prog, RATE, crossfade_s=0.0)).astype(np.float64)
        assert np.abs(np.diff(hard, axis=0)).max() > 2 * bound


def _top_frequency(layer: ToneLayer | BinauralLayer) -> float:
    if isinstance(layer, ToneLayer):
        return layer.frequency_hz
    return layer.carrier_hz + layer.beat_hz / 2


def test_fade_in_starts_at_zero_and_fade_out_ends_at_zero() -> None:
    tone = ToneLayer(frequency_hz=1000.0, gain=0.6, pan=-1.0)
    prog = program(Step(duration_s=1.0, layers=[tone]), fade_in_s=0.25, fade_out_s=0.25)
    out = render_all(ProgramRenderer(prog, RATE), block=512)[:, 0]
    assert out[0] == 0.0
    assert out[-1] == 0.0
    assert np.abs(out[:48]).max() < 1e-3  # first millisecond
    assert np.abs(out[-48:]).max() < 1e-3  # last millisecond
    steady = np.abs(out[int(0.3 * RATE) : int(0.7 * RATE)]).max()
    assert steady == pytest.approx(0.6, abs=1e-3)
    # The envelope rises monotonically (peak per 1 ms period of the tone).
    peaks = np.abs(out[: int(0.25 * RATE)]).reshape(-1, 48).max(axis=1)
    assert np.all(np.diff(peaks) >= -1e-6)


def test_oscillator_phase_is_accumulated_and_wrapped_without_drift() -> None:
    # 600 s at 8 kHz of a 1234 Hz sine in uneven pieces: the phase ends where exact arithmetic says.
    rate, freq = 8000, 1234.0
    bank = SineBank([freq], [(1.0, 1.0)], rate)
    frames = 0
    sizes = [8191, 64, 1000, 4097]
    for i in range(600 * rate // 3338):
        bank.render(sizes[i % 4])
        frames += sizes[i % 4]
    exact = 2 * math.pi * ((1234 * frames) % rate) / rate
    phase = float(bank.phases[0])
    assert 0.0 <= phase < 2 * math.pi
    assert math.remainder(phase - exact, 2 * math.pi) == pytest.approx(0.0, abs=1e-9)


def test_render_past_the_end_is_silence_and_done() -> None:
    prog = program(Step(duration_s=0.01, layers=[ToneLayer(frequency_hz=100.0, gain=0.5)]))
    renderer = ProgramRenderer(prog, RATE)
    assert renderer.total_frames == 480
    assert renderer.step_index is None
    block = renderer.render(1000)
    assert block.shape == (1000, 2)
    assert block.dtype == np.float32
    assert renderer.done
    assert renderer.position_s == pytest.approx(0.01)
    assert not block[480:].any()
    assert not renderer.render(64).any()


def test_step_index_follows_the_steps() -> None:
    renderer = ProgramRenderer(BUILTIN_PROGRAMS["demo-alpha"], RATE)
    renderer.render(1024)
    assert renderer.step_index == 0
    renderer.render(int(1.6 * RATE))
    assert renderer.step_index == 1


def test_a_frequency_above_nyquist_is_refused() -> None:
    prog = program(Step(duration_s=1.0, layers=[ToneLayer(frequency_hz=16000.0, gain=0.5)]))
    with pytest.raises(ProgramError, match="below 11025"):
        ProgramRenderer(prog, 22050)


def test_level_meter_accumulates_over_blocks() -> None:
    meter = LevelMeter()
    assert meter.rms_dbfs == SILENCE_DBFS
    assert meter.peak_dbfs == SILENCE_DBFS
    meter.update(np.zeros((100, 2), np.float32))
    assert meter.rms_dbfs == SILENCE_DBFS
    sine = np.sin(2 * np.pi * 1000 * np.arange(RATE) / RATE).astype(np.float32)
    stereo = np.stack([sine, sine], axis=1)
    meter = LevelMeter()
    for start in range(0, RATE, 4800):
        meter.update(stereo[start : start + 4800])
    assert meter.frames == RATE
    assert meter.peak_dbfs == pytest.approx(0.0, abs=1e-4)
    assert meter.rms_dbfs == pytest.approx(-3.0103, abs=1e-3)


# --- Every layer kind, with slides: still block-size independent and within full scale ----------

v2_layers = st.one_of(
    layers,
    st.builds(
        MonauralLayer,
        carrier_hz=st.floats(40.0, 1500.0),
        beat_hz=st.floats(0.5, 45.0),
        gain=st.floats(0.0, 0.3),
        pan=st.floats(-1.0, 1.0),
    ),
    st.builds(
        IsochronicLayer,
        carrier_hz=st.floats(20.0, 16000.0),
        pulse_hz=st.floats(0.5, 45.0),
        gain=st.floats(0.0, 0.3),
        duty=st.floats(0.3, 0.9),
        edge=st.floats(0.02, 0.15),
    ),
    st.builds(
        NoiseLayer,
        colour=st.sampled_from(["white", "pink", "brown"]),
        gain=st.floats(0.0, 0.3),
        pan=st.floats(-1.0, 1.0),
    ),
)


@st.composite
def sliding_programs(draw: st.DrawFn) -> Program:
    count = draw(st.integers(1, 4))
    kinds = draw(st.lists(v2_layers, min_size=1, max_size=3))
    curve = draw(st.sampled_from(["linear", "ease", "exponential"]))
    steps = []
    for index in range(count):
        step_layers = []
        for layer in kinds:
            # The same kinds in every step (new values), so any slot may slide to the next step.
            changed = draw(st.builds(type(layer), **_fields_for(layer)))
            if index + 1 < count and draw(st.booleans()):
                changed = changed.model_copy(update={"slide": curve})
            step_layers.append(changed)
        steps.append(Step(duration_s=draw(st.floats(0.002, 0.12)), layers=step_layers))
    seed = draw(st.integers(0, 2**32))
    try:
        return Program.model_validate(
            {
                "name": "p",
                "fade_in_s": 0.0,
                "fade_out_s": 0.0,
                "seed": seed,
                "steps": [s.model_dump() for s in steps],
            }
        )
    except ValidationError:
        assume(False)
        raise


def _fields_for(layer: object) -> dict[str, st.SearchStrategy[object]]:
    gain = st.floats(0.0, 0.3)
    match layer:
        case ToneLayer():
            return {"frequency_hz": st.floats(20.0, 16000.0), "gain": gain}
        case BinauralLayer() | MonauralLayer():
            return {
                "carrier_hz": st.floats(40.0, 1500.0),
                "beat_hz": st.floats(0.5, 45.0),
                "gain": gain,
            }
        case IsochronicLayer():
            return {
                "carrier_hz": st.floats(20.0, 16000.0),
                "pulse_hz": st.floats(0.5, 45.0),
                "gain": gain,
            }
        case NoiseLayer():
            return {"colour": st.sampled_from(["white", "pink", "brown"]), "gain": gain}
    raise AssertionError(layer)


@settings(max_examples=40, deadline=None)
@given(
    prog=sliding_programs(),
    rate=st.sampled_from([44100, 48000]),
    blocks=st.lists(st.integers(64, 8192), min_size=1, max_size=12),
)
def test_every_layer_kind_with_slides_is_block_size_independent(
    prog: Program, rate: int, blocks: list[int]
) -> None:
    reference = ProgramRenderer(prog, rate)
    whole = reference.render(reference.total_frames)
    renderer = ProgramRenderer(prog, rate)
    parts = []
    i = 0
    while not renderer.done:
        parts.append(renderer.render(blocks[i % len(blocks)]))
        i += 1
    pieces = np.concatenate(parts)
    np.testing.assert_allclose(pieces[: len(whole)], whole, atol=1e-6, rtol=0)
    assert np.abs(whole).max(initial=0.0) <= 1.0
    assert np.isfinite(whole).all()
