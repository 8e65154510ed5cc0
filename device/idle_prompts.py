"""Prompts spoken between sessions: the MCU claimed from the one monitor for the prompt's length, a
program of silence with the prompts mixed in played through the engine's pipeline under the session's
safety chain, then the MCU muted again (``DeviceService`` gives ``IdlePrompts.speak`` to the panel,
which calls it on its speaker thread: a press meanwhile cuts the prompt, ``PromptMixer.cut``, and
the pipeline ends once nothing is left to say)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from resonera.common.profile import HearingProfile
from resonera.common.program import Program, Step
from resonera.device.audio.cut_ahead import CutAhead
from resonera.device.audio.prompt_mixer import PromptMixer
from resonera.device.hwmonitor import ConsentClaim, HardwareMonitor, HardwareNotReady
from resonera.device.safety.session import load_session_calibration
from resonera.device.session import open_sink
from resonera.device.settings import DeviceSettings
from resonera.device.trusted_time import DatedLedger, DoseClock
from resonera.engine.audio.sink_base import AudioSink
from resonera.engine.pipeline import build_pipeline

log = logging.getLogger(__name__)

#: Silence around a prompt spoken between sessions: the duck ramp before, a little after.
IDLE_PROMPT_MARGIN_S = 0.5
#: The longest a prompt spoken between sessions plays (silence and all).
IDLE_PROMPT_MAX_S = 120.0


class IdlePrompts:
    """Speaks what the panel's mixer holds between sessions: the MCU claimed from the one
    ``monitor`` for the prompt's length (a session starting takes the claim over: the prompt is
    silent from its next block), silence with the prompts mixed in played through the engine's
    pipeline (the session's safety chain: level ceiling, limiter, the MCU's hard limits, the dose
    ledger, dated by ``dose_clock``) to the device's sink, then the MCU muted again. In simulation
    mode without a monitor it plays without consent, as sessions do there."""

    def __init__(
        self,
        settings: DeviceSettings,
        monitor: HardwareMonitor | None,
        dose_clock: DoseClock,
        profile: Callable[[], HearingProfile],
        *,
        session_playing: Callable[[], bool] = lambda: False,
        sink: Callable[[DeviceSettings], AudioSink] = open_sink,
    ) -> None:
        self.settings = settings
        self.monitor = monitor
        self.dose_clock = dose_clock
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
                ledger=DatedLedger(self.dose_clock),
                wall_clock=self.dose_clock.now,
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
