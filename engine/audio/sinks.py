"""Where rendered audio goes: a sound card through PyAudio, a WAV file, or nowhere (counted).

Every sink follows ``AudioSink`` (``sink_base.py``, with the null sink); the WAV file sink is
``wav_sink.py``. This module is the sound card: ``PyAudioSink`` (PortAudio in callback mode),
finding an output (``find_output_device``) and choosing between the card and a WAV file
(``open_default_sink``). Every sink's name is importable from here.

PyAudio is imported only when a sound card is used: the server renders WAV previews without it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from resonera.engine.audio.native_stderr import quiet_native_stderr
from resonera.engine.audio.sink_base import (
    AudioDeviceError,
    AudioSink,
    BaseSink,
    NullSink,
    SinkKind,
)
from resonera.engine.audio.wav_sink import WavFormat, WavSink

__all__ = [
    "AudioDeviceError",
    "AudioSink",
    "NullSink",
    "PyAudioSink",
    "SinkKind",
    "WavFormat",
    "WavSink",
    "find_output_device",
    "open_default_sink",
]

log = logging.getLogger(__name__)

#: Output devices tried first, in order, by exact name (PortAudio's ALSA host API lists them).
PREFERRED_DEVICES = ("pulse", "default")


def _pyaudio() -> Any:
    try:
        # Here, not at the top: PyAudio is in the device extra only (the server's previews import
        # this module for WavSink without it installed), and a render never needs it.
        import pyaudio
    except ImportError as exc:  # pragma: no cover - the device extra installs it
        raise AudioDeviceError("PyAudio is not installed (pip install 'resonera[device]')") from exc
    return pyaudio


def _output_devices(pa: Any) -> list[tuple[int, str]]:
    devices = []
    for index in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(index)
        if int(info.get("maxOutputChannels", 0)) > 0:
            devices.append((index, str(info.get("name", ""))))
    return devices


def _resolve_device(pa: Any, wanted: int | str | None) -> int | None:
    """PortAudio index for ``wanted`` (index, exact name or name substring); None: the default."""
    if wanted is None or isinstance(wanted, int):
        return wanted
    outputs = _output_devices(pa)
    for matches in (
        lambda name: name == wanted,
        lambda name: wanted.casefold() in name.casefold(),
    ):
        for index, name in outputs:
            if matches(name):
                return index
    names = ", ".join(repr(name) for _, name in outputs) or "none"
    raise AudioDeviceError(f"no audio output named like {wanted!r} (outputs: {names})")


class PyAudioSink(BaseSink):
    """A PortAudio float32 output in callback mode, fed through a bounded queue.

    ``write`` (the synthesis thread) converts the block to bytes and appends it to a bounded
    ``deque`` of ``queue_blocks`` blocks (the added latency: what is queued plays before a later
    block, a fault ramp included, so keep it small), waiting (polling every few ms, never holding a lock)
    while the queue is full. PortAudio's callback only pops ready blocks from the deque (an
    atomic operation in CPython: no lock is shared with slow code), copies them into its buffer,
    and plays silence for what is missing rather than wait: each callback that had to do so is an
    underrun (``underruns``, ``underrun_frames``). The stream starts once the queue is full (or at
    ``close``), so the start itself is not an underrun; ``close`` lets the queue play out first.

    A device that disappears (the stream stops, or takes no audio for ``stall_timeout_s``) makes
    ``write`` raise ``AudioDeviceError``; the player turns that into a ``fault`` with the reason.
    ``output_device`` is a PortAudio index, a name or part of one (``"pulse"``), or None for the
    system's default output. Opening errors raise ``AudioDeviceError`` with a one-line message.
    """

    kind: SinkKind = "pyaudio"

    def __init__(
        self,
        output_device: int | str | None = None,
        frames_per_buffer: int = 1024,
        *,
        queue_blocks: int = 4,
        stall_timeout_s: float = 2.0,
    ) -> None:
        super().__init__()
        if queue_blocks < 1:
            raise ValueError("queue_blocks must be ≥ 1")
        self.output_device = output_device
        self.frames_per_buffer = frames_per_buffer
        self.queue_blocks = queue_blocks
        self.stall_timeout_s = stall_timeout_s
        self.device_index: int | None = None
        self.device_name: str | None = None
        self.underruns = 0
        self.underrun_frames = 0
        self.frames_played = 0
        self._pa: Any = None
        self._stream: Any = None
        self._continue = 0
        self._queue: deque[bytes] = deque()
        self._current = b""
        self._offset = 0
        self._started = False
        self._closing = False
        self._last_callback = 0.0
        self._frame_bytes = 0

    def open(self, sample_rate: int, channels: int) -> None:
        self._start(sample_rate, channels)
        pyaudio = _pyaudio()
        self._queue.clear()
        self._current, self._offset = b"", 0
        self._started = self._closing = False
        self.underruns = self.underrun_frames = self.frames_played = 0
        self._frame_bytes = 4 * channels
        self._continue = pyaudio.paContinue
        try:
            with quiet_native_stderr():
                self._pa = pyaudio.PyAudio()
                index = _resolve_device(self._pa, self.output_device)
                info = (
                    self._pa.get_default_output_device_info()
                    if index is None
                    else self._pa.get_device_info_by_index(index)
                )
                self.device_index, self.device_name = int(info["index"]), str(info["name"])
                self._stream = self._pa.open(
                    format=pyaudio.paFloat32,
                    channels=channels,
                    rate=sample_rate,
                    output=True,
                    output_device_index=self.device_index,
                    frames_per_buffer=self.frames_per_buffer,
                    stream_callback=self._callback,
                    start=False,
                )
        except (OSError, ValueError) as exc:
            self._release()
            where = self.output_device if self.output_device is not None else "default output"
            raise AudioDeviceError(
                f"cannot open audio output {where!s} at {sample_rate} Hz, {channels} channels: "
                f"{_reason(exc)}"
            ) from exc
        except AudioDeviceError:
            self._release()
            raise
        self._open = True

    def _callback(
        self, _in_data: bytes | None, frame_count: int, _time_info: Any, _status: int
    ) -> tuple[bytes, int]:
        """PortAudio's thread: take ready blocks, never wait; silence (counted) when short."""
        self._last_callback = time.monotonic()
        need = frame_count * self._frame_bytes
        current, offset = self._current, self._offset
        if len(current) - offset >= need:  # the common case: one slice of the current block
            self._offset = offset + need
            self.frames_played += frame_count
            return current[offset : offset + need], self._continue
        pieces = [current[offset:]] if offset < len(current) else []
        filled = len(current) - offset if offset < len(current) else 0
        current, offset = b"", 0
        while filled < need:
            try:
                current = self._queue.popleft()
            except IndexError:
                current = b""
                break
            take = min(need - filled, len(current))
            pieces.append(current[:take])
            filled += take
            offset = take
        self._current, self._offset = current, offset
        self.frames_played += filled // self._frame_bytes
        if filled < need:
            if not self._closing:
                self.underruns += 1
                self.underrun_frames += (need - filled) // self._frame_bytes
            pieces.append(bytes(need - filled))
        return b"".join(pieces), self._continue

    def _buffered(self) -> bool:
        return bool(self._queue) or self._offset < len(self._current)

    def _check_alive(self, since: float) -> None:
        """Raise ``AudioDeviceError`` when the started stream stopped or stalled."""
        if not self._started:
            return
        stream_ok = True
        with contextlib.suppress(OSError):
            stream_ok = bool(self._stream.is_active())
        stalled = time.monotonic() - max(self._last_callback, since) > self.stall_timeout_s
        if not stream_ok or stalled:
            why = (
                "the stream stopped"
                if not stream_ok
                else (f"it took no audio for {self.stall_timeout_s:g} s")
            )
            self._discard()
            raise AudioDeviceError(f"audio output {self.device_name} was lost: {why}")

    def _begin(self) -> None:
        if not self._started:
            self._last_callback = time.monotonic()
            try:
                self._stream.start_stream()
            except OSError as exc:
                self._discard()
                raise AudioDeviceError(
                    f"audio output {self.device_name} failed to start: {_reason(exc)}"
                ) from exc
            self._started = True

    def write(self, block: NDArray[np.float32]) -> None:
        data = self._checked(block).tobytes()
        since = time.monotonic()
        poll = max(0.001, min(0.02, self.frames_per_buffer / max(1, self.sample_rate) / 4))
        while len(self._queue) >= self.queue_blocks:
            self._begin()
            self._check_alive(since)
            time.sleep(poll)
        self._queue.append(data)
        self.frames_written += len(block)
        if len(self._queue) >= self.queue_blocks:
            self._begin()

    def close(self) -> None:
        """Play out what is queued, then release the device. Idempotent."""
        if self._stream is not None and self._open:
            self._closing = True
            since = time.monotonic()
            if self._buffered():
                self._begin()
            poll = max(0.001, min(0.02, self.frames_per_buffer / max(1, self.sample_rate) / 4))
            while self._buffered():
                self._check_alive(since)
                time.sleep(poll)
            # Let PortAudio play out its own buffers too.
            with contextlib.suppress(OSError):
                self._stream.stop_stream()
        self._release()

    def _discard(self) -> None:
        # Closing an active stream drops what it still buffers, as aborting it would
        # (Pa_CloseStream); PyAudio's Stream has no abort of its own.
        self._closing = True
        self._release()

    def _release(self) -> None:
        stream, pa, self._stream, self._pa = self._stream, self._pa, None, None
        self._open = False
        self._queue.clear()
        self._current, self._offset = b"", 0
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
        if pa is not None:
            with quiet_native_stderr():  # JACK's client library says goodbye on stderr
                pa.terminate()


def _reason(exc: BaseException) -> str:
    # PyAudio raises OSError(code, text); keep the text, on one line.
    text = exc.args[1] if len(exc.args) == 2 and isinstance(exc.args[1], str) else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def find_output_device() -> int | None:
    """PortAudio index of a usable output: ``pulse``, then ``default``, then the system default.

    None when there is no output at all (no sound card, no sound server) or PyAudio is missing. Each
    call asks PortAudio afresh, so a sound server started since the last call is seen.
    """
    with quiet_native_stderr():
        try:
            pyaudio = _pyaudio()
            pa = pyaudio.PyAudio()
        except (AudioDeviceError, OSError) as exc:
            log.info("no audio output: %s", exc)
            return None
        try:
            outputs = _output_devices(pa)
            for wanted in PREFERRED_DEVICES:
                for index, name in outputs:
                    if name == wanted:
                        return index
            with contextlib.suppress(OSError):
                return int(pa.get_default_output_device_info()["index"])
            return outputs[0][0] if outputs else None
        finally:
            pa.terminate()


def open_default_sink(
    wav_fallback: Path,
    *,
    sample_rate: int = 48000,
    channels: int = 2,
    output_device: int | str | None = None,
) -> AudioSink:
    """A sink to play through: the sound card if one exists and opens, else a WAV file.

    The card is probed by opening (and closing) a stream with ``sample_rate`` and ``channels``; the
    returned sink is not open yet. Which one was chosen, and why, is logged.
    """
    with quiet_native_stderr():  # the probes below: one summary line
        device = output_device if output_device is not None else find_output_device()
        if device is None:
            log.info("no audio output device found; writing audio to %s", wav_fallback)
            return WavSink(wav_fallback)
        sink = PyAudioSink(device)
        try:
            sink.open(sample_rate, channels)
        except AudioDeviceError as exc:
            log.warning("%s; writing audio to %s instead", exc, wav_fallback)
            return WavSink(wav_fallback)
        name = sink.device_name
        sink.close()
        log.info("playing through audio output %r (PortAudio device %s)", name, device)
        return sink
