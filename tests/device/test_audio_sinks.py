from __future__ import annotations

import io
import logging
import math
import os
import stat
import subprocess
import threading
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from numpy.typing import NDArray
from support import real_clock_env, require_tool, wait_until

from resonera.common.program import BinauralLayer, NoiseLayer, Program, Step, ToneLayer
from resonera.engine.audio import sinks
from resonera.engine.audio.player import play
from resonera.engine.audio.sinks import (
    AudioDeviceError,
    AudioSink,
    NullSink,
    PyAudioSink,
    WavFormat,
    WavSink,
    find_output_device,
    open_default_sink,
)
from resonera.engine.audio.synth import ProgramRenderer

RATE = 48000


def sine_block(frames: int, amplitude: float = 0.5) -> NDArray[np.float32]:
    wave_ = amplitude * np.sin(2 * np.pi * 440.0 * np.arange(frames) / RATE)
    return np.stack([wave_, -wave_], axis=1).astype(np.float32)


# --- WAV and null sinks -------------------------------------------------------------------------


@pytest.mark.parametrize("dither", [True, False])
def test_wav_sink_writes_a_readable_wav_and_leaves_no_temp(tmp_path: Path, dither: bool) -> None:
    target = tmp_path / "out.wav"
    sink = WavSink(target, dither=dither)
    assert isinstance(sink, AudioSink)
    assert sink.kind == "wav"
    block = sine_block(RATE)
    sink.open(RATE, 2)
    with sink:
        assert sink.temp_path is not None
        assert sink.temp_path.parent == tmp_path
        assert not target.exists()  # nothing at the final name until close
        for start in range(0, RATE, 1000):
            sink.write(block[start : start + 1000])
    assert list(tmp_path.iterdir()) == [target]
    umask = os.umask(0o022)
    os.umask(umask)
    # readable as any file the user makes (the private temporary file's 0600 is not kept)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    with wave.open(str(target), "rb") as wav:
        assert wav.getnchannels() == 2
        assert wav.getframerate() == RATE
        assert wav.getsampwidth() == 2
        assert wav.getnframes() == RATE
        pcm = np.frombuffer(wav.readframes(RATE), "<i2").reshape(-1, 2)
    error = np.abs(pcm / 32767.0 - block)
    assert error.max() <= (1.5 if dither else 0.5) / 32767 + 1e-9


def test_wav_sink_is_reproducible_with_dither(tmp_path: Path) -> None:
    for name in ("a.wav", "b.wav"):
        sink = WavSink(tmp_path / name)
        sink.open(RATE, 2)
        with sink:
            sink.write(sine_block(2000))
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()


def test_wav_sink_clips_instead_of_wrapping(tmp_path: Path) -> None:
    sink = WavSink(tmp_path / "loud.wav", dither=False)
    sink.open(RATE, 1)
    with sink:
        sink.write(np.array([[2.0], [-2.0], [1.0], [-1.0]], np.float32))
    with wave.open(str(tmp_path / "loud.wav"), "rb") as wav:
        assert np.frombuffer(wav.readframes(4), "<i2").tolist() == [32767, -32767, 32767, -32767]


def test_wav_sink_leaves_nothing_when_an_error_interrupts(tmp_path: Path) -> None:
    sink = WavSink(tmp_path / "out.wav")
    sink.open(RATE, 2)
    with pytest.raises(RuntimeError, match="interrupted"), sink:
        sink.write(sine_block(4800))
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    assert not sink.is_open


def test_wav_sink_leaves_nothing_after_a_bad_block(tmp_path: Path) -> None:
    sink = WavSink(tmp_path / "out.wav")
    sink.open(RATE, 2)
    with pytest.raises(ValueError, match="shape"), sink:
        sink.write(np.zeros((10, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_wav_sink_in_a_missing_folder_is_a_one_line_error(tmp_path: Path) -> None:
    sink = WavSink(tmp_path / "missing" / "out.wav")
    with pytest.raises(AudioDeviceError, match="cannot write") as caught:
        sink.open(RATE, 2)
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_wav_sink_can_be_reopened_and_close_is_idempotent(tmp_path: Path) -> None:
    sink = WavSink(tmp_path / "out.wav")
    for frames in (100, 200):
        sink.open(RATE, 2)
        sink.write(sine_block(frames))
        sink.close()
        sink.close()
        with wave.open(str(tmp_path / "out.wav"), "rb") as wav:
            assert wav.getnframes() == frames
    assert list(tmp_path.iterdir()) == [tmp_path / "out.wav"]


def test_null_sink_counts_frames_and_checks_blocks() -> None:
    sink = NullSink()
    assert isinstance(sink, AudioSink)
    with pytest.raises(RuntimeError, match="not open"):
        sink.write(sine_block(10))
    sink.open(RATE, 2)
    with sink:
        sink.write(sine_block(100))
        sink.write(sine_block(28))
        with pytest.raises(ValueError, match="shape"):
            sink.write(np.zeros(10, np.float32))
    assert sink.frames_written == 128
    assert not sink.is_open


# --- PyAudio device choice (no sound server needed) ---------------------------------------------


def test_pyaudio_sink_with_an_unknown_name_is_a_one_line_error() -> None:
    sink = PyAudioSink("no-such-output-device")
    with pytest.raises(AudioDeviceError, match="no-such-output-device") as caught:
        sink.open(RATE, 2)
    assert "\n" not in str(caught.value)
    assert not sink.is_open


def test_pyaudio_sink_with_a_bad_index_is_a_one_line_error() -> None:
    with pytest.raises(AudioDeviceError, match="cannot open audio output 9999") as caught:
        PyAudioSink(9999).open(RATE, 2)
    assert "\n" not in str(caught.value)


def test_open_default_sink_falls_back_to_wav_without_a_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sinks, "find_output_device", lambda: None)
    with caplog.at_level(logging.INFO, logger=sinks.__name__):
        sink = open_default_sink(tmp_path / "fallback.wav")
    assert isinstance(sink, WavSink)
    assert sink.path == tmp_path / "fallback.wav"
    assert "no audio output device" in caplog.text


def test_open_default_sink_falls_back_to_wav_when_the_device_does_not_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=sinks.__name__):
        sink = open_default_sink(tmp_path / "fallback.wav", output_device="no-such-output-device")
    assert sink.kind == "wav"
    assert "writing audio to" in caplog.text


# --- Real audio through PulseAudio --------------------------------------------------------------


class Recorder:
    """``parec`` from a sink's monitor into memory, as stereo float32 at 48 kHz."""

    def __init__(self, sink_name: str) -> None:
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._process = subprocess.Popen(
            [
                require_tool("parec"),
                "-d",
                f"{sink_name}.monitor",
                "--raw",
                "--format=float32le",
                "--channels=2",
                f"--rate={RATE}",
                "--latency-msec=20",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=real_clock_env(),  # a recorder needs no date, and faketime stalls its timers
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        stdout = self._process.stdout
        assert isinstance(stdout, io.BufferedReader)
        while chunk := stdout.read1(65536):
            with self._lock:
                self._chunks.append(chunk)

    def samples(self) -> NDArray[np.float32]:
        with self._lock:
            data = b"".join(self._chunks)
        usable = len(data) - len(data) % 8
        return np.frombuffer(data[:usable], "<f4").reshape(-1, 2)

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)
        self._thread.join(timeout=10)


def _sounding(audio: NDArray[np.floating]) -> NDArray[np.intp]:
    return np.flatnonzero(np.abs(audio).max(axis=1) > 1e-3)


def _played_and_ended(recorder: Recorder, frames: int) -> bool:
    """The recording holds the whole program and then at least 0.2 s of silence."""
    audio = recorder.samples()
    loud = _sounding(audio)
    if len(loud) == 0:
        return False
    return bool(loud[-1] - loud[0] >= frames * 0.9 and len(audio) - loud[-1] > 0.2 * RATE)


def record_program(sink_name: str, program: Program) -> NDArray[np.float64]:
    """Play ``program`` through PyAudio into the null sink; the steady middle of what came back."""
    recorder = Recorder(sink_name)
    try:
        wait_until(lambda: len(recorder.samples()) > 0, what="parec to deliver audio")
        renderer = ProgramRenderer(program, RATE)
        result = play(renderer, PyAudioSink("pulse"), block_frames=1024)
        assert result.outcome == "completed"
        wait_until(
            lambda: _played_and_ended(recorder, renderer.total_frames),
            timeout=30,
            what="the program to come back from the null sink's monitor",
        )
    finally:
        recorder.stop()
    audio = recorder.samples().astype(np.float64)
    loud = _sounding(audio)
    margin = int(0.3 * RATE)  # well clear of the fades
    return audio[loud[0] + margin : loud[-1] - margin]


def dominant_hz(signal: NDArray[np.float64]) -> float:
    size = 1 << 21
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal)), n=size))
    k = int(np.argmax(spectrum[1:])) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2])
    return float((k + 0.5 * (a - c) / (a - 2 * b + c)) * RATE / size)


def rms_db(signal: NDArray[np.float64]) -> float:
    return 20 * math.log10(math.sqrt(float(np.mean(signal**2))))


def test_find_output_device_sees_pulse(pulse_null_sink: str) -> None:
    index = find_output_device()
    assert index is not None
    sink = PyAudioSink(index)
    sink.open(RATE, 2)
    with sink:
        assert sink.device_name == "pulse"
        sink.write(np.zeros((256, 2), np.float32))


def test_open_default_sink_chooses_pyaudio_when_pulse_runs(
    pulse_null_sink: str, tmp_path: Path
) -> None:
    sink = open_default_sink(tmp_path / "fallback.wav")
    assert sink.kind == "pyaudio"
    assert list(tmp_path.iterdir()) == []


def test_a_1khz_tone_comes_back_from_pulseaudio_at_its_frequency_and_level(
    pulse_null_sink: str,
) -> None:
    gain = 0.5
    program = Program(
        name="1 kHz",
        fade_in_s=0.1,
        fade_out_s=0.1,
        steps=[Step(duration_s=1.5, layers=[ToneLayer(frequency_hz=1000.0, gain=gain)])],
    )
    steady = record_program(pulse_null_sink, program)
    assert len(steady) > 0.7 * RATE
    expected_db = 20 * math.log10(gain * math.cos(math.pi / 4) / math.sqrt(2))  # centred: −3 dB
    for channel in (0, 1):
        assert dominant_hz(steady[:, channel]) == pytest.approx(1000.0, abs=2.0)
        assert rms_db(steady[:, channel]) == pytest.approx(expected_db, abs=0.5)


def test_a_binaural_program_comes_back_with_its_two_ear_frequencies(pulse_null_sink: str) -> None:
    gain = 0.4
    program = Program(
        name="binaural",
        fade_in_s=0.1,
        fade_out_s=0.1,
        steps=[
            Step(
                duration_s=1.5,
                layers=[BinauralLayer(carrier_hz=400.0, beat_hz=10.0, gain=gain)],
            )
        ],
    )
    steady = record_program(pulse_null_sink, program)
    assert dominant_hz(steady[:, 0]) == pytest.approx(395.0, abs=2.0)
    assert dominant_hz(steady[:, 1]) == pytest.approx(405.0, abs=2.0)
    for channel in (0, 1):
        assert rms_db(steady[:, channel]) == pytest.approx(
            20 * math.log10(gain / math.sqrt(2)), abs=0.5
        )


# --- WAV formats --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample_format", "subtype", "tolerance"),
    [("16", "PCM_16", 1.5 / 32767), ("24", "PCM_24", 1.5 / 8388607), ("float", "FLOAT", 1e-9)],
)
def test_wav_sink_writes_16_bit_24_bit_and_float(
    tmp_path: Path, sample_format: WavFormat, subtype: str, tolerance: float
) -> None:
    target = tmp_path / f"{sample_format}.wav"
    sink = WavSink(target, sample_format=sample_format)
    block = sine_block(RATE, amplitude=0.7)
    sink.open(RATE, 2)
    with sink:
        for start in range(0, RATE, 777):
            sink.write(block[start : start + 777])
    info = soundfile.info(str(target))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (RATE, 2, RATE, subtype)
    data, _ = soundfile.read(str(target), dtype="float64")
    full = {"16": 32767, "24": 8388607}.get(sample_format)
    scale = (32768 if sample_format == "16" else 8388608) / full if full else 1.0
    assert np.abs(data * scale - block).max() <= tolerance + 1e-7


# --- PyAudio callback mode (driven without a sound server) --------------------------------------


class FakeStream:
    def __init__(self, callback: Any) -> None:
        self.callback = callback
        self.active = False
        self.alive = True
        self.calls: list[str] = []

    def start_stream(self) -> None:
        self.calls.append("start")
        self.active = True

    def is_active(self) -> bool:
        return self.active and self.alive

    def stop_stream(self) -> None:
        self.calls.append("stop")
        self.active = False

    def close(self) -> None:
        self.calls.append("close")

    def pull(self, frames: int) -> NDArray[np.float32]:
        data, flag = self.callback(None, frames, {}, 0)
        assert flag == 0
        return np.frombuffer(data, "<f4").reshape(-1, 2)


def test_the_fake_stream_has_only_what_pyaudios_stream_has() -> None:
    """The fake stands in for PyAudio's ``Stream``: a method PyAudio does not have (an
    ``abort_stream`` once) must fail here, not pass against the fake and break on a device."""
    import pyaudio  # the device's dependency; imported by the sink only when it plays

    fake = {name for name in vars(FakeStream) if not name.startswith("_")} - {"pull"}
    real = {name for name in dir(pyaudio.Stream) if not name.startswith("_")}
    assert fake <= real, fake - real


class FakePyAudio:
    """Stands in for the ``pyaudio`` module: one output named ``fake``; keeps the stream opened."""

    paFloat32 = 1  # noqa: N815 - pyaudio's names
    paContinue = 0  # noqa: N815
    stream: FakeStream | None = None

    def PyAudio(self) -> FakePyAudio:  # noqa: N802 - mirrors pyaudio.PyAudio
        return self

    def get_device_count(self) -> int:
        return 1

    def get_device_info_by_index(self, index: int) -> dict[str, Any]:
        return {"index": 0, "name": "fake", "maxOutputChannels": 2}

    def get_default_output_device_info(self) -> dict[str, Any]:
        return self.get_device_info_by_index(0)

    def open(self, **kwargs: Any) -> FakeStream:
        assert kwargs["start"] is False
        FakePyAudio.stream = FakeStream(kwargs["stream_callback"])
        return FakePyAudio.stream

    def terminate(self) -> None:
        pass


@pytest.fixture
def fake_pyaudio(monkeypatch: pytest.MonkeyPatch) -> FakePyAudio:
    fake = FakePyAudio()
    monkeypatch.setattr(sinks, "_pyaudio", lambda: fake)
    return fake


def test_callback_takes_queued_blocks_and_plays_counted_silence_when_short(
    fake_pyaudio: FakePyAudio,
) -> None:
    sink = PyAudioSink("fake", queue_blocks=3, frames_per_buffer=256)
    sink.open(RATE, 2)
    stream = FakePyAudio.stream
    assert stream is not None
    block = sine_block(300)
    sink.write(block[:100])
    sink.write(block[100:300])
    assert stream.calls == []  # not started before the queue is full
    sink.write(block[:50])
    assert stream.calls == ["start"]
    # One callback spans the blocks' edges exactly.
    np.testing.assert_array_equal(stream.pull(250), block[:250])
    np.testing.assert_array_equal(stream.pull(50), block[250:300])
    assert sink.underruns == 0
    # 50 frames left, 128 asked for: those 50, then silence, counted.
    out = stream.pull(128)
    np.testing.assert_array_equal(out[:50], block[:50])
    assert not out[50:].any()
    assert (sink.underruns, sink.underrun_frames) == (1, 78)
    sink.close()
    assert stream.calls[-2:] == ["stop", "close"]
    assert sink.frames_played == 350


def test_close_plays_out_the_queue_and_silence_then_is_no_underrun(
    fake_pyaudio: FakePyAudio,
) -> None:
    sink = PyAudioSink("fake", queue_blocks=4)
    sink.open(RATE, 2)
    sink.write(sine_block(100))
    stream = FakePyAudio.stream
    assert stream is not None
    consumer = threading.Thread(target=lambda: [stream.pull(64) for _ in range(3)])
    # close() starts the stream and waits until the callback took everything.
    closer = threading.Thread(target=sink.close)
    closer.start()
    wait_until(lambda: "start" in stream.calls, what="the stream to start")
    consumer.start()
    consumer.join(timeout=10)
    closer.join(timeout=10)
    assert not closer.is_alive()
    assert sink.underruns == 0


def test_a_device_that_disappears_ends_the_session_as_a_fault(fake_pyaudio: FakePyAudio) -> None:
    prog = Program(
        name="t",
        fade_in_s=0.0,
        fade_out_s=0.0,
        steps=[Step(duration_s=2.0, layers=[ToneLayer(frequency_hz=440.0, gain=0.5)])],
    )
    sink = PyAudioSink("fake", queue_blocks=2, stall_timeout_s=5.0)
    writes = 0
    real_write = sink.write

    def write(block: NDArray[np.float32]) -> None:
        nonlocal writes
        writes += 1
        if writes == 3 and FakePyAudio.stream is not None:
            FakePyAudio.stream.alive = False  # unplugged
        real_write(block)

    sink.write = write  # type: ignore[method-assign]
    result = play(ProgramRenderer(prog, RATE), sink, block_frames=1024)
    assert result.outcome == "fault"
    assert result.reason is not None
    assert "audio output failed" in result.reason and "fake was lost" in result.reason
    assert result.frames_played == 2048
    # closed at once, not stopped (a stop would play out what the stream still buffers)
    assert FakePyAudio.stream is not None and FakePyAudio.stream.calls[-1] == "close"
    assert "stop" not in FakePyAudio.stream.calls
    assert not sink.is_open


def test_a_device_that_stops_taking_audio_is_lost_after_the_stall_timeout(
    fake_pyaudio: FakePyAudio,
) -> None:
    sink = PyAudioSink("fake", queue_blocks=1, stall_timeout_s=0.05)
    sink.open(RATE, 2)
    sink.write(sine_block(64))  # fills the queue: the stream starts, and never pulls
    with pytest.raises(AudioDeviceError, match=r"took no audio for 0\.05 s"):
        sink.write(sine_block(64))
    assert not sink.is_open


def test_a_noise_and_binaural_program_comes_back_with_its_ears_and_level(
    pulse_null_sink: str,
) -> None:
    beat_gain, noise_gain = 0.3, 0.5
    program = Program(
        name="noise+binaural",
        fade_in_s=0.1,
        fade_out_s=0.1,
        steps=[
            Step(
                duration_s=2.0,
                layers=[
                    NoiseLayer(colour="pink", gain=noise_gain),
                    BinauralLayer(carrier_hz=300.0, beat_hz=10.0, gain=beat_gain),
                ],
            )
        ],
    )
    steady = record_program(pulse_null_sink, program)
    assert dominant_hz(steady[:, 0]) == pytest.approx(295.0, abs=2.0)
    assert dominant_hz(steady[:, 1]) == pytest.approx(305.0, abs=2.0)
    expected = math.sqrt(beat_gain**2 / 2 + (0.2 * noise_gain) ** 2)
    for channel in (0, 1):
        assert rms_db(steady[:, channel]) == pytest.approx(20 * math.log10(expected), abs=0.5)


@pytest.mark.parametrize("sample_format", ["16", "24", "float"])
def test_wav_bytes_do_not_depend_on_block_sizes_or_the_writer_thread(
    tmp_path: Path, sample_format: WavFormat
) -> None:
    # 300,000 stereo frames: more than one writer chunk (1 MiB) in every format, and the dither
    # table (65,537 frames) cycles several times, across block edges.
    signal = sine_block(300_000, amplitude=0.7)
    writers = {"fg-999": (False, 999), "bg-999": (True, 999), "bg-whole": (True, 300_000)}
    writers["fg-prime"] = (False, 65_537)
    for name, (background, block) in writers.items():
        sink = WavSink(
            tmp_path / f"{name}.wav",
            sample_format=sample_format,
            background=background,
            durable=False,
        )
        sink.open(RATE, 2)
        with sink:
            for start in range(0, len(signal), block):
                sink.write(signal[start : start + block])
    first = (tmp_path / "fg-999.wav").read_bytes()
    for name in writers:
        assert (tmp_path / f"{name}.wav").read_bytes() == first, name
    if sample_format == "float":
        decoded, rate = soundfile.read(str(tmp_path / "bg-whole.wav"), dtype="float32")
        assert rate == RATE and np.array_equal(decoded, signal)
        return
    # soundfile reads PCM left-aligned in int32; our full scale is 32767 (8388607) steps.
    pcm, rate = soundfile.read(str(tmp_path / "bg-whole.wav"), dtype="int32")
    steps = 32767 if sample_format == "16" else 8388607
    shift = 16 if sample_format == "16" else 8
    assert rate == RATE and pcm.shape == signal.shape
    error = np.abs((pcm >> shift) / steps - signal)
    assert error.max() <= 1.5 / steps + 1e-7  # TPDF dither: within 1.5 LSB


def test_background_wav_writer_errors_surface_and_leave_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = WavSink(tmp_path / "out.wav", background=True)

    def full(_data: NDArray[np.float32]) -> None:
        raise AudioDeviceError("cannot write out.wav: No space left on device")

    monkeypatch.setattr(sink, "_store", full)
    sink.open(RATE, 2)
    sink.write(sine_block(100))
    with pytest.raises(AudioDeviceError, match="No space left"):
        sink.close()
    assert list(tmp_path.iterdir()) == []
