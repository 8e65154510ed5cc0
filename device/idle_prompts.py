"""Prompts spoken between sessions: the MCU claimed from the one monitor for the prompt's length, a
program of silence with the prompts mixed in played through the engine's pipeline under the session's
safety chain, then the MCU muted again (``DeviceService`` gives ``IdlePrompts.speak`` to the panel)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from resonera.common.profile import HearingProfile
from resonera.common.program import Program, Step
from resonera.device.audio.prompt_mixer import PromptMixer
from resonera.device.hwmonitor import ConsentClaim, HardwareMonitor, HardwareNotReady
from resonera.device.safety.dose_ledger import DoseLedger
from resonera.device.safety.session import load_session_calibration
from resonera.device.session import open_sink
from resonera.device.settings import DeviceSettings
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
    ``ledger``) to the device's sink, then the MCU muted again. In simulation mode without a
    monitor it plays without consent, as sessions do there."""

    def __init__(
        self,
        settings: DeviceSettings,
        monitor: HardwareMonitor | None,
        ledger: DoseLedger,
        profile: Callable[[], HearingProfile],
    ) -> None:
        self.settings = settings
        self.monitor = monitor
        self.ledger = ledger
        self.profile = profile

    def speak(self, mixer: PromptMixer) -> None:
        """Play what ``mixer`` holds now. ``ResoneraError`` (``HardwareNotReady``: the MCU
        refuses, e.g. the fault is still there, or a session holds it) leaves the prompts queued."""
        settings, monitor = self.settings, self.monitor
        if monitor is None and not settings.simulation:
            raise HardwareNotReady("no safety monitor between sessions")
        calibration = load_session_calibration(settings.calibration_file)
        seconds = min(IDLE_PROMPT_MAX_S, mixer.pending_s + 2 * IDLE_PROMPT_MARGIN_S)
        silence = Program(
            name="prompt", fade_in_s=0.0, fade_out_s=0.0, steps=[Step(duration_s=seconds)]
        )
        claim: ConsentClaim | None = None
        if monitor is not None:
            claim = monitor.claim("a prompt between sessions", settings.arm_timeout_s)
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
                open_sink(settings),
                block_frames=settings.block_frames,
                gate=(lambda: claim.consent) if claim is not None else None,
                reason=(lambda: claim.reason) if claim is not None else None,
                should_stop=lambda: not mixer.speaking,
                mixer=mixer,
            )
            log.info("prompt spoken between sessions: %s %s", result.outcome, result.reason or "")
        finally:
            if claim is not None:
                claim.release()
