"""Spoken prompts over the program, the person's volume, and pause: one stage BEFORE the safety chain.

::

    renderer ─▶ PromptMixer (volume · duck · pause on the program, + the prompt) ─▶ processors
                                                                                (the safety chain)

Everything the person hears passes the chain after this stage, so neither a prompt nor a volume
step can bypass the limiter, the level ceiling or the dose. Pure numpy; no I/O on the audio path:
prompts are decoded to arrays before ``say`` (``device/prompts.py`` reads the cached files).

- ``say(*clips)`` queues one utterance (clips back to back, e.g. "time left" + "12" + "minutes").
  Before it starts, the program ducks by ``duck_db`` (−15 dB) over ``duck_ramp_s``; the prompt
  plays at its own fixed level (set when it was built, never scaled here); after the last queued
  utterance the program comes back up over the same ramp. Every gain moves linearly in dB, per
  sample, so there is no click at either edge; utterances get 5 ms fades at their ends too.
  An utterance that waited longer than ``max_wait_s`` (no session was playing to carry it) is
  dropped unless queued with ``keep=True`` (a fault's reason, the first-use notice).
- ``cut()``: a button was pressed: the utterance playing fades out within the next block
  (``CUT_FADE_S``, a raised cosine: no click) and those queued are dropped, except those kept
  (``keep=True``); the duck stays down if something is said next (the press's answer starts at
  once), else the program comes back up over the ramp. ``say(..., replace=True)`` is ``cut()``
  then ``say``: a number read back replaces one not yet said, so the reading never lags the
  presses.
- ``set_volume(db, ramp_s)``: the program's volume offset (≤ 0 dB), reached over ``ramp_s``.
- ``pause()``/``resume()``: the program fades out over ``pause_ramp_s`` and stops advancing (the
  renderer is not asked for samples while paused, so resuming continues where it paused); prompts
  still play while paused.

Threads: the player thread calls ``render``/``process``; ``say``, ``cut``, ``set_volume``,
``pause`` and ``resume`` may be called from one other thread (they only append to a deque or set
a number: a cut is a number, the first utterance not cut, which the player thread acts on).

Who holds it: the device service owns one mixer (its control panel's, ``device/panel.py``) and
hands it to every ``play`` it starts (``play(..., mixer=)``, through ``agent.play_session``); a
``play`` given none renders the program as it is.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = ["Clip", "PromptMixer"]

log = logging.getLogger(__name__)

Block = NDArray[np.float32]
DUCK_DB = -15.0
DUCK_RAMP_S = 0.15
PAUSE_RAMP_S = 0.05
EDGE_FADE_S = 0.005
#: How fast a cut utterance fades out: well within one block (1024 frames at 48 kHz: 21 ms).
CUT_FADE_S = 0.01
MAX_WAIT_S = 15.0
MAX_QUEUED = 8


class Renderer(Protocol):
    """What ``render`` needs of ``ProgramRenderer``."""

    def render(self, frames: int) -> Block: ...


@dataclass(frozen=True)
class Clip:
    """One cached prompt, decoded: mono float32 at ``sample_rate``, at its fixed level."""

    key: str
    samples: NDArray[np.float32]
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass
class _Utterance:
    #: The clip's own array when there is one clip: a first-use notice is megabytes, not copied.
    samples: NDArray[np.float32]
    queued_at: float
    keep: bool
    text: str
    #: The raised-cosine edge fade, applied as the samples are mixed (never in ``samples``).
    fade: NDArray[np.float32]
    #: Its place in the order queued (``cut`` drops those before a number).
    seq: int = 0


class PromptMixer:
    """Mix queued prompts over program blocks, ducking the program; the person's volume and pause."""

    def __init__(
        self,
        sample_rate: int,
        *,
        duck_db: float = DUCK_DB,
        duck_ramp_s: float = DUCK_RAMP_S,
        pause_ramp_s: float = PAUSE_RAMP_S,
        max_wait_s: float = MAX_WAIT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if sample_rate <= 0 or duck_db > 0 or duck_ramp_s <= 0 or pause_ramp_s <= 0:
            raise ValueError("need sample_rate > 0, duck_db ≤ 0, and ramps > 0 s")
        self.sample_rate = sample_rate
        self.duck_db = duck_db
        self._duck_step = max(abs(duck_db), 1e-9) / (duck_ramp_s * sample_rate)
        self._pause_step = 1.0 / (pause_ramp_s * sample_rate)
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._queue: deque[_Utterance] = deque(maxlen=MAX_QUEUED)
        self._current: _Utterance | None = None
        self._offset = 0
        self._duck = 0.0  # dB, now
        self._volume = 0.0  # dB, now
        self._volume_target = 0.0
        self._volume_step = 1.0
        self._pause_gain = 1.0
        self._paused = False
        #: Frames rendered as the silence of a pause (the program not advanced), ever: a
        #: session's played time leaves out what it adds while the session plays.
        self.frames_paused = 0
        #: Keys of the utterances played to their end, oldest first (for tests and logs).
        self.spoken: deque[str] = deque(maxlen=64)
        self.dropped = 0
        self.rate_warned = False
        #: Keys of the utterances cut off by ``cut`` (started, then faded out), oldest first.
        self.cut_off: deque[str] = deque(maxlen=64)
        self._seq = 0
        #: Utterances numbered below this are cut (set by ``cut``, acted on by the player thread).
        self._cut_below = 0
        self._cut_kept_below = 0
        #: ``_cut_below`` when the current utterance began: a cut since then cuts it.
        self._cut_mark = 0
        self._cut_fade = _edge_fade(max(1, round(CUT_FADE_S * sample_rate)))[::-1].copy()
        #: Frames mixed so far (all blocks, every player), and the frame at which the last cut's
        #: fade began (None: none yet): a stage after the safety chain's look-ahead can cut the
        #: prompt there too (``device/idle_prompts.py``, between sessions).
        self.frames_mixed = 0
        self.cut_at: int | None = None

    # -- what the controls ask (any thread) -------------------------------------------------------

    def say(self, *clips: Clip, keep: bool = False, replace: bool = False) -> None:
        """Queue ``clips`` as one utterance (``replace``: instead of what is said now, ``cut``).
        ``ValueError`` for a clip at another rate."""
        if replace:
            self.cut()
        if not clips:
            return
        for clip in clips:
            if clip.sample_rate != self.sample_rate:
                raise ValueError(
                    f"prompt {clip.key!r} is at {clip.sample_rate} Hz, the output at "
                    f"{self.sample_rate} Hz: rebuild the prompts for this rate"
                )
        if len(clips) == 1:
            samples = np.asarray(clips[0].samples, dtype=np.float32)
        else:
            samples = np.concatenate([clip.samples for clip in clips], dtype=np.float32)
        fade = _edge_fade(min(round(EDGE_FADE_S * self.sample_rate), len(samples) // 2))
        text = "+".join(clip.key for clip in clips)
        seq, self._seq = self._seq, self._seq + 1
        self._queue.append(_Utterance(samples, self._clock(), keep, text, fade, seq))

    def cut(self, *, everything: bool = False) -> None:
        """Stop saying what is said now (faded out within the next block) and drop what is
        queued, except what was queued to be kept (``everything``: that too)."""
        self._cut_below = self._seq
        if everything:
            self._cut_kept_below = self._seq

    def set_volume(self, db: float, ramp_s: float) -> None:
        """Move the program's volume offset to ``db`` (capped at 0 dB) over ``ramp_s``."""
        if not math.isfinite(db) or ramp_s <= 0:
            raise ValueError("volume must be a finite number of dB and its ramp > 0 s")
        target = min(0.0, db)
        self._volume_step = max(abs(target - self._volume), 1e-6) / (ramp_s * self.sample_rate)
        self._volume_target = target

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def speaking(self) -> bool:
        """A prompt is playing (or fading out, cut) or waiting to."""
        return self._current is not None or any(not self._is_cut(u) for u in list(self._queue))

    def _is_cut(self, utterance: _Utterance) -> bool:
        if utterance.keep:
            return utterance.seq < self._cut_kept_below
        return utterance.seq < self._cut_below

    @property
    def volume_db(self) -> float:
        return self._volume_target

    @property
    def pending_s(self) -> float:
        """Seconds of speech still to play (the one playing and those queued), without ramps."""
        current = self._current
        frames = len(current.samples) - self._offset if current is not None else 0
        frames += sum(len(u.samples) for u in list(self._queue))
        return frames / self.sample_rate

    def accepts(self, sample_rate: int) -> bool:
        """Whether this mixer can take a program at ``sample_rate``. A mixer built for another rate
        cannot (its prompts would play at the wrong pitch): that is logged, once per mixer."""
        if sample_rate == self.sample_rate:
            return True
        if not self.rate_warned:
            self.rate_warned = True
            log.warning(
                "prompt mixer at %d Hz, program at %d Hz: no prompts, volume or pause",
                self.sample_rate,
                sample_rate,
            )
        return False

    # -- the audio path (the player's thread) -----------------------------------------------------

    def render(self, renderer: Renderer, frames: int) -> Block:
        """The next ``frames`` of the program with prompts mixed in; while paused (once faded out)
        the renderer is not advanced and the program is silence."""
        if self._paused and self._pause_gain == 0.0:
            program = np.zeros((frames, 2), dtype=np.float32)
            self.frames_paused += frames
        else:
            program = renderer.render(frames)
        return self.process(program)

    def process(self, program: Block) -> Block:
        """``program`` (frames × 2) with volume, duck and pause applied and the prompt added."""
        frames = len(program)
        if frames == 0:
            return program
        duck, voice = self._duck_and_voice(frames)
        self.frames_mixed += frames
        volume = _slew(self._volume, self._volume_target, self._volume_step, frames)
        self._volume = float(volume[-1])
        pause = _slew(self._pause_gain, 0.0 if self._paused else 1.0, self._pause_step, frames)
        self._pause_gain = float(pause[-1])
        if not voice.any() and not duck.any() and not volume.any() and (pause == 1.0).all():
            return program  # nothing to do: the common case costs nothing
        gain = np.power(10.0, (duck + volume) / 20.0) * pause
        out = program * gain[:, None] + voice[:, None]
        return out.astype(np.float32)

    def _next_utterance(self) -> _Utterance | None:
        now = self._clock()
        while self._queue:
            utterance = self._queue.popleft()
            if self._is_cut(utterance):
                continue  # a press came after it was queued: its answer is said instead
            if utterance.keep or now - utterance.queued_at <= self.max_wait_s:
                return utterance
            self.dropped += 1
            log.info(
                "prompt %s dropped: it waited %.0f s", utterance.text, now - utterance.queued_at
            )
        return None

    def _duck_and_voice(self, frames: int) -> tuple[NDArray[np.float64], NDArray[np.float32]]:
        duck = np.empty(frames, dtype=np.float64)
        voice = np.zeros(frames, dtype=np.float32)
        pos = 0
        current = self._current
        if current is not None and self._cut_below > self._cut_mark:  # cut while it spoke
            pos = self._fade_out_cut(current, voice, duck)
        while pos < frames:
            if self._current is None:
                self._current, self._offset = self._next_utterance(), 0
                self._cut_mark = self._cut_below
            target = self.duck_db if self._current is not None else 0.0
            if self._duck != target:  # ramp first: the prompt starts once the program is down
                segment = _slew(self._duck, target, self._duck_step, frames - pos)
                reached = np.flatnonzero(segment == target)
                end = int(reached[0]) + 1 if len(reached) else len(segment)
                duck[pos : pos + end] = segment[:end]
                self._duck = float(segment[end - 1])
                pos += end
                continue
            current = self._current
            if current is None:
                duck[pos:] = 0.0
                break
            count = min(len(current.samples) - self._offset, frames - pos)
            voice[pos : pos + count] = current.samples[self._offset : self._offset + count]
            _fade_edges(voice[pos : pos + count], self._offset, current)
            duck[pos : pos + count] = self._duck
            self._offset += count
            pos += count
            if self._offset >= len(current.samples):
                self.spoken.append(current.text)
                self._current = None
        return duck, voice

    def _fade_out_cut(
        self, current: _Utterance, voice: NDArray[np.float32], duck: NDArray[np.float64]
    ) -> int:
        """Fade the cut utterance out at the start of this block; the frames it took."""
        count = min(len(self._cut_fade), len(current.samples) - self._offset, len(voice))
        segment = current.samples[self._offset : self._offset + count] * self._cut_fade[:count]
        voice[:count] = segment
        _fade_edges(voice[:count], self._offset, current)
        duck[:count] = self._duck
        self.cut_off.append(current.text)
        self.cut_at = self.frames_mixed
        self._current = None
        return count

    @property
    def cut_fade_frames(self) -> int:
        """How many frames a cut's fade-out takes."""
        return len(self._cut_fade)


def _slew(start: float, target: float, step: float, frames: int) -> NDArray[np.float64]:
    """``frames`` values moving from ``start`` toward ``target`` by ``step`` per frame, then
    holding it (the first value is already one step on)."""
    if start == target:
        return np.full(frames, target, dtype=np.float64)
    steps = np.arange(1, frames + 1, dtype=np.float64) * step
    if target > start:
        return np.minimum(start + steps, target)
    return np.maximum(start - steps, target)


def _edge_fade(frames: int) -> NDArray[np.float32]:
    """A raised-cosine ramp from 0 to 1 over ``frames`` (none for 0)."""
    return (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, max(0, frames)))).astype(np.float32)


def _fade_edges(out: NDArray[np.float32], start: int, utterance: _Utterance) -> None:
    """Fade ``out`` (the utterance's samples from ``start`` on) in at the utterance's beginning
    and out at its end."""
    fade, total, stop = utterance.fade, len(utterance.samples), start + len(out)
    edge = len(fade)
    if start < edge:
        out[: min(stop, edge) - start] *= fade[start : min(stop, edge)]
    tail = total - edge
    if stop > tail:
        lo = max(start, tail)
        out[lo - start :] *= fade[::-1][lo - tail : stop - tail]
