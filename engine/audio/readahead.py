"""Synthesis on a thread of its own, a few blocks ahead of whoever consumes them (renders).

A render is bound by the processor time of synthesis, the safety chain and encoding together. Run
one after the other they use one core; the heavy parts of each (numpy's array operations, the
compiled A-weighting cascade, the WAV encoder) release the interpreter lock, so on a second core the
next blocks are synthesised while the chain processes the current one.

``ReadAheadRenderer`` wraps a ``ProgramRenderer`` and presents the same face to the player
(``render``, ``done``, ``remaining_frames``, ``position_s``, ``step_index``, ``sample_rate``), as
seen by the consumer: position and step are those of the frames already taken, not of the frames
synthesised ahead. The output is the wrapped renderer's, sample for sample, whatever the sizes asked
(blocks are split or joined as needed). Real-time playback does not use it: there the sink's queue
already decouples synthesis from the sound card, and a block is synthesised in well under its
duration.

Use it as a context manager (or call ``close``): leaving stops the producer thread, also when the
consumer stops early. An exception in synthesis is raised by the ``render`` call that reaches it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Final

import numpy as np
from numpy.typing import NDArray

from resonera.engine.audio.synth import CHANNELS, ProgramRenderer

Block = NDArray[np.float32]

#: Blocks synthesised ahead: one being processed, one ready, one being made is enough to keep both
#: cores busy; more only holds memory.
DEFAULT_DEPTH: Final = 2


@dataclass(frozen=True)
class _Rendered:
    block: Block
    #: The wrapped renderer's step after this block (what ``step_index`` said then).
    step_index: int | None


@dataclass(frozen=True)
class _Failed:
    error: BaseException


class ReadAheadRenderer:
    """``renderer``'s blocks of ``block_frames``, made ``depth`` blocks ahead on a thread."""

    def __init__(
        self, renderer: ProgramRenderer, block_frames: int, *, depth: int = DEFAULT_DEPTH
    ) -> None:
        if block_frames < 1:
            raise ValueError("block_frames must be ≥ 1")
        if depth < 1:
            raise ValueError("depth must be ≥ 1")
        self.program = renderer.program
        self.sample_rate = renderer.sample_rate
        self.total_frames = renderer.total_frames
        self._renderer = renderer
        self._block_frames = block_frames
        self._ready: queue.Queue[_Rendered | _Failed] = queue.Queue(maxsize=depth)
        self._stopping = threading.Event()
        self._taken = 0
        self._step_index = renderer.step_index
        self._pending: Block = np.empty((0, CHANNELS), np.float32)
        self._thread = threading.Thread(target=self._produce, name="resonera-synth", daemon=True)
        self._thread.start()

    # -- the consumer's view --------------------------------------------------------------------

    @property
    def position_frames(self) -> int:
        return self._taken

    @property
    def position_s(self) -> float:
        return self._taken / self.sample_rate

    @property
    def remaining_frames(self) -> int:
        return self.total_frames - self._taken

    @property
    def done(self) -> bool:
        return self._taken >= self.total_frames

    @property
    def step_index(self) -> int | None:
        """The step sounding at the end of the last block taken from synthesis (None when done)."""
        return self._step_index

    def render(self, frames: int) -> Block:
        """The next ``frames`` frames, shape ``(frames, 2)``; silence past the program's end."""
        if frames < 0:
            raise ValueError("frames must be ≥ 0")
        wanted = min(frames, self.total_frames - self._taken)
        pieces = [self._pending] if len(self._pending) else []
        have = len(self._pending)
        while have < wanted:
            item = self._ready.get()
            if isinstance(item, _Failed):
                raise item.error
            pieces.append(item.block)
            have += len(item.block)
            self._step_index = item.step_index
        # Nearly always one whole block, passed on as it is.
        joined = (
            np.concatenate(pieces) if len(pieces) > 1 else pieces[0] if pieces else self._pending
        )
        self._pending = joined[wanted:]
        self._taken += wanted
        if wanted == frames:
            return joined[:frames] if len(joined) > frames else joined
        out = np.zeros((frames, CHANNELS), np.float32)
        out[:wanted] = joined[:wanted]
        return out

    # -- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop synthesising ahead (idempotent)."""
        self._stopping.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):  # room, so a blocked producer sees the stop
                self._ready.get_nowait()
            self._thread.join(timeout=0.01)

    def __enter__(self) -> ReadAheadRenderer:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- the producer thread ---------------------------------------------------------------------

    def _produce(self) -> None:
        renderer = self._renderer
        try:
            while not renderer.done and not self._stopping.is_set():
                block = renderer.render(min(self._block_frames, renderer.remaining_frames))
                self._put(_Rendered(block, renderer.step_index))
        except BaseException as exc:  # handed to the consumer, raised where it asks for frames
            self._put(_Failed(exc))

    def _put(self, item: _Rendered | _Failed) -> None:
        while not self._stopping.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
