"""The audio pipeline, built in one place: one program under one hearing profile and one calibration.

::

    ProgramRenderer ─▶ [mixer] ─▶ [stages before the chain] ─▶ SafetyChain ─▶ gain ramp ─▶ meter ─▶ sink
      audio/synth.py                                            safety/chain.py   audio/player.py

Every sound that reaches a sink is made here: a session on the device (``device/session.py:
Session.run``, with the MCU's hard limits, the dose ledger and the hardware's warning attenuator
before the chain), a prompt spoken between sessions (``device/idle_prompts.py: IdlePrompts``, over a
program of silence), a render (``resonera-device render``, ``device/audio/chain.py``) and a server
preview (``server/programs.py``), the last two with neither MCU limits nor a ledger: a file on disk
exposes no one.

- ``build_chain``: the safety chain from the calibration, the profile and the MCU's hard limits
  (which only lower it: ``limited_profile``, ``chain_limits``), feeding the dose ledger if given.
- ``build_pipeline``: the renderer and that chain, with any stages that come before it (the
  device's ``WarningAttenuator``); ``Pipeline.play`` plays it into a sink with ``player.play``
  (``read_ahead`` synthesises on a thread of its own: renders).
- ``render_calibration``: the calibration a render or a preview is held to when none is given, the
  packaged ``DEFAULT_CALIBRATION`` (``audio/calibration.py``).

The mixer (the device's ``PromptMixer``) is the player's first stage, before every processor, so
neither a prompt nor the person's volume can pass the chain.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from resonera.common.profile import HearingProfile
from resonera.common.program_model import Program
from resonera.common.safety_link_types import HardLimits
from resonera.engine.audio.calibration import (
    Calibration,
    default_calibration,
    load_calibration_file,
)
from resonera.engine.audio.player import (
    DEFAULT_BLOCK_FRAMES,
    DEFAULT_FAULT_RAMP_S,
    DEFAULT_STOP_FADE_S,
    BlockProcessor,
    BlockSource,
    Mixer,
    PlaybackResult,
    play,
)
from resonera.engine.audio.readahead import ReadAheadRenderer
from resonera.engine.audio.sink_base import AudioSink
from resonera.engine.audio.synth import ProgramRenderer
from resonera.engine.safety.chain import ChainLimits, DoseEvent, DoseRecord, SafetyChain

__all__ = [
    "BlockHook",
    "Pipeline",
    "Playhead",
    "build_chain",
    "build_pipeline",
    "chain_limits",
    "limited_profile",
    "render_calibration",
]

Block = NDArray[np.float32]


class Playhead(BlockSource, Protocol):
    """What a block hook sees of the source: where the frames written so far are in the program
    (a ``ProgramRenderer``, or a ``ReadAheadRenderer`` around one)."""

    @property
    def position_s(self) -> float: ...
    @property
    def step_index(self) -> int | None: ...


#: Sees every block after it was written, with the playhead (progress displays, meters).
BlockHook = Callable[[Block, Playhead], None]


def limited_profile(profile: HearingProfile, hard: HardLimits | None) -> HearingProfile:
    """The profile, with its ceiling lowered to the MCU's ear-SPL limit where the board has one."""
    if hard is None or hard.max_ear_spl_db <= 0 or hard.max_ear_spl_db >= profile.max_level_dba:
        return profile
    ceiling = hard.max_ear_spl_db
    return profile.model_copy(
        update={
            "max_level_dba": ceiling,
            "fallback_level_dba": min(profile.fallback_level_dba, ceiling),
        }
    )


def chain_limits(calibration: Calibration, hard: HardLimits | None) -> ChainLimits:
    """Peak ceiling: the MCU's output-voltage limit, taken as a peak (so no waveform's RMS can reach
    it), in DAC full-scale units; never above full scale. The chain holds the reconstructed
    waveform's true peak under it (and lower where the profile's C-weighted peak limit asks)."""
    peak = 1.0
    if hard is not None and hard.max_output_vrms > 0:
        full_scale_peak_v = calibration.dac_full_scale_vrms * math.sqrt(2.0)
        gain = 10.0 ** (calibration.amplifier_gain_db / 20.0)
        peak = min(1.0, hard.max_output_vrms / (full_scale_peak_v * gain))
    return ChainLimits(spl_at_unit_rms=calibration.spl_at_unit_rms, peak_ceiling=peak)


def build_chain(
    *,
    sample_rate: int,
    calibration: Calibration,
    profile: HearingProfile,
    hard: HardLimits | None = None,
    ledger: DoseRecord | None = None,
    wall_clock: Callable[[], float] = time.time,
    on_dose_event: Callable[[DoseEvent], None] = lambda _e: None,
    on_second: Callable[[float], None] = lambda _mel: None,
) -> SafetyChain:
    """The safety chain at ``sample_rate``: the calibration's level, the profile lowered to the
    MCU's ``hard`` limits (None: a render or a preview, no MCU), each metered second added to
    ``ledger`` (None: nobody is exposed, no dose is kept)."""
    return SafetyChain(
        sample_rate=sample_rate,
        limits=chain_limits(calibration, hard),
        profile=limited_profile(profile, hard),
        ledger=ledger,
        wall_clock=wall_clock,
        on_dose_event=on_dose_event,
        on_second=on_second,
    )


def render_calibration(
    calibration: Calibration | None = None, calibration_file: Path | None = None
) -> tuple[Calibration, bool]:
    """The calibration a render or a preview is held to: the one given, else the file's, else the
    packaged ``DEFAULT_CALIBRATION``; and whether it is that default. (A session has no default:
    without its own calibration the device does not play.)"""
    if calibration is not None:
        return calibration, False
    if calibration_file is not None:
        return load_calibration_file(calibration_file), False
    return default_calibration(), True


@dataclass(frozen=True)
class Pipeline:
    """A program's renderer and the processors its blocks pass, the safety chain last."""

    renderer: ProgramRenderer
    chain: SafetyChain
    #: The stages before the chain, then the chain.
    processors: tuple[BlockProcessor, ...]

    @property
    def sample_rate(self) -> int:
        return self.renderer.sample_rate

    def play(
        self,
        sink: AudioSink,
        *,
        block_frames: int = DEFAULT_BLOCK_FRAMES,
        read_ahead: bool = False,
        gate: Callable[[], bool] | None = None,
        reason: Callable[[], str] | None = None,
        should_stop: Callable[[], bool] | None = None,
        stop_fade_s: float = DEFAULT_STOP_FADE_S,
        fault_ramp_s: float = DEFAULT_FAULT_RAMP_S,
        on_block: BlockHook | None = None,
        mixer: Mixer | None = None,
        compensate_latency: bool = False,
    ) -> PlaybackResult:
        """Play the program into ``sink`` (``player.play``: the sink MUST NOT be open). With
        ``read_ahead`` the blocks are synthesised on a thread of their own (``ReadAheadRenderer``:
        renders, which are bound by the processor; playback needs no such thing)."""
        source: AbstractContextManager[Playhead] = (
            ReadAheadRenderer(self.renderer, block_frames)
            if read_ahead
            else nullcontext(self.renderer)
        )
        with source as renderer:
            return play(
                renderer,
                sink,
                block_frames=block_frames,
                gate=gate,
                reason=reason,
                should_stop=should_stop,
                processors=self.processors,
                stop_fade_s=stop_fade_s,
                fault_ramp_s=fault_ramp_s,
                on_block=on_block,
                mixer=mixer,
                compensate_latency=compensate_latency,
            )


def build_pipeline(
    program: Program,
    *,
    sample_rate: int,
    calibration: Calibration,
    profile: HearingProfile,
    hard: HardLimits | None = None,
    ledger: DoseRecord | None = None,
    wall_clock: Callable[[], float] = time.time,
    on_dose_event: Callable[[DoseEvent], None] = lambda _e: None,
    on_second: Callable[[float], None] = lambda _mel: None,
    before_chain: Sequence[BlockProcessor] = (),
) -> Pipeline:
    """``program`` synthesised at ``sample_rate`` (``ProgramRenderer``: everything that can fail in
    synthesis fails here), then ``before_chain`` in order, then the safety chain (``build_chain``)."""
    renderer = ProgramRenderer(program, sample_rate)
    chain = build_chain(
        sample_rate=sample_rate,
        calibration=calibration,
        profile=profile,
        hard=hard,
        ledger=ledger,
        wall_clock=wall_clock,
        on_dose_event=on_dose_event,
        on_second=on_second,
    )
    return Pipeline(renderer, chain, (*before_chain, chain))
