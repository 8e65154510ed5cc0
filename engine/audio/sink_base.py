"""What every audio sink is: the ``AudioSink`` protocol, its shared bookkeeping, and the null sink.

Every sink follows ``AudioSink``: ``open(sample_rate, channels)``, then ``write(block)`` any
number of times (float32 blocks of shape ``(frames, channels)``; ``write`` blocks until the sink
has accepted the block), then ``close()``. Used as a context manager (``with sink: ...`` after
``open``), leaving the ``with`` on an exception discards what it can (a WAV that was being written
is removed). ``close`` is idempotent and a closed sink MAY be opened again.
"""

from __future__ import annotations

from types import TracebackType
from typing import Literal, Protocol, Self, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from resonera.common.errors import ResoneraError

SinkKind = Literal["pyaudio", "wav", "null"]


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


class BaseSink:
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


class NullSink(BaseSink):
    """Accepts and forgets every block, counting frames (``frames_written``). Never blocks."""

    kind: SinkKind = "null"

    def open(self, sample_rate: int, channels: int) -> None:
        self._start(sample_rate, channels)
        self._open = True

    def write(self, block: NDArray[np.float32]) -> None:
        self.frames_written += len(self._checked(block))
