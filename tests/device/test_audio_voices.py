"""Every layer kind on rendered output: frequencies, beats, slides, noise colours, pulses, clicks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
from numpy.typing import NDArray
from scipy.signal import hilbert, welch

from resonera.common.errors import ProgramError
from resonera.common.program import (
    BackgroundLayer,
    BinauralLayer,
    Curve,
    IsochronicLayer,
    MonauralLayer,
    NoiseLayer,
    NoiseMix,
    Program,
    Step,
    ToneLayer,
)
from resonera.engine.audio.noise import TABLE_LENGTHS
from resonera.engine.audio.synth import ProgramRenderer
from resonera.engine.audio.voices import isochronic_envelope

# Sound alone, no dates: left out of the faketime pass (make pytest-future).
pytestmark = pytest.mark.dateless

RATE = 48000


def render(program: Program, rate: int = RATE, block: int = 1000) -> NDArray[np.float64]:
    renderer = ProgramRenderer(program, rate)
    parts = []
    while not renderer.done:
        parts.append(renderer.render(block))
    return np.concatenate(parts)[: renderer.total_frames].astype(np.float64)


def program(*steps: Step, fade: float = 0.0, seed: int = 0) -> Program:
    return Program(name="t", fade_in_s=fade, fade_out_s=fade, seed=seed, steps=list(steps))


def beat_track(audio: NDArray[np.float64], rate: int) -> NDArray[np.float64]:
    """Instantaneous beat (Hz) per sample: the rate of change of the phase difference R − L."""
    phase_l = np.unwrap(np.angle(hilbert(audio[:, 0])))
    phase_r = np.unwrap(np.angle(hilbert(audio[:, 1])))
    return np.gradient(phase_r - phase_l) * rate / (2 * math.pi)


def max_jump(audio: NDArray[np.float64]) -> float:
    return float(np.abs(np.diff(audio, axis=0)).max())


@pytest.mark.parametrize("curve", ["linear", "exponential", "ease"])
def test_a_beat_sliding_from_10_to_4_hz_is_heard_going_from_10_to_4(curve: Curve) -> None:
    seconds = 4.0
    prog = program(
        Step(
            duration_s=seconds,
            layers=[BinauralLayer(carrier_hz=200, beat_hz=10, gain=0.5, slide={"beat_hz": curve})],
        ),
        Step(duration_s=1.0, layers=[BinauralLayer(carrier_hz=200, beat_hz=4, gain=0.5)]),
    )
    audio = render(prog)
    beat = beat_track(audio, RATE)
    t = np.arange(len(beat)) / RATE
    progress = np.clip(t / seconds, 0, 1)
    expected = {
        "linear": 10 + (4 - 10) * progress,
        "exponential": 10 * (4 / 10) ** progress,
        "ease": 10 + (4 - 10) * (0.5 - 0.5 * np.cos(np.pi * progress)),
    }[curve]
    inner = slice(int(0.1 * RATE), int(4.9 * RATE))  # away from the Hilbert transform's ends
    # Averaged over 50 ms windows, the measured beat follows the slide within 0.05 Hz.
    window = int(0.05 * RATE)
    measured = beat[inner][: (len(beat[inner]) // window) * window].reshape(-1, window).mean(axis=1)
    wanted = expected[inner][: len(measured) * window].reshape(-1, window).mean(axis=1)
    np.testing.assert_allclose(measured, wanted, atol=0.05)
    assert measured[-1] == pytest.approx(4.0, abs=0.05)
    # The carrier stays at 200 Hz: the two ears' mean frequency.
    assert max_jump(audio) <= 2 * math.pi * 205 / RATE * 0.5 * 1.05


def test_a_carrier_slide_is_continuous_and_ends_on_the_next_step() -> None:
    prog = program(
        Step(
            duration_s=1.0,
            layers=[ToneLayer(frequency_hz=300, gain=0.6, pan=-1, slide="exponential")],
        ),
        Step(duration_s=0.5, layers=[ToneLayer(frequency_hz=600, gain=0.6, pan=-1)]),
    )
    audio = render(prog, block=333)
    assert max_jump(audio) <= 2 * math.pi * 600 / RATE * 0.6 * 1.01
    freq = np.gradient(np.unwrap(np.angle(hilbert(audio[:, 0])))) * RATE / (2 * math.pi)
    assert np.median(freq[int(0.45 * RATE) : int(0.55 * RATE)]) == pytest.approx(
        300 * 2**0.5, rel=2e-3
    )
    assert np.median(freq[int(1.1 * RATE) : int(1.4 * RATE)]) == pytest.approx(600, rel=1e-3)


def test_gain_and_pan_slides_have_no_clicks() -> None:
    tone = ToneLayer(frequency_hz=500, gain=0.05, pan=-1, slide="ease")
    prog = program(
        Step(duration_s=0.3, layers=[tone]),
        Step(duration_s=0.3, layers=[ToneLayer(frequency_hz=500, gain=0.9, pan=1)]),
        fade=0.05,
    )
    audio = render(prog, block=64)
    assert max_jump(audio) <= 2 * math.pi * 500 / RATE * 0.9 * 1.05
    assert np.abs(audio[int(0.58 * RATE) :, 0]).max() < 0.01  # ended panned right
    assert audio[0].tolist() == [0.0, 0.0] and audio[-1].tolist() == [0.0, 0.0]


def test_monaural_beats_in_both_ears_alike() -> None:
    prog = program(
        Step(duration_s=2.0, layers=[MonauralLayer(carrier_hz=300, beat_hz=8, gain=0.8)])
    )
    audio = render(prog)
    np.testing.assert_allclose(audio[:, 0], audio[:, 1], atol=1e-6)
    envelope = np.abs(hilbert(audio[:, 0]))[RATE // 4 : -RATE // 4]
    spectrum = np.abs(np.fft.rfft(envelope - envelope.mean(), n=1 << 20))
    assert np.argmax(spectrum) * RATE / (1 << 20) == pytest.approx(8.0, abs=0.05)
    assert np.abs(audio).max() == pytest.approx(0.8 * math.cos(math.pi / 4), abs=1e-3)


def test_isochronic_pulses_at_their_rate_with_their_duty_cycle_and_smooth_edges() -> None:
    layer = IsochronicLayer(carrier_hz=400, pulse_hz=10, gain=0.8, duty=0.4, edge=0.1, pan=-1)
    audio = render(program(Step(duration_s=2.0, layers=[layer])))[:, 0]
    period = RATE // 10
    loud = np.abs(hilbert(audio))[period:-period] > 0.4
    assert loud.mean() == pytest.approx(0.3, abs=0.02)  # half-amplitude points: duty − edge
    starts = np.flatnonzero(np.diff(loud.astype(int)) == 1)
    assert np.diff(starts).mean() == pytest.approx(period, abs=2)
    # Raised-cosine edges: no step larger than the tone's own slope at full gain.
    assert max_jump(audio[:, None]) <= 2 * math.pi * 400 / RATE * 0.8 * 1.05


def test_isochronic_envelope_shape() -> None:
    u = np.array([0.0, 0.05, 0.1, 0.2, 0.3, 0.35, 0.4, 0.7])
    env = isochronic_envelope(u, duty=0.4, edge=0.1)
    np.testing.assert_allclose(env, [0, 0.5, 1, 1, 1, 0.5, 0, 0], atol=1e-12)


def _slope_db_per_octave(signal: NDArray[np.float64], low: float, high: float) -> float:
    freqs, power = welch(signal, RATE, nperseg=1 << 14)
    band = (freqs >= low) & (freqs <= high)
    slope = np.polyfit(np.log2(freqs[band]), 10 * np.log10(power[band]), 1)[0]
    return float(slope)


@pytest.mark.parametrize(("colour", "slope"), [("white", 0.0), ("pink", -3.0), ("brown", -6.0)])
def test_noise_colours_have_their_spectral_slope_and_level(colour: str, slope: float) -> None:
    gain = 0.5
    layer = NoiseLayer(colour=colour, gain=gain)
    audio = render(program(Step(duration_s=4.0, layers=[layer])), block=4096)
    for channel in (0, 1):
        assert _slope_db_per_octave(audio[:, channel], 100, 10000) == pytest.approx(slope, abs=0.5)
        rms = math.sqrt(float(np.mean(audio[:, channel] ** 2)))
        assert rms == pytest.approx(0.2 * gain, rel=0.1)
    assert np.abs(audio).max() <= gain
    correlation = np.corrcoef(audio[:, 0], audio[:, 1])[0, 1]
    assert abs(correlation) < 0.05  # the ears are independent


@pytest.mark.parametrize("colour", ["white", "pink", "brown"])
def test_noise_does_not_loop_where_its_tables_do(colour: str) -> None:
    """The noise tables are short loops (to keep the device small); what an ear hears never
    repeats at a table's period: at most the half of it that one table gives is repeated."""
    rate = 44100
    audio = render(
        program(Step(duration_s=13.0, layers=[NoiseLayer(colour=colour, gain=0.5)])),
        rate,
        block=8192,
    )
    span = rate  # one second compared with the same second a period later
    for period in TABLE_LENGTHS:
        for channel in (0, 1):
            now = audio[:span, channel]
            later = audio[period : period + span, channel]
            assert np.corrcoef(now, later)[0, 1] < 0.7, (period, channel)


def test_seeded_noise_is_reproducible_and_the_seed_matters() -> None:
    def noise(seed: int) -> NDArray[np.float64]:
        layer = NoiseLayer(mix=NoiseMix(white=0.2, pink=0.5, brown=0.3), gain=0.6)
        return render(program(Step(duration_s=0.5, layers=[layer]), seed=seed), block=777)

    first, again, other = noise(3), noise(3), noise(4)
    assert np.array_equal(first, again)
    assert not np.allclose(first, other)


def test_a_noise_colour_slide_moves_the_spectrum() -> None:
    steps = [
        Step(
            duration_s=4.0, layers=[NoiseLayer(colour="white", gain=0.5, slide={"mix": "linear"})]
        ),
        Step(duration_s=1.0, layers=[NoiseLayer(colour="brown", gain=0.5)]),
    ]
    audio = render(program(*steps), block=2048)[:, 0]
    early = _slope_db_per_octave(audio[: RATE // 2], 100, 10000)
    late = _slope_db_per_octave(audio[-RATE:], 100, 10000)
    assert early > -1.5
    assert late == pytest.approx(-6.0, abs=0.7)


def test_noise_continues_through_a_step_change_without_a_seam() -> None:
    layer = NoiseLayer(colour="pink", gain=0.5)
    one = render(program(Step(duration_s=1.0, layers=[layer])), block=4096)
    two = render(
        program(Step(duration_s=0.5, layers=[layer]), Step(duration_s=0.5, layers=[layer])),
        block=1000,
    )
    # Same slot, same kind: the second step continues the first one's noise exactly.
    assert len(one) == len(two)
    np.testing.assert_allclose(two[RATE // 2 :], one[RATE // 2 :], atol=1e-6)


def test_background_file_is_resampled_looped_and_scaled(tmp_path: Path) -> None:
    path = tmp_path / "hum.flac"
    t = np.arange(22050) / 22050
    soundfile.write(path, 0.5 * np.sin(2 * math.pi * 441 * t), 22050, subtype="PCM_24")
    layer = BackgroundLayer(path=str(path), gain=0.8)
    audio = render(program(Step(duration_s=3.0, layers=[layer])))
    assert np.abs(audio).max() == pytest.approx(0.4, abs=0.01)
    np.testing.assert_allclose(audio[:, 0], audio[:, 1], atol=1e-7)
    spectrum = np.abs(np.fft.rfft(audio[:, 0] * np.hanning(len(audio))))
    assert np.argmax(spectrum) * RATE / len(audio) == pytest.approx(441, abs=1)
    # The loop point (every ~1 s) is seamless: no jump beyond the sine's own slope.
    assert max_jump(audio) <= 2 * math.pi * 441 / RATE * 0.4 * 1.1


def test_missing_or_broken_background_is_refused_before_any_sample(tmp_path: Path) -> None:
    layer = BackgroundLayer(path=str(tmp_path / "none.wav"), gain=0.5)
    with pytest.raises(ProgramError, match=r"steps\.0\.layers\.0\.path: cannot read"):
        ProgramRenderer(program(Step(duration_s=1.0, layers=[layer])), RATE)
    (tmp_path / "bad.wav").write_bytes(b"RIFF0000WAVEjunk")
    layer = BackgroundLayer(path=str(tmp_path / "bad.wav"), gain=0.5)
    with pytest.raises(ProgramError, match=r"bad\.wav"):
        ProgramRenderer(program(Step(duration_s=1.0, layers=[layer])), RATE)


def test_every_preset_renders_its_first_seconds_within_full_scale() -> None:
    from resonera.common.program import BUILTIN_PROGRAMS

    for prog in BUILTIN_PROGRAMS.values():
        renderer = ProgramRenderer(prog, 44100)
        block = renderer.render(44100)
        assert np.abs(block).max() <= 1.0
        assert np.isfinite(block).all()
