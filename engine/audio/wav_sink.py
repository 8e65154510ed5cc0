"""The WAV file sink: renders, previews, and a device without a sound card.

PCM with reproducible TPDF dither or 32-bit float, written to a temporary file renamed into place,
optionally encoded and written on a thread of its own (``background``: renders).
"""

from __future__ import annotations

import contextlib
import os
import queue
import struct
import tempfile
import threading
from pathlib import Path
from typing import IO, Final, Literal

import numpy as np
from numpy.typing import NDArray

from resonera.engine.audio.sink_base import AudioDeviceError, BaseSink, SinkKind

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


class WavSink(BaseSink):
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
