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
import queue
import struct
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Literal, Protocol, Self, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from resonera.common.errors import ResoneraError
from resonera.engine.audio.native_stderr import quiet_native_stderr

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


WavFormat = Literal["16", "24", "float"]
_WAV_FORMATS: dict[str, tuple[int, int]] = {"16": (1, 2), "24": (1, 3), "float": (3, 4)}
#: TPDF dither values (±1 LSB) are read from a seeded table of this prime length, cycling: at −96 dB
#: (16-bit) a period of 1.4 s is inaudible, and it costs a slice instead of two random draws.
DITHER_TABLE: Final = 65537
MAX_WAV_BYTES: Final = 2**32 - 1024
#: The file's bytes are gathered into chunks of this size: few large writes, each releasing the GIL
#: for its whole length.
BACKGROUND_CHUNK_BYTES: Final = 1 << 20
#: Blocks in flight to the background writer at most (queued, being encoded): a render's memory stays
#: flat, and a slow disk slows ``write`` down instead of growing it.
BACKGROUND_BLOCKS: Final = 3

Bytes = NDArray[np.uint8]


class WavSink(_Sink):
    """A WAV file: 16-bit or 24-bit PCM, or 32-bit float (``sample_format`` "16", "24", "float").

    Written to a temporary file beside ``path`` and renamed onto it by ``close``. PCM samples are
    clipped to [-1, 1] and quantised with TPDF dither (±1 LSB, from a table seeded with ``seed``, so
    a render is reproducible) or, with ``dither=False``, plain rounding; float samples are written
    as they are. Nothing at ``path`` is ever half-written: an error, or leaving a ``with`` on an
    exception, removes the temporary file. ``durable`` (the default) flushes the file to disk
    (``fsync``) before the rename; an export MAY skip that (``durable=False``) and leave it to the
    operating system, as audio tools do.

    Without ``background``, ``write`` encodes the block (into preallocated buffers) and writes it
    to the file. With ``background=True`` (a render) it copies the block into one of at most
    ``BACKGROUND_BLOCKS`` buffers and returns; a writer thread encodes it into chunks of
    ``BACKGROUND_CHUNK_BYTES`` and writes them, on another core than the synthesis and the safety
    chain. A write error then surfaces on a later ``write`` or on ``close``. The bytes written are
    the same either way.
    """

    kind: SinkKind = "wav"

    def __init__(
        self,
        path: Path | str,
        *,
        dither: bool = True,
        seed: int = 0,
        sample_format: WavFormat = "16",
        durable: bool = True,
        background: bool = False,
    ) -> None:
        super().__init__()
        if sample_format not in _WAV_FORMATS:
            raise ValueError(f"sample_format must be one of {', '.join(_WAV_FORMATS)}")
        self.path = Path(path)
        self.dither = dither
        self.seed = seed
        self.sample_format: WavFormat = sample_format
        self.durable = durable
        self.background = background
        self._file: IO[bytes] | None = None
        self._dither_table = np.zeros(0, np.float32)
        self._dither_pos = 0
        self._data_bytes = 0
        self._scaled = np.empty(0, np.float32)  # PCM scaling scratch, grown to the largest block
        self._chunk: Bytes = np.empty(0, np.uint8)  # encoded bytes not yet written
        self._fill = 0
        self._blocks = 0
        # The background writer: copies of blocks go to it through ``_pending`` (None: finish) as
        # (flat buffer, frames), and the buffers come back through ``_free`` to be filled again.
        self._pending: queue.Queue[tuple[NDArray[np.float32], int] | None] | None = None
        self._free: queue.Queue[NDArray[np.float32]] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._error: AudioDeviceError | None = None

    @property
    def temp_path(self) -> Path | None:
        return Path(self._file.name) if self._file is not None else None

    def _header(self) -> bytes:
        tag, width = _WAV_FORMATS[self.sample_format]
        block_align = self.channels * width
        fmt = struct.pack(
            "<HHIIHH",
            tag,
            self.channels,
            self.sample_rate,
            self.sample_rate * block_align,
            block_align,
            8 * width,
        )
        chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
        if tag == 3:  # non-PCM: cbSize and a fact chunk (frames per channel)
            fmt += struct.pack("<H", 0)
            chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
            chunks += b"fact" + struct.pack("<I", 4) + struct.pack("<I", self.frames_written)
        chunks += b"data" + struct.pack("<I", self._data_bytes)
        return b"RIFF" + struct.pack("<I", 4 + len(chunks) + self._data_bytes) + b"WAVE" + chunks

    def open(self, sample_rate: int, channels: int) -> None:
        self._start(sample_rate, channels)
        self._data_bytes = 0
        if self.dither and self.sample_format != "float":
            rng = np.random.default_rng(self.seed)
            size = DITHER_TABLE * channels
            self._dither_table = (rng.random(size) - rng.random(size)).astype(np.float32)
            self._dither_pos = 0
        try:
            # Stays open across writes: close() finishes the header and renames the file.
            self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115
                dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp", delete=False
            )
            self._file.write(self._header())
        except OSError as exc:
            self._discard()
            raise AudioDeviceError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._error = None
        self._fill = 0
        self._chunk = np.empty(BACKGROUND_CHUNK_BYTES if self.background else 0, np.uint8)
        if self.background:
            self._blocks = 0
            self._pending = queue.Queue()
            self._writer = threading.Thread(target=self._drain, name="wav-writer", daemon=True)
            self._writer.start()
        self._open = True

    def _add_dither(self, samples: NDArray[np.float32]) -> None:
        """Add the next ``samples.size`` dither values (``samples`` is contiguous), cycling."""
        flat = samples.reshape(-1)
        table = self._dither_table
        done = 0
        while done < flat.size:
            start = self._dither_pos
            take = min(flat.size - done, len(table) - start)
            flat[done : done + take] += table[start : start + take]
            self._dither_pos = (start + take) % len(table)
            done += take

    def _encode(self, data: NDArray[np.float32], out: Bytes) -> None:
        """Write the block's sample bytes into ``out`` (exactly ``data.size`` samples long)."""
        if self.sample_format == "float":
            np.copyto(out.view("<f4").reshape(data.shape), data)
            return
        if self._scaled.size < data.size:
            self._scaled = np.empty(data.size, np.float32)
        scaled = self._scaled[: data.size].reshape(data.shape)
        full = np.float32(32767.0 if self.sample_format == "16" else 8388607.0)
        np.multiply(data, full, out=scaled)
        if self.dither:
            self._add_dither(scaled)
        np.clip(scaled, -full, full, out=scaled)
        np.rint(scaled, out=scaled)
        if self.sample_format == "16":
            np.copyto(out.view("<i2").reshape(data.shape), scaled, casting="unsafe")
            return
        as_int = scaled.astype("<i4")
        np.copyto(out.reshape(-1, 3), as_int.view(np.uint8).reshape(-1, 4)[:, :3])

    def write(self, block: NDArray[np.float32]) -> None:
        data = self._checked(block)
        if self._error is not None:
            error, self._error = self._error, None
            self._discard()
            raise error
        nbytes = data.size * _WAV_FORMATS[self.sample_format][1]
        if self._data_bytes + nbytes > MAX_WAV_BYTES:
            self._discard()
            raise AudioDeviceError(f"cannot write {self.path}: a WAV file holds at most 4 GiB")
        self._data_bytes += nbytes
        self.frames_written += len(data)
        if self._pending is not None:
            buffer = self._take_buffer(data.size)
            np.copyto(buffer[: data.size].reshape(data.shape), data)
            self._pending.put((buffer, len(data)))
            return
        try:
            self._append(data)
            self._flush()
        except AudioDeviceError:
            self._discard()
            raise

    def _append(self, data: NDArray[np.float32]) -> None:
        """Encode ``data`` after the bytes gathered so far, writing them first if it won't fit."""
        nbytes = data.size * _WAV_FORMATS[self.sample_format][1]
        if self._fill + nbytes > len(self._chunk):
            self._flush()
            if nbytes > len(self._chunk):
                self._chunk = np.empty(nbytes, np.uint8)
        self._encode(data, self._chunk[self._fill : self._fill + nbytes])
        self._fill += nbytes

    def _flush(self) -> None:
        count, self._fill = self._fill, 0
        if count:
            self._store(self._chunk[:count])

    def _take_buffer(self, size: int) -> NDArray[np.float32]:
        """A flat buffer of at least ``size`` samples: a free one, a new one while fewer than
        ``BACKGROUND_BLOCKS`` exist, else the next one the writer is done with (waiting for it)."""
        try:
            buffer = self._free.get_nowait()
        except queue.Empty:
            if self._blocks < BACKGROUND_BLOCKS:
                self._blocks += 1
                return np.empty(size, np.float32)
            buffer = self._free.get()
        return buffer if len(buffer) >= size else np.empty(size, np.float32)

    def _store(self, payload: Bytes) -> None:
        assert self._file is not None
        try:
            self._file.write(payload.data)
        except OSError as exc:
            raise AudioDeviceError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def _drain(self) -> None:
        """The background writer: encode and write queued blocks until the None sentinel, then
        what is left gathered."""
        pending = self._pending
        assert pending is not None
        while True:
            item = pending.get()
            try:
                if self._error is None:
                    if item is None:
                        self._flush()
                    else:
                        buffer, frames = item
                        self._append(buffer[: frames * self.channels].reshape(frames, -1))
            except Exception as exc:  # surfaced on the caller's thread: never lost
                self._error = (
                    exc
                    if isinstance(exc, AudioDeviceError)
                    else AudioDeviceError(f"cannot write {self.path}: {exc}")
                )
            if item is None:
                return
            self._free.put(item[0])  # always: ``write`` may be waiting for a free buffer

    def _stop_writer(self) -> None:
        if self._pending is not None and self._writer is not None:
            self._pending.put(None)
            self._writer.join()
        self._pending = self._writer = None
        self._free = queue.Queue()

    def close(self) -> None:
        """Finish the header, flush to disk and rename onto ``path``. Idempotent."""
        if self._file is None:
            self._open = False
            return
        self._stop_writer()  # the writer writes what it gathered before it ends
        if self._error is not None:
            error, self._error = self._error, None
            self._discard()
            raise error
        try:
            self._file.seek(0)
            self._file.write(self._header())
            self._file.flush()
            if self.durable:
                os.fsync(self._file.fileno())
            self._file.close()
            # The temporary file was made private (0600); the finished file gets the permissions
            # any new file of this user would have.
            os.chmod(self._file.name, 0o666 & ~_umask())
            os.replace(self._file.name, self.path)
        except OSError as exc:
            self._discard()
            raise AudioDeviceError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._file = None
        self._open = False
        self._chunk = np.empty(0, np.uint8)

    def _discard(self) -> None:
        """Drop the temporary file; nothing appears at ``path``."""
        self._stop_writer()
        file, self._file = self._file, None
        self._open = False
        self._fill = 0
        self._chunk = np.empty(0, np.uint8)
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(file.name)


def _umask() -> int:
    mask = os.umask(0o022)  # reading it means setting it: put it straight back
    os.umask(mask)
    return mask


def _pyaudio() -> Any:
    try:
        # Here, not at the top: PyAudio is in the device extra only (the server's previews write
        # through this module's WavSink without it installed), and a render never needs it.
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
        self._closing = True
        if self._stream is not None:
            with contextlib.suppress(OSError):
                self._stream.abort_stream()  # drop buffered audio instead of playing it out
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
