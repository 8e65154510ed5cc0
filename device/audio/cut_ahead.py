"""A press's cut of a prompt heard within one block, though the safety chain delays what it plays.

The mixer (``PromptMixer.cut``) drops a prompt within one block, but the safety chain after it
holds ``latency`` frames of look-ahead (the level ceiling's 100 ms, the limiter's 10 ms): the cut
prompt would go on that long at the output. ``CutAhead`` wraps the sink and, when the mixer has cut,
lowers the output at once (a 5 ms fade) to ``floor_gain`` until the frames mixed after the cut come
through, then fades back: a gain ≤ 1 at the output, so it can only lower the level the chain let
through. Between sessions the program is silence and the floor is 0 (the prompt stops); in a
session the floor is the mixer's duck (``PromptMixer.duck_db``, −15 dB): the prompt drops by that
much at once, the program under it too for the look-ahead's 60 ms (a dip, never a gap), and then
the program comes back as the mixer un-ducks it.
"""

from __future__ import annotations

from types import TracebackType

import numpy as np
from numpy.typing import NDArray

from resonera.device.audio.prompt_mixer import PromptMixer
from resonera.engine.audio.sink_base import AudioSink

__all__ = ["OUTPUT_CUT_FADE_S", "CutAhead"]

#: How fast the output fades when a press cuts a prompt, down and back up.
OUTPUT_CUT_FADE_S = 0.005


class CutAhead:
    """``sink`` with ``mixer``'s cuts heard at once (see the module); ``latency``: the chain's
    look-ahead in frames; ``floor_gain``: the output's gain until the cut comes through."""

    def __init__(
        self, sink: AudioSink, mixer: PromptMixer, latency: int, *, floor_gain: float = 0.0
    ) -> None:
        if not 0.0 <= floor_gain <= 1.0:
            raise ValueError("floor_gain must be within 0 and 1: the output is only ever lowered")
        self.sink = sink
        self.kind = sink.kind
        self.mixer = mixer
        self.latency = latency
        self.floor_gain = floor_gain
        self._base = mixer.frames_mixed  # output frame o carries mixed frame base + o - latency
        self._written = 0
        self._seen_cut = mixer.cut_at
        self._points: tuple[list[float], list[float]] | None = None
        self._fade = 1

    @property
    def underruns(self) -> int:
        """The wrapped sink's (the session's record carries them)."""
        return int(getattr(self.sink, "underruns", 0))

    @property
    def underrun_frames(self) -> int:
        return int(getattr(self.sink, "underrun_frames", 0))

    def open(self, sample_rate: int, channels: int) -> None:
        self.sink.open(sample_rate, channels)
        self._fade = max(1, round(OUTPUT_CUT_FADE_S * sample_rate))

    def write(self, block: NDArray[np.float32]) -> None:
        cut = self.mixer.cut_at
        if cut is not None and cut != self._seen_cut and cut >= self._base:
            self._seen_cut = cut
            start = self._written
            back = max(cut - self._base + self.latency + self.mixer.cut_fade_frames, start)
            floor = self.floor_gain
            self._points = (
                [start, start + self._fade, back + self._fade, back + 2 * self._fade],
                [1.0, floor, floor, 1.0],
            )
        frames = len(block)
        points = self._points
        if points is not None:
            if self._written >= points[0][-1]:
                self._points = None
            else:
                at = np.arange(self._written, self._written + frames, dtype=np.float64)
                gain = np.interp(at, points[0], points[1]).astype(np.float32)
                block = block * gain[:, None]
        self._written += frames
        self.sink.write(block)

    def close(self) -> None:
        self.sink.close()

    def __enter__(self) -> CutAhead:
        self.sink.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.sink.__exit__(exc_type, exc, tb)
