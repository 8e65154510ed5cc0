"""Where rendered audio goes: a sound card through PyAudio, a WAV file, or nowhere (counted).

Every sink follows ``AudioSink``: ``open(sample_rate, channels)``, then ``write(block)`` any
number of times (float32 blocks of shape ``(frames, channels)``; ``write`` blocks until the sink
has accepted the block), then ``close()``. Used as a context manager (``with sink: ...`` after
``open``), leaving the ``with`` on an exception discards what it can (a WAV that was being written
is removed). ``close`` is idempotent and a closed sink MAY be opened again.

PyAudio is imported only when a sound card is used: the server renders WAV previews without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import wave
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Protocol, Self, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from resonera.common.errors import ResoneraError

__all__ = [
    "AudioDeviceError",
    "AudioSink",
    "NullSink",
    "PyAudioSink",
    "SinkKind",
    "WavSink",
    "find_output_device",
    "open_default_sink",
]

log = logging.getLogger(__name__)

SinkKind = Literal["pyaudio", "wav", "null"]
#: Output devices tried first, in order, by exact name (PortAudio's ALSA host API lists them).
PREFERRED_DEVICES = ("pulse", "default")


class AudioDeviceError(ResoneraError):
    """An audio output cannot be opened or written (no card, busy, unplugged, disk full)."""


@runtime_checkable
class AudioSink(Protocol):
    kind: SinkKind

    def open(self, sample_rate: int, channels: int) -> None: ...

    def write(self, block: NDArray[np.float32]) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class _Sink:
    """Shared bookkeeping: the open format, block checks and the context-manager protocol."""

    kind: SinkKind

    def __init__(self) -> None:
        self.sample_rate = 0
        self.channels = 0
        self.frames_written = 0
        self._open = False

    @property
    def is_open(self) -> bool:
        return self._open

    def _start(self, sample_rate: int, channels: int) -> None:
        if self._open:
            raise RuntimeError(f"{self.kind} sink is already open")
        if sample_rate <= 0 or channels <= 0:
            raise ValueError("sample_rate and channels must be positive")
        self.sample_rate, self.channels, self.frames_written = sample_rate, channels, 0

    def _checked(self, block: NDArray[np.float32]) -> NDArray[np.float32]:
        if not self._open:
            raise RuntimeError(f"{self.kind} sink is not open")
        if block.ndim != 2 or block.shape[1] != self.channels:
            raise ValueError(
                f"expected a block of shape (frames, {self.channels}), got {block.shape}"
            )
        return np.ascontiguousarray(block, dtype=np.float32)

    def close(self) -> None:
        self._open = False

    def _discard(self) -> None:
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:
            self._discard()


class NullSink(_Sink):
    """Accepts and forgets every block, counting frames (``frames_written``). Never blocks."""

    kind: SinkKind = "null"

    def open(self, sample_rate: int, channels: int) -> None:
        self._start(sample_rate, channels)
        self._open = True

    def write(self, block: NDArray[np.float32]) -> None:
        self.frames_written += len(self._checked(block))


class WavSink(_Sink):
    """16-bit PCM WAV, written to a temporary file beside ``path`` and renamed onto it by ``close``.

    Samples are clipped to [-1, 1] and quantised with TPDF dither (±1 LSB, from a generator seeded
    with ``seed`` so a render is reproducible) or, with ``dither=False``, plain rounding. Nothing at
    ``path`` is ever half-written: an error, or leaving a ``with`` on an exception, removes the
    temporary file.
    """

    kind: SinkKind = "wav"

    def __init__(self, path: Path | str, *, dither: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.path = Path(path)
        self.dither = dither
        self.seed = seed
        self._file: IO[bytes] | None = None
        self._wave: wave.Wave_write | None = None
        self._rng = np.random.default_rng(seed)

    @property
    def temp_path(self) -> Path | None:
        return Path(self._file.name) if self._file is not None else None

    def open(self, sample_rate: int, channels: int) -> None:
        self._start(sample_rate, channels)
        self._rng = np.random.default_rng(self.seed)
        try:
            # Both stay open across writes: close() finishes them and renames the file.
            self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115
                dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp", delete=False
            )
            self._wave = wave.open(self._file, "wb")  # noqa: SIM115
            self._wave.setnchannels(channels)
            self._wave.setsampwidth(2)
            self._wave.setframerate(sample_rate)
        except OSError as exc:
            self._discard()
            raise AudioDeviceError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._open = True

    def write(self, block: NDArray[np.float32]) -> None:
        data = self._checked(block)
        scaled = np.clip(data.astype(np.float64), -1.0, 1.0) * 32767.0
        if self.dither:
            scaled += self._rng.random(scaled.shape) - self._rng.random(scaled.shape)
        pcm = np.clip(np.rint(scaled), -32768, 32767).astype("<i2")
        assert self._wave is not None
        try:
            self._wave.writeframes(pcm.tobytes())
        except OSError as exc:
            self._discard()
            raise AudioDeviceError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self.frames_written += len(pcm)

    def close(self) -> None:
        """Finish the header, flush to disk and rename onto ``path``. Idempotent."""
        if self._file is None:
            self._open = False
            return
        try:
            if self._wave is not None:
                self._wave.close()  # writes the final sizes into the header
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._file.name, self.path)
        except OSError as exc:
            self._discard()
            raise AudioDeviceError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._file = self._wave = None
        self._open = False

    def _discard(self) -> None:
        """Drop the temporary file; nothing appears at ``path``."""
        file, self._file, self._wave = self._file, None, None
        self._open = False
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(file.name)


def _pyaudio() -> Any:
    try:
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


class PyAudioSink(_Sink):
    """A blocking PortAudio float32 output stream (``write`` returns when PortAudio took the block).

    ``output_device`` is a PortAudio index, a name or part of one (``"pulse"``), or None for the
    system's default output. Opening errors raise ``AudioDeviceError`` with a one-line message.
    """

    kind: SinkKind = "pyaudio"

    def __init__(
        self, output_device: int | str | None = None, frames_per_buffer: int = 1024
    ) -> None:
        super().__init__()
        self.output_device = output_device
        self.frames_per_buffer = frames_per_buffer
        self.device_index: int | None = None
        self.device_name: str | None = None
        self._pa: Any = None
        self._stream: Any = None

    def open(self, sample_rate: int, channels: int) -> None:
        self._start(sample_rate, channels)
        pyaudio = _pyaudio()
        try:
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

    def write(self, block: NDArray[np.float32]) -> None:
        data = self._checked(block)
        try:
            self._stream.write(data.tobytes(), num_frames=len(data))
        except OSError as exc:
            self._release()
            raise AudioDeviceError(
                f"audio output {self.device_name} failed: {_reason(exc)}"
            ) from exc
        self.frames_written += len(data)

    def close(self) -> None:
        """Let PortAudio play out what it holds, then release the device. Idempotent."""
        if self._stream is not None:
            with contextlib.suppress(OSError):
                self._stream.stop_stream()
        self._release()

    def _discard(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(OSError):
                self._stream.abort_stream()  # drop buffered audio instead of playing it out
        self._release()

    def _release(self) -> None:
        stream, pa, self._stream, self._pa = self._stream, self._pa, None, None
        self._open = False
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
        if pa is not None:
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
