"""One session, end to end on the device: consent, playback, record, queue for sync.

The agent plays only while the safety MCU consents, unless the device was started in simulation mode,
which every record it makes says.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from resonera.common import serial_link
from resonera.common.dose import mode_fraction
from resonera.common.errors import ResoneraError
from resonera.common.ids import new_id
from resonera.common.program import Program
from resonera.common.program_check import check_program_for
from resonera.common.records import SessionRecord
from resonera.common.safety_link import HardLimits
from resonera.device.audio.prompt_mixer import PromptMixer
from resonera.device.hwmonitor import ControlPanel, HardwareMonitor, WarningAttenuator
from resonera.device.safety.dose_ledger import DoseLedger
from resonera.device.safety.earcup import EarCupCheck
from resonera.device.safety.session import load_session_calibration, preflight
from resonera.device.safety.state import Event
from resonera.device.safety.supervisor import SessionSupervisor
from resonera.device.safety_events import SafetyEventRecorder
from resonera.device.settings import DeviceSettings
from resonera.device.store import DeviceStore
from resonera.engine.audio.player import BlockProcessor
from resonera.engine.audio.sinks import AudioSink, NullSink, PyAudioSink, WavSink, open_default_sink
from resonera.engine.pipeline import BlockHook, Playhead, build_pipeline
from resonera.engine.safety.chain import DoseEvent, SafetyChain

log = logging.getLogger(__name__)


class NoSafetyMonitor(ResoneraError):
    """Playing was asked for without a safety MCU and without simulation mode."""


class SessionRefused(ResoneraError):
    """The session would pass the weekly sound allowance and the profile says to refuse it, or
    the day's sessions are used up."""


def open_sink(settings: DeviceSettings, wav_path: Path | None = None) -> AudioSink:
    """The sink the settings ask for; ``auto`` is the sound card when there is one, else a WAV."""
    wav = wav_path or settings.default_wav_path
    if settings.sink == "pyaudio":
        return PyAudioSink(output_device=settings.output_device)
    if settings.sink == "wav":
        return WavSink(wav)
    if settings.sink == "null":
        return NullSink()
    return open_default_sink(
        wav, sample_rate=settings.sample_rate, output_device=settings.output_device
    )


def daily_limit_refusal(store: DeviceStore, now: float) -> str | None:
    """Why a new session may not start today under the clinician's ``max_sessions_per_day`` (the
    person's local day), or None."""
    applied = store.applied_desired()
    limits = applied.content.get("limits") if applied is not None else None
    per_day = limits.get("max_sessions_per_day") if isinstance(limits, dict) else None
    if not isinstance(per_day, int) or isinstance(per_day, bool):
        return None
    local = datetime.fromtimestamp(now).astimezone()
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)
    if store.sessions_since(midnight) < per_day:
        return None
    return f"{per_day} session(s) a day is the limit your clinician set; none is left today"


def play_session(
    settings: DeviceSettings,
    store: DeviceStore,
    program: Program,
    sink: AudioSink,
    *,
    stop: threading.Event | None = None,
    on_block: BlockHook | None = None,
    notify: Callable[[str], None] = lambda _message: None,
    wall_clock: Callable[[], float] = time.time,
    stop_reason: Callable[[], str] = lambda: "",
    on_level: Callable[[float], None] | None = None,
    mixer: PromptMixer | None = None,
    panel: ControlPanel | None = None,
    session_id: str | None = None,
) -> SessionRecord:
    """Play ``program`` to ``sink`` with the MCU's consent, through the safety chain, then store
    the session and queue it.

    Before anything plays: the calibration must be there, and the session's expected dose is told
    (``notify``) and, if the profile says so, a session that would pass 100 % of the weekly
    allowance is refused (``SessionRefused``). ``stop_reason`` says why ``stop`` was set, for the
    record (default: the person stopped it). ``on_level`` gets the chain's A-weighted level of each
    block at the ear (for a display; the chain's own meter, so nothing is metered twice).
    ``on_block`` sees every block played (a progress display). A sound device lost mid-session
    ends the session as a ``fault`` whose reason says so; the record is stored all the same.
    ``mixer`` (the device's ``PromptMixer``) is the first stage of the audio path, before the
    chain: prompts, the person's volume and pause. ``panel`` (the device's buttons and light) is
    served by the session's safety monitor while it holds the MCU's port. ``session_id``: the id
    its "before" check-in answers were already stored under (default: a new one).
    """
    stop = stop or threading.Event()
    calibration = load_session_calibration(settings.calibration_file)
    # the applied desired state (signed by the server, limits folded in) overrides the settings
    profile = store.applied_profile() or settings.profile
    program = check_program_for(program, profile, calibration.output)
    session_id = session_id or new_id()
    with ExitStack() as stack:
        recorder = SafetyEventRecorder(store, settings.device_id, simulation=settings.simulation)
        stack.callback(recorder.close)  # last out: every event is written before we return
        ledger = DoseLedger.for_settings(settings)  # sealed under the settings' data key
        stack.callback(ledger.close)
        week = ledger.status(wall_clock(), profile.dose_mode)
        if week.corrupted:  # the server's clinician is the one who can reset it: tell them
            cause = "the dose ledger is damaged: the week counts as fully used until a reset"
            recorder.event("dose_ledger_corrupted", cause, session_id=session_id)
        daily = daily_limit_refusal(store, wall_clock())
        if daily is not None:
            recorder.event("session_refused", daily, session_id=session_id)
            raise SessionRefused(daily)
        check = preflight(
            program,
            sample_rate=settings.sample_rate,
            calibration=calibration,
            profile=profile,
            week=week,
        )
        notify(check.message)
        if check.refused:
            recorder.event("session_refused", check.message, session_id=session_id)
            raise SessionRefused(check.message)

        supervisor = SessionSupervisor(
            recorder, simulation=settings.simulation, session_id=session_id
        )
        supervisor.handle(Event.START, f"play {program.name!r}")
        monitor, hard, board = _arm(settings, stack, recorder, supervisor, panel)
        dose_events: list[DoseEvent] = []

        def on_dose_event(event: DoseEvent) -> None:
            dose_events.append(event)
            notify(event.message)
            recorder.event(event.kind, event.message, session_id=session_id, hardware_board=board)
            kind = Event.DOSE_STOP if event.kind == "dose_stop" else Event.DOSE_REACHED
            supervisor.handle(kind, event.message)

        on_second = _ear_cup_check(monitor, hard, recorder, session_id, board)
        warnings: list[BlockProcessor] = []
        if monitor is not None:
            # hardware warnings (e.g. a warm amplifier) ramp the level down before the chain
            live = monitor
            warnings.append(WarningAttenuator(lambda: live.attenuation_db, settings.sample_rate))
        pipeline = build_pipeline(
            program,
            sample_rate=settings.sample_rate,
            calibration=calibration,
            profile=profile,
            hard=hard,
            ledger=ledger,
            wall_clock=wall_clock,
            on_dose_event=on_dose_event,
            on_second=on_second,
            before_chain=warnings,
        )
        chain = pipeline.chain
        started_at = datetime.fromtimestamp(wall_clock(), UTC)
        result = pipeline.play(
            sink,
            block_frames=settings.block_frames,
            gate=(lambda: monitor.consent) if monitor is not None else None,
            reason=(lambda: monitor.reason) if monitor is not None else (lambda: ""),
            should_stop=lambda: stop.is_set() or chain.stop_requested,
            on_block=_with_level(on_block, chain, on_level),
            mixer=mixer,
        )
        ended_at = datetime.fromtimestamp(wall_clock(), UTC)
        reason = result.reason or (dose_events[-1].message if chain.stop_requested else "")
        if result.outcome == "stopped" and not reason:
            reason = stop_reason()  # who set ``stop``, and why (the person, the clinician, ...)
        if result.outcome == "fault":
            supervisor.handle(Event.FAULT, reason)
        elif result.outcome == "stopped":
            supervisor.handle(Event.STOP, reason or "stopped by the person")
        else:
            supervisor.handle(Event.SESSION_END, "program completed")

    record = SessionRecord(
        session_id=session_id,
        program_name=program.name,
        program_digest=program.digest(),
        started_at=started_at,
        ended_at=ended_at,
        planned_s=program.duration_s,
        played_s=result.played_s,
        outcome=result.outcome,
        reason=reason,
        sink=sink.kind,
        sample_rate=settings.sample_rate,
        peak_dbfs=result.peak_dbfs,
        rms_dbfs=result.rms_dbfs,
        simulation=settings.simulation,
        hardware_board=board,
        dose_fraction=mode_fraction(chain.session_dose, profile.dose_mode, 1),
        laeq_dba=max(-100.0, chain.laeq_dba),
        max_mel_dba=max([-100.0, *chain.mels]),
        underruns=result.underruns,
    )
    store.record_session(settings.device_id, record)
    return record


def _with_level(
    on_block: BlockHook | None,
    chain: SafetyChain,
    on_level: Callable[[float], None] | None,
) -> BlockHook | None:
    """``on_block``, preceded by handing on the chain meter's level of the block."""
    if on_level is None:
        return on_block

    def hook(block: NDArray[np.float32], renderer: Playhead) -> None:
        level = chain.meter.block_level
        if level is not None:
            on_level(level)
        if on_block is not None:
            on_block(block, renderer)

    return hook


def _ear_cup_check(
    monitor: HardwareMonitor | None,
    hard: HardLimits | None,
    recorder: SafetyEventRecorder,
    session_id: str,
    board: str,
) -> Callable[[float], None]:
    """Each second, the predicted level against the ear-cup microphone, where the board has one;
    a sustained disagreement mutes (the calibration cannot be trusted)."""
    if monitor is None or hard is None or hard.max_ear_spl_db <= 0:
        return lambda _mel: None
    check = EarCupCheck()
    live = monitor

    def on_second(predicted_dba: float) -> None:
        telemetry = live.telemetry
        reason = check.second(predicted_dba, telemetry.ear_spl_db if telemetry else None)
        if reason is not None:
            log.error("%s", reason)
            code = serial_link.FAULT_CALIBRATION
            recorder.event("fault", reason, code=code, session_id=session_id, hardware_board=board)
            live.request_mute(code)

    return on_second


def _arm(
    settings: DeviceSettings,
    stack: ExitStack,
    recorder: SafetyEventRecorder,
    supervisor: SessionSupervisor,
    panel: ControlPanel | None,
) -> tuple[HardwareMonitor | None, HardLimits | None, str]:
    """Open the safety MCU and get its consent (or, in simulation mode, say loudly that there is
    none). Returns the monitor, the MCU's hard limits and the board's name."""
    if settings.simulation:
        cause = "simulation mode: playing without the safety MCU's consent"
        log.warning("SIMULATION MODE: playing without the safety MCU's consent")
        recorder.event("no_monitor", cause, session_id=supervisor.session_id)
        supervisor.handle(Event.ARMED, cause)
        return None, None, ""
    if settings.serial_url is None:
        supervisor.handle(Event.ARM_FAILED, "no safety MCU configured")
        raise NoSafetyMonitor(
            "no safety MCU configured (serial_url), so nothing will play; "
            "use --simulation for a bench run without hardware (marked on every record)"
        )
    monitor = stack.enter_context(
        HardwareMonitor(settings.serial_url, events=recorder, panel=panel)
    )
    try:
        hello = monitor.arm(settings.arm_timeout_s)
    except ResoneraError as exc:
        supervisor.handle(Event.ARM_FAILED, str(exc))
        raise
    board = f"{hello.board_id} fw {hello.firmware_version}"

    def on_consent(consent: bool, why: str) -> None:
        if not consent:
            supervisor.handle(Event.FAULT, why)

    def on_warning(attenuation_db: float, _text: str) -> None:
        warning = Event.WARNING if attenuation_db < 0 else Event.WARNING_CLEARED
        supervisor.handle(warning, "hardware warning")

    monitor.add_listener(on_consent)
    monitor.add_warning_listener(on_warning)
    supervisor.handle(Event.ARMED, f"safety MCU {board} armed")
    log.info("safety MCU %s armed; playing with its consent", board)
    return monitor, hello.limits, board
