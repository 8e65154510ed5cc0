"""A sink that plays each block in real time from the moment it is written, as a sound card with no
extra buffering would, and keeps (play start time, block): the reaction benchmarks read from it when
each sample was heard."""

from __future__ import annotations

import time
from typing import Self

import numpy as np
from numpy.typing import NDArray

from resonera.engine.audio.sink_base import SinkKind


class PacedSink:
    """Plays each block in real time from the moment it is written; keeps (start time, block)."""

    kind: SinkKind = "null"

    def __init__(self, rate: int) -> None:
        self.writes: list[tuple[float, NDArray[np.float32]]] = []
        self._cursor = 0.0
        self.rate = rate

    def open(self, sample_rate: int, channels: int) -> None:
        self.rate = sample_rate

    def write(self, block: NDArray[np.float32]) -> None:
        now = time.perf_counter()
        start = max(now, self._cursor)
        self.writes.append((start, block.copy()))
        self._cursor = start + len(block) / self.rate
        while (left := self._cursor - time.perf_counter()) > 0:
            time.sleep(min(left, 0.0005))

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
