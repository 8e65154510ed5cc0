"""The playback loop: render a block, process it, ramp its gain, meter it, write it to the sink.

::

    renderer ─▶ [prompt mixer] ─▶ processors (the safety chain's insertion point) ─▶ gain ramp
            ─▶ meter ─▶ sink

- ``mixer`` (optional, a ``Mixer``: the device's ``PromptMixer``,
  ``device/audio/prompt_mixer.py``) is the first stage, BEFORE the processors: spoken prompts, the
  person's volume and pause, so nothing it adds or asks for can pass the safety chain. Without one
  (or with one built for another sample rate, which is logged) the renderer's blocks go to the
  processors as they are.

- ``gate()`` is the safety monitor's consent, asked before EVERY block. When it says False the
  next block ramps the output to zero within ``fault_ramp_s`` (a few ms; docs/safety.md, "Gain ramps":
  a fault mute is the one change allowed to be that fast), nothing more is written, and the
  outcome is ``"fault"`` with the text of ``reason()``.
- A processor whose ``fault`` attribute is set after a block (the safety chain's, when it was given
  a non-finite sample: it then mutes for good) ends the session as a closed gate does, with that
  text as the reason.
- ``should_stop()`` True starts a fade-out over ``stop_fade_s`` (50 ms, across blocks if need be);
  the outcome is ``"stopped"``.
- Otherwise the program plays to its end (its own fade-out) and the outcome is ``"completed"``;
  silence then pushed through the processors brings out what their look-ahead still held
  (``latency_frames``), so the last frame heard is the program's last (renders also leave out the
  look-ahead's leading silence: ``compensate_latency``).
- A sink that fails mid-session (``AudioDeviceError``: the sound device disappeared, the disk is
  full) ends the session at once, cleanly: the sink is discarded, the outcome is ``"fault"`` and
  the reason says which output failed and why. Other exceptions (a processor's) propagate.
- ``on_block(block, renderer)`` (optional) sees every block after it was written: progress displays
  and meters hang here. It MUST be quick (it runs in the playback loop).

The gain ramp is applied after the processors so that a fault mute takes effect at once, whatever
latency a look-ahead limiter adds. ``gate``, ``should_stop``, ``reason`` and the processors MUST
NOT block (read a flag, do arithmetic): the only wait in the loop is ``sink.write``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from resonera.engine.audio.levels import LevelMeter
from resonera.engine.audio.sink_base import AudioDeviceError, AudioSink
from resonera.engine.audio.synth import CHANNELS

__all__ = [
    "DEFAULT_BLOCK_FRAMES",
    "BlockProcessor",
    "BlockSource",
    "GainRamp",
    "Mixer",
    "Outcome",
    "PlaybackResult",
    "play",
]

Block = NDArray[np.float32]
#: Takes a (frames, 2) float32 block and returns the processed block of the same shape.
BlockProcessor = Callable[[Block], Block]
Outcome = Literal["completed", "stopped", "fault"]


class BlockSource(Protocol):
    """What the player needs of a ``ProgramRenderer`` (or a ``ReadAheadRenderer`` around one)."""

    @property
    def sample_rate(self) -> int: ...
    @property
    def done(self) -> bool: ...
    @property
    def remaining_frames(self) -> int: ...
    def render(self, frames: int) -> Block: ...


class Mixer(Protocol):
    """A first stage before the processors (the device's ``PromptMixer``): it takes the program's
    blocks from the source itself (it may hold the program back while paused) and mixes its own
    sound in."""

    def accepts(self, sample_rate: int) -> bool: ...
    def render(self, renderer: BlockSource, frames: int) -> Block: ...


#: The source played, as ``on_block`` sees it (progress displays read its position and step).
Source = TypeVar("Source", bound=BlockSource)

DEFAULT_BLOCK_FRAMES: Final = 1024
DEFAULT_STOP_FADE_S: Final = 0.05
DEFAULT_FAULT_RAMP_S: Final = 0.003
DEFAULT_FAULT_REASON: Final = "safety gate closed"


@dataclass(frozen=True)
class PlaybackResult:
    frames_played: int
    played_s: float
    outcome: Outcome
    reason: str | None
    #: Levels of what was written to the sink (after processors and the gain ramp).
    peak_dbfs: float
    rms_dbfs: float
    #: Times the sound device had to play silence because no block was ready (PyAudio sink).
    underruns: int = 0
    underrun_frames: int = 0


class GainRamp:
    """A gain that moves in a straight line toward a target, per sample, never jumping."""

    def __init__(self, value: float = 1.0) -> None:
        self.value = value
        self.target = value
        self._per_frame = 0.0

    def ramp_to(self, target: float, frames: int) -> None:
        """Reach ``target`` after ``frames`` more frames (at least one)."""
        self.target = target
        self._per_frame = abs(target - self.value) / max(1, frames)

    def apply(self, block: Block) -> Block:
        """``block`` times the gain, advancing the ramp by ``len(block)`` frames."""
        if self.value == self.target:
            return block if self.value == 1.0 else (block * np.float32(self.value))
        direction = 1.0 if self.target > self.value else -1.0
        steps = np.arange(1, len(block) + 1, dtype=np.float64)
        gains = self.value + direction * self._per_frame * steps
        gains = np.minimum(gains, self.target) if direction > 0 else np.maximum(gains, self.target)
        if len(gains):
            self.value = float(gains[-1])
        return (block * gains[:, None]).astype(np.float32)

    def frames_to_target(self) -> int:
        """Frames until the target is reached (0 when there)."""
        if self.value == self.target:
            return 0
        return int(np.ceil(abs(self.target - self.value) / self._per_frame - 1e-9))


def play(
    renderer: Source,
    sink: AudioSink,
    *,
    block_frames: int = DEFAULT_BLOCK_FRAMES,
    gate: Callable[[], bool] | None = None,
    reason: Callable[[], str] | None = None,
    should_stop: Callable[[], bool] | None = None,
    processors: Sequence[BlockProcessor] = (),
    stop_fade_s: float = DEFAULT_STOP_FADE_S,
    fault_ramp_s: float = DEFAULT_FAULT_RAMP_S,
    on_block: Callable[[Block, Source], None] | None = None,
    mixer: Mixer | None = None,
    compensate_latency: bool = False,
) -> PlaybackResult:
    """Play ``renderer`` into ``sink`` until the program ends, a stop is asked, or the gate closes.

    The sink MUST NOT be open: ``play`` opens it (at the renderer's rate, 2 channels) and closes it
    before returning. An exception (from the sink or a processor) propagates after the sink is
    discarded. The returned ``reason`` is None unless the outcome is ``"fault"``.

    When the program ends, silence is pushed through the processors until what their look-ahead
    held (their ``latency_frames``) has come out: the program is heard to its end. A render sets
    ``compensate_latency``: the silence the look-ahead put before the program is not written either,
    so the output is the program's length, sample-aligned with it.
    """
    if block_frames < 1:
        raise ValueError("block_frames must be ≥ 1")
    rate = renderer.sample_rate
    stop_frames = max(1, round(stop_fade_s * rate))
    fault_frames = max(1, round(fault_ramp_s * rate))
    meter = LevelMeter()
    sink.open(rate, CHANNELS)
    try:
        with sink:
            frames_played, outcome, fault_reason = _loop(
                renderer,
                sink,
                meter,
                block_frames=block_frames,
                gate=gate,
                reason=reason,
                should_stop=should_stop,
                processors=processors,
                stop_frames=stop_frames,
                fault_frames=fault_frames,
                on_block=on_block,
                mixer=mixer if mixer is not None and mixer.accepts(rate) else None,
                compensate_latency=compensate_latency,
            )
    except AudioDeviceError as exc:
        # The sink discarded itself on leaving the ``with``; what reached it is in the meter.
        frames_played, outcome, fault_reason = meter.frames, "fault", f"audio output failed: {exc}"
    return PlaybackResult(
        frames_played=frames_played,
        played_s=frames_played / rate,
        outcome=outcome,
        reason=fault_reason,
        peak_dbfs=meter.peak_dbfs,
        rms_dbfs=meter.rms_dbfs,
        underruns=int(getattr(sink, "underruns", 0)),
        underrun_frames=int(getattr(sink, "underrun_frames", 0)),
    )


def _loop(
    renderer: Source,
    sink: AudioSink,
    meter: LevelMeter,
    *,
    block_frames: int,
    gate: Callable[[], bool] | None,
    reason: Callable[[], str] | None,
    should_stop: Callable[[], bool] | None,
    processors: Sequence[BlockProcessor],
    stop_frames: int,
    fault_frames: int,
    on_block: Callable[[Block, Source], None] | None,
    mixer: Mixer | None,
    compensate_latency: bool,
) -> tuple[int, Outcome, str | None]:
    ramp = GainRamp(1.0)
    frames_played = 0
    stopping = False
    outcome: Outcome = "completed"
    fault_reason: str | None = None
    # What the processors still hold when the program ends (the safety chain's look-ahead):
    # silence pushed through after the last block brings it out, so the program is heard to its
    # end and the output does not stop on a sample the fade-out had not reached yet.
    held = sum(int(getattr(process, "latency_frames", 0)) for process in processors)
    leading = held if compensate_latency else 0  # output frames still to leave out
    while True:
        faulted = gate is not None and not gate()
        if faulted:
            outcome = "fault"
            fault_reason = reason() if reason is not None else DEFAULT_FAULT_REASON
            if frames_played == 0 or (renderer.done and held == 0):
                break  # nothing is sounding: nothing to ramp
        elif not stopping and should_stop is not None and should_stop():
            stopping, outcome = True, "stopped"
            ramp.ramp_to(0.0, stop_frames)
        draining = renderer.done
        if draining and held == 0:
            break
        if draining:
            count = min(block_frames, held)
            held -= count
            block = np.zeros((count, CHANNELS), np.float32)
        else:
            count = min(block_frames, renderer.remaining_frames)
            block = renderer.render(count) if mixer is None else mixer.render(renderer, count)
        for process in processors:
            block = process(block)
        muted_for = None if faulted else next(filter(None, _faults(processors)), None)
        if muted_for is not None:
            faulted, outcome, fault_reason = True, "fault", muted_for
        if faulted:
            ramp.ramp_to(0.0, min(fault_frames, count))
        muting = ramp.target == 0.0
        if muting and ramp.frames_to_target() < count:
            block = block[: ramp.frames_to_target()]  # the rest would be silence: leave it out
        block = ramp.apply(block)
        if not draining:  # the drained frames are the latency's, not more of the program
            frames_played += len(block)
        if leading:
            cut = min(leading, len(block))
            block, leading = block[cut:], leading - cut
        if len(block):
            sink.write(block)
            meter.update(block)
        if on_block is not None:
            on_block(block, renderer)
        if faulted or (muting and ramp.value == 0.0):
            break
    return frames_played, outcome, fault_reason


def _faults(processors: Sequence[BlockProcessor]) -> Iterator[str | None]:
    """Each processor's ``fault`` (the safety chain has one), None where it has none."""
    return (getattr(process, "fault", None) for process in processors)
