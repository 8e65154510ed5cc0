from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np
import pytest
from numpy.typing import NDArray

from resonera.common.program import Program, Step, ToneLayer
from resonera.engine.audio.levels import LevelMeter
from resonera.engine.audio.player import DEFAULT_FAULT_RAMP_S, GainRamp, play
from resonera.engine.audio.sinks import AudioSink, NullSink, SinkKind, WavSink
from resonera.engine.audio.synth import ProgramRenderer

# Sound alone, no dates: left out of the faketime pass (make pytest-future).
pytestmark = pytest.mark.dateless

RATE = 48000
TONE_HZ = 1000.0
AMPLITUDE = 0.5 * math.cos(math.pi / 4)  # a centred tone of gain 0.5, per ear
#: Largest sample-to-sample step of the tone itself, with a margin for the ramps.
MAX_STEP = 2 * math.pi * TONE_HZ / RATE * AMPLITUDE * 1.2


class RecordingSink:
    """An ``AudioSink`` that keeps every block and the order of calls."""

    kind: SinkKind = "null"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.blocks: list[NDArray[np.float32]] = []

    def open(self, sample_rate: int, channels: int) -> None:
        self.calls.append(f"open {sample_rate} {channels}")

    def write(self, block: NDArray[np.float32]) -> None:
        self.calls.append("write")
        self.blocks.append(block.copy())

    def close(self) -> None:
        self.calls.append("close")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.calls.append("discard" if exc else "close")

    @property
    def audio(self) -> NDArray[np.float32]:
        return np.concatenate(self.blocks) if self.blocks else np.zeros((0, 2), np.float32)


def tone_program(seconds: float = 1.0) -> Program:
    layer = ToneLayer(frequency_hz=TONE_HZ, gain=0.5)
    return Program(
        name="tone",
        fade_in_s=0.01,
        fade_out_s=0.01,
        steps=[Step(duration_s=seconds, layers=[layer])],
    )


def reference(seconds: float = 1.0) -> NDArray[np.float32]:
    renderer = ProgramRenderer(tone_program(seconds), RATE)
    return renderer.render(renderer.total_frames)


def test_recording_sink_is_an_audio_sink() -> None:
    assert isinstance(RecordingSink(), AudioSink)


def test_plays_the_whole_program_and_meters_what_it_sent() -> None:
    sink = RecordingSink()
    result = play(ProgramRenderer(tone_program(), RATE), sink, block_frames=1000)
    assert result.outcome == "completed"
    assert result.reason is None
    assert result.frames_played == RATE
    assert result.played_s == pytest.approx(1.0)
    assert sink.calls[0] == f"open {RATE} 2"
    assert sink.calls[-1] == "close"
    assert sink.calls.count("write") == 48
    np.testing.assert_allclose(sink.audio, reference(), atol=1e-6)
    meter = LevelMeter()
    meter.update(sink.audio)
    assert result.peak_dbfs == pytest.approx(meter.peak_dbfs)
    assert result.rms_dbfs == pytest.approx(meter.rms_dbfs)
    assert result.rms_dbfs == pytest.approx(20 * math.log10(AMPLITUDE / math.sqrt(2)), abs=0.1)


def test_gate_closing_mid_playback_ramps_to_zero_within_one_block() -> None:
    blocks_before_fault = 10
    calls = 0

    def gate() -> bool:
        nonlocal calls
        calls += 1
        return calls <= blocks_before_fault

    sink = RecordingSink()
    result = play(
        ProgramRenderer(tone_program(), RATE),
        sink,
        block_frames=512,
        gate=gate,
        reason=lambda: "amplifier over temperature",
    )
    assert result.outcome == "fault"
    assert result.reason == "amplifier over temperature"
    assert calls == blocks_before_fault + 1  # asked before every block, and nothing after the fault
    audio = sink.audio
    before = blocks_before_fault * 512
    # Unchanged up to the fault, then one (shortened) block that ramps to zero, then nothing at all.
    np.testing.assert_allclose(audio[:before], reference()[:before], atol=1e-6)
    assert len(sink.blocks) == blocks_before_fault + 1
    assert before < len(audio) <= before + 512
    assert np.all(audio[-1] == 0.0)
    assert np.abs(np.diff(audio.astype(np.float64), axis=0)).max() <= MAX_STEP
    ramp = round(DEFAULT_FAULT_RAMP_S * RATE)
    assert DEFAULT_FAULT_RAMP_S <= 0.005  # "a few ms" (docs/safety.md §5), well inside one block
    assert len(audio) == before + ramp
    expected = reference()[before : len(audio)] * (1 - np.arange(1, ramp + 1) / ramp)[:, None]
    np.testing.assert_allclose(audio[before:], expected, atol=1e-6)
    assert result.frames_played == len(audio)
    assert sink.calls[-1] == "close"


def test_gate_closed_from_the_start_plays_nothing() -> None:
    sink = RecordingSink()
    result = play(ProgramRenderer(tone_program(), RATE), sink, gate=lambda: False)
    assert result.outcome == "fault"
    assert result.reason == "safety gate closed"
    assert result.frames_played == 0
    assert sink.calls == [f"open {RATE} 2", "close"]
    assert result.peak_dbfs == -200.0


@pytest.mark.parametrize("block_frames", [256, 1024, 4096])
def test_should_stop_fades_out_over_50_ms(block_frames: int) -> None:
    asked = 0

    def should_stop() -> bool:
        nonlocal asked
        asked += 1
        return asked > 5

    sink = RecordingSink()
    result = play(
        ProgramRenderer(tone_program(), RATE),
        sink,
        block_frames=block_frames,
        should_stop=should_stop,
    )
    assert result.outcome == "stopped"
    assert result.reason is None
    start = 5 * block_frames
    fade = int(0.05 * RATE)
    audio = sink.audio
    assert len(audio) == start + fade  # the fade spans blocks when they are short
    assert np.all(audio[-1] == 0.0)
    # The fade is the program times a straight line from 1 down to 0.
    expected = reference()[start : start + fade] * (1 - np.arange(1, fade + 1) / fade)[:, None]
    np.testing.assert_allclose(audio[start:], expected, atol=1e-6)
    assert np.abs(np.diff(audio.astype(np.float64), axis=0)).max() <= MAX_STEP


def test_gate_closing_during_the_stop_fade_is_a_fault() -> None:
    blocks = 0

    def gate() -> bool:
        nonlocal blocks
        blocks += 1
        return blocks < 5

    sink = RecordingSink()
    result = play(
        ProgramRenderer(tone_program(), RATE),
        sink,
        block_frames=256,
        gate=gate,
        should_stop=lambda: True,
    )
    assert result.outcome == "fault"
    assert len(sink.audio) < int(0.05 * RATE)
    assert np.all(sink.audio[-1] == 0.0)


def test_processors_run_in_order_before_the_sink() -> None:
    seen: list[str] = []

    def halve(block: NDArray[np.float32]) -> NDArray[np.float32]:
        seen.append("halve")
        return block * np.float32(0.5)

    def check(block: NDArray[np.float32]) -> NDArray[np.float32]:
        seen.append("check")
        return block

    sink = RecordingSink()
    result = play(
        ProgramRenderer(tone_program(0.1), RATE), sink, block_frames=1600, processors=[halve, check]
    )
    assert seen == ["halve", "check"] * 3
    np.testing.assert_allclose(sink.audio, reference(0.1) * 0.5, atol=1e-7)
    assert result.peak_dbfs == pytest.approx(20 * math.log10(AMPLITUDE / 2), abs=0.01)


def test_a_failing_processor_discards_the_sink(tmp_path: Path) -> None:
    def broken(block: NDArray[np.float32]) -> NDArray[np.float32]:
        raise RuntimeError("limiter failed")

    with pytest.raises(RuntimeError, match="limiter failed"):
        play(
            ProgramRenderer(tone_program(0.1), RATE),
            WavSink(tmp_path / "x.wav"),
            processors=[broken],
        )
    assert list(tmp_path.iterdir()) == []


def test_plays_into_a_null_sink_and_a_wav(tmp_path: Path) -> None:
    null = NullSink()
    assert play(ProgramRenderer(tone_program(0.2), RATE), null).frames_played == 9600
    assert null.frames_written == 9600
    assert not null.is_open
    wav = WavSink(tmp_path / "tone.wav")
    play(ProgramRenderer(tone_program(0.2), RATE), wav)
    assert (tmp_path / "tone.wav").stat().st_size == 44 + 9600 * 4


def test_gain_ramp_moves_in_a_straight_line() -> None:
    ramp = GainRamp(1.0)
    ones = np.ones((10, 2), np.float32)
    assert ramp.apply(ones) is ones
    ramp.ramp_to(0.0, 4)
    assert ramp.frames_to_target() == 4
    out = ramp.apply(ones[:6])
    np.testing.assert_allclose(out[:, 0], [0.75, 0.5, 0.25, 0.0, 0.0, 0.0])
    assert ramp.value == 0.0
    ramp.ramp_to(1.0, 2)
    np.testing.assert_allclose(ramp.apply(ones[:3])[:, 1], [0.5, 1.0, 1.0])


SESSION_PATH = """
import sys
import numpy as np
import soundfile
import resonera.device.session  # what a session imports: player, renderer, sinks, safety chain
from resonera.common.program import BackgroundLayer, BinauralLayer, NoiseLayer, Program, Step
from resonera.engine.audio.player import play
from resonera.engine.audio.sinks import NullSink
from resonera.engine.audio.synth import ProgramRenderer

path = sys.argv[1]
soundfile.write(path, np.zeros((4800, 2), np.float32), 48000)  # the rate it plays at: no resampling
layers = [
    NoiseLayer(colour="pink", gain=0.3),
    BinauralLayer(carrier_hz=200.0, beat_hz=10.0, gain=0.3),
    BackgroundLayer(path=path, gain=0.2),
]
program = Program(name="p", fade_in_s=0.1, fade_out_s=0.1, steps=[Step(duration_s=2.0, layers=layers)])
play(ProgramRenderer(program, 48000), NullSink())
print([name for name in ("scipy.signal", "scipy.ndimage") if name in sys.modules])
"""


def test_a_session_loads_no_scipy_signal(tmp_path: Path) -> None:
    """scipy.signal costs a playing device some 75 MB: only a background file that needs
    resampling imports it (lazily)."""
    done = subprocess.run(
        [sys.executable, "-c", SESSION_PATH, str(tmp_path / "bed.wav")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_session_is_heard_to_its_last_frame_after_the_chains_look_ahead(tmp_path: Path) -> None:
    """A program without a fade-out ends on a sounding sample: silence pushed through the safety
    chain after the last block brings out what its look-ahead held, so the sink gets the whole
    program (after the look-ahead's silence), not a cut 60 ms before the end: as the chain's onset
    and DC blocker make it, where no limit acts (``pass_through``)."""
    import soundfile

    from resonera.device.audio.chain import session_processors
    from resonera.engine.safety.chain import SafetyChain, pass_through

    abrupt = Program(
        name="abrupt",
        fade_in_s=0.05,
        fade_out_s=0.0,
        steps=[Step(duration_s=0.5, layers=[ToneLayer(frequency_hz=440.0, gain=0.3)])],
    )
    expected = ProgramRenderer(abrupt, 44100).render(round(0.5 * 44100))
    [chain] = session_processors(None, 44100)
    assert isinstance(chain, SafetyChain)
    out = tmp_path / "abrupt.wav"
    result = play(
        ProgramRenderer(abrupt, 44100),
        WavSink(out, sample_format="float"),
        block_frames=1000,
        processors=[chain],
    )
    assert result.outcome == "completed"
    assert result.frames_played == len(expected)  # the program's frames, not the latency's
    written, _ = soundfile.read(str(out), dtype="float32")
    latency = chain.latency_frames
    assert len(written) == len(expected) + latency
    assert not written[:latency].any()
    made = pass_through(expected, 44100)
    np.testing.assert_allclose(written[latency:], made, atol=1e-6)
    last = np.abs(made[-1]).max()
    assert last > 0.005 and np.abs(written[-1]).max() == pytest.approx(last, abs=1e-6)  # sounding


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_sample_mutes_the_session_through_the_safety_chain(
    tmp_path: Path, bad: float
) -> None:
    """Something upstream of the chain goes wrong (no program can make NaN or infinity): the chain
    mutes for good and the session ends as a fault saying why; the file holds only finite samples
    from before, within the chain's peak ceiling."""
    import soundfile

    from resonera.device.audio.chain import session_processors
    from resonera.engine.safety.chain import NON_FINITE_FAULT, SafetyChain

    calls = 0

    def corrupt_third_block(block: NDArray[np.float32]) -> NDArray[np.float32]:
        nonlocal calls
        calls += 1
        if calls == 3:
            block = block.copy()
            block[200, 1] = bad
        return block

    [chain] = session_processors(None, 44100)
    assert isinstance(chain, SafetyChain)
    out = tmp_path / "corrupt.wav"
    result = play(
        ProgramRenderer(tone_program(2.0), 44100),
        WavSink(out, sample_format="float"),
        block_frames=4096,
        processors=[corrupt_third_block, chain],
    )
    assert (result.outcome, result.reason) == ("fault", NON_FINITE_FAULT)
    assert chain.fault == NON_FINITE_FAULT
    written, _ = soundfile.read(str(out), dtype="float32")
    assert len(written) <= 3 * 4096  # nothing after the block that held it
    assert np.isfinite(written).all()
    assert np.abs(written).max() <= chain.limiter.ceiling
    assert not written[2 * 4096 :].any()  # the block that held it came out silent
    # muted for good: whatever comes next is silence
    assert not chain(np.full((512, 2), 0.2, np.float32)).any()
