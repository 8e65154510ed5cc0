"""Prompts spoken between sessions: the MCU claimed from the one monitor for the prompt's length, a
program of silence with the prompts mixed in played through the engine's pipeline under the session's
safety chain, then the MCU muted again (``DeviceService`` gives ``IdlePrompts.speak`` to the panel,
which calls it on its speaker thread: a press meanwhile cuts the prompt, ``PromptMixer.cut``, and
the pipeline ends once nothing is left to say)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType

import numpy as np
from numpy.typing import NDArray

from resonera.common.profile import HearingProfile
from resonera.common.program import Program, Step
from resonera.device.audio.prompt_mixer import PromptMixer
from resonera.device.hwmonitor import ConsentClaim, HardwareMonitor, HardwareNotReady
from resonera.device.safety.dose_ledger import DoseLedger
from resonera.device.safety.session import load_session_calibration
from resonera.device.session import open_sink
from resonera.device.settings import DeviceSettings
from resonera.engine.audio.sink_base import AudioSink
from resonera.engine.pipeline import build_pipeline

log = logging.getLogger(__name__)

#: Silence around a prompt spoken between sessions: the duck ramp before, a little after.
IDLE_PROMPT_MARGIN_S = 0.5
#: The longest a prompt spoken between sessions plays (silence and all).
IDLE_PROMPT_MAX_S = 120.0
#: How fast the output fades when a press cuts a prompt between sessions, out and back in.
OUTPUT_CUT_FADE_S = 0.005


class CutAhead:
    """The sink of a prompt between sessions, hearing a press's cut at once.

    The mixer cuts a prompt within one block, but the safety chain after it holds ``latency``
    frames of look-ahead (the level ceiling's 100 ms, the limiter's 10 ms): the cut prompt would
    go on that long. Between sessions the program is silence, so what the chain still holds of a
    cut prompt is faded out here, at the output (a gain ≤ 1: it can only lower the level), and the
    output comes back as the frames mixed after the cut come through (the press's answer). In a
    session the program would be gapped, so there the cut is heard after the chain's delay.
    """

    def __init__(self, sink: AudioSink, mixer: PromptMixer, latency: int) -> None:
        self.sink = sink
        self.kind = sink.kind
        self.mixer = mixer
        self.latency = latency
        self._base = mixer.frames_mixed  # output frame o carries mixed frame base + o - latency
        self._written = 0
        self._seen_cut = mixer.cut_at
        self._points: tuple[list[float], list[float]] | None = None

    def open(self, sample_rate: int, channels: int) -> None:
        self.sink.open(sample_rate, channels)
        self._fade = max(1, round(OUTPUT_CUT_FADE_S * sample_rate))

    def write(self, block: NDArray[np.float32]) -> None:
        cut = self.mixer.cut_at
        if cut is not None and cut != self._seen_cut and cut >= self._base:
            self._seen_cut = cut
            start = self._written
            back = max(cut - self._base + self.latency + self.mixer.cut_fade_frames, start)
            self._points = (
                [start, start + self._fade, back + self._fade, back + 2 * self._fade],
                [1.0, 0.0, 0.0, 1.0],
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


class IdlePrompts:
    """Speaks what the panel's mixer holds between sessions: the MCU claimed from the one
    ``monitor`` for the prompt's length (a session starting takes the claim over: the prompt is
    silent from its next block), silence with the prompts mixed in played through the engine's
    pipeline (the session's safety chain: level ceiling, limiter, the MCU's hard limits, the dose
    ``ledger``) to the device's sink, then the MCU muted again. In simulation mode without a
    monitor it plays without consent, as sessions do there."""

    def __init__(
        self,
        settings: DeviceSettings,
        monitor: HardwareMonitor | None,
        ledger: DoseLedger,
        profile: Callable[[], HearingProfile],
        *,
        session_playing: Callable[[], bool] = lambda: False,
        sink: Callable[[DeviceSettings], AudioSink] = open_sink,
    ) -> None:
        self.settings = settings
        self.monitor = monitor
        self.ledger = ledger
        self.profile = profile
        self.session_playing = session_playing
        #: Opens the device's sink (``session.open_sink``; a benchmark's timing sink).
        self.open_sink = sink

    def speak(self, mixer: PromptMixer) -> str:
        """Play what ``mixer`` holds now, and what is queued to it meanwhile, until nothing is
        left to say (``IDLE_PROMPT_MARGIN_S`` after) or a session takes over; how it ended
        (``PlayResult.outcome``: "fault" when the MCU muted it). ``ResoneraError``
        (``HardwareNotReady``: the MCU refuses, e.g. the fault is still there, or a session holds
        it) leaves the prompts queued."""
        settings, monitor = self.settings, self.monitor
        if monitor is None and not settings.simulation:
            raise HardwareNotReady("no safety monitor between sessions")
        calibration = load_session_calibration(settings.calibration_file)
        silence = Program(
            name="prompt", fade_in_s=0.0, fade_out_s=0.0, steps=[Step(duration_s=IDLE_PROMPT_MAX_S)]
        )
        claim: ConsentClaim | None = None
        if monitor is not None:
            claim = monitor.claim("a prompt between sessions", settings.arm_timeout_s)
        quiet_since: list[float] = []

        def done() -> bool:
            """Nothing left to say for the margin, or a session took over (its claim, or in
            simulation its player: two players must not draw on one mixer)."""
            if (claim is not None and not claim.current) or self.session_playing():
                return True
            if mixer.speaking:
                quiet_since.clear()
                return False
            if not quiet_since:
                quiet_since.append(time.monotonic())
            return time.monotonic() - quiet_since[0] >= IDLE_PROMPT_MARGIN_S

        try:
            pipeline = build_pipeline(
                silence,
                sample_rate=settings.sample_rate,
                calibration=calibration,
                profile=self.profile(),
                hard=claim.hello.limits if claim is not None else None,
                ledger=self.ledger,
                wall_clock=time.time,
            )
            result = pipeline.play(
                CutAhead(self.open_sink(settings), mixer, pipeline.chain.latency_frames),
                block_frames=settings.block_frames,
                gate=(lambda: claim.consent) if claim is not None else None,
                reason=(lambda: claim.reason) if claim is not None else None,
                should_stop=done,
                mixer=mixer,
            )
            log.info("prompt spoken between sessions: %s %s", result.outcome, result.reason or "")
            if (claim is not None and not claim.current) or self.session_playing():
                return "stopped"  # a session took the MCU over: no fault of the prompt's
            return result.outcome
        finally:
            if claim is not None:
                claim.release()
