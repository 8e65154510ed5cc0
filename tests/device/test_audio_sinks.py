from __future__ import annotations

import io
import logging
import math
import subprocess
import threading
import wave
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from support import require_tool, wait_until

from resonera.common.program import BinauralLayer, Program, Step, ToneLayer
from resonera.device.audio import sinks
from resonera.device.audio.player import play
from resonera.device.audio.sinks import (
    AudioDeviceError,
    AudioSink,
    NullSink,
    PyAudioSink,
    WavSink,
    find_output_device,
    open_default_sink,
)
from resonera.device.audio.synth import ProgramRenderer

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
