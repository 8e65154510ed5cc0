"""One session on the device: consent, playback, record, queue for sync.

A ``Session`` plays one program with the long-lived owners it is given (``SessionParts``: the
store, the one ``HardwareMonitor`` on the MCU's port, the ``DoseLedger``, the
``SafetyEventRecorder`` and the panel's ``PromptMixer``). The device service builds them once for
its process; a standalone ``resonera-device play`` builds its own (``standalone_parts``).

A session sounds only while two gates agree, read before every block: the MCU's consent to this
session's claim (``HardwareMonitor.claim``) and its safety state machine's ``sound_allowed``
(``device/safety/state.py``). Simulation mode plays without the MCU, which every record it makes
says; without an MCU and without simulation nothing plays.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from resonera.common import serial_link
from resonera.common.dose import crossed_hundreds, dose_fraction, mode_fraction, pressure_squared
from resonera.common.errors import ResoneraError
from resonera.common.ids import new_id
from resonera.common.profile import HearingProfile
from resonera.common.program import Program
from resonera.common.program_check import check_program_for
from resonera.common.records import SessionRecord
from resonera.common.routine_events import NORMAL_END_CAUSE
from resonera.common.session_count import counts_as_session
from resonera.device.audio.cut_ahead import CutAhead
from resonera.device.audio.prompt_mixer import PromptMixer
from resonera.device.backgrounds import BackgroundCache, backgrounds_dir
from resonera.device.hwmonitor import ConsentClaim, HardwareMonitor, WarningAttenuator
from resonera.device.prescriptions import AssignedProgram
from resonera.device.safety.dose_ledger import DoseLedger
from resonera.device.safety.earcup import EarCupCheck
from resonera.device.safety.session import load_session_calibration, preflight
from resonera.device.safety.state import Event
from resonera.device.safety.supervisor import SessionSupervisor
from resonera.device.safety_events import SafetyEventRecorder
from resonera.device.settings import DeviceSettings
from resonera.device.store import DeviceStore
from resonera.device.trusted_time import (
    DatedLedger,
    DoseClock,
    TimeSources,
    untrusted_level_cap,
)
from resonera.engine.audio.calibration import Calibration
from resonera.engine.audio.player import BlockProcessor
from resonera.engine.audio.sinks import AudioSink, NullSink, PyAudioSink, WavSink, open_default_sink
from resonera.engine.pipeline import BlockHook, Pipeline, Playhead, build_pipeline
from resonera.engine.safety.chain import DoseEvent, SafetyChain

log = logging.getLogger(__name__)

__all__ = [
    "NoSafetyMonitor",
    "Session",
    "SessionParts",
    "SessionRefused",
    "SessionWatch",
    "daily_limit_refusal",
    "open_sink",
    "play_standalone",
    "standalone_parts",
]

#: Why a session was stopped when nobody said.
STOPPED_BY_THE_PERSON = "stopped by the person"


class NoSafetyMonitor(ResoneraError):
    """Playing was asked for without a safety MCU and without simulation mode."""


class SessionRefused(ResoneraError):
    """The session would pass the weekly sound allowance and the profile says to refuse it, or
    the day's sessions are used up (``daily``)."""

    def __init__(self, message: str, *, daily: bool = False) -> None:
        super().__init__(message)
        self.daily = daily


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


def daily_limit_refusal(
    store: DeviceStore, now: float, profile: HearingProfile | None = None
) -> str | None:
    """Why a new session may not start today under the clinician's ``max_sessions_per_day`` (the
    person's local day), or None. Only sessions that count (``common.session_count``, under
    ``profile``; default: the applied profile, else the defaults) use up the day: an accidental
    start stopped at once does not."""
    applied = store.applied_desired()
    limits = applied.content.get("limits") if applied is not None else None
    per_day = limits.get("max_sessions_per_day") if isinstance(limits, dict) else None
    if not isinstance(per_day, int) or isinstance(per_day, bool):
        return None
    local = datetime.fromtimestamp(now).astimezone()
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)
    counting = profile or store.applied_profile() or HearingProfile()
    if _counted_sessions_since(store, midnight, counting) < per_day:
        return None
    return f"{per_day} session(s) a day is the limit your clinician set; none is left today"


def _counted_sessions_since(store: DeviceStore, since: datetime, profile: HearingProfile) -> int:
    """Sessions started at or after ``since`` that count as sessions (newest first from the
    store, read in growing pages until one reaches back before ``since``)."""
    limit = 64
    while True:
        records = store.sessions(limit=limit)
        today = [r for r in records if r.started_at >= since]
        if len(today) < len(records) or len(records) < limit:
            return sum(counts_as_session(r.played_s, r.planned_s, profile) for r in today)
        limit *= 4


@dataclass(frozen=True)
class SessionParts:
    """The long-lived owners a session plays with, made once per process: by the device service,
    or by ``standalone_parts`` for a play in a process of its own."""

    settings: DeviceSettings
    store: DeviceStore
    #: The one monitor on the MCU's port (None: no ``serial_url``, or simulation without one).
    monitor: HardwareMonitor | None
    ledger: DoseLedger
    recorder: SafetyEventRecorder
    #: The panel's mixer (prompts, volume, pause), the first stage of the audio path.
    mixer: PromptMixer | None = None
    #: Where a prescribed program's background files are (its ``sha256:`` paths): None, none.
    backgrounds: BackgroundCache | None = None
    #: Where the dose clock reads time (``device/trusted_time.py``; None: the real sources).
    time_sources: TimeSources | None = None


def _say_nothing(_message: str) -> None:
    pass


@dataclass(frozen=True)
class SessionWatch:
    """What a caller sees of a session, all optional: ``notify`` gets the lines for the person
    (the expected dose, 100 % reached), ``on_block`` every block played with the playhead (a
    progress display), ``on_level`` the chain's A-weighted level of each block at the ear (its own
    meter's, so nothing is metered twice)."""

    notify: Callable[[str], None] = _say_nothing
    on_block: BlockHook | None = None
    on_level: Callable[[float], None] | None = None


@dataclass(frozen=True)
class _Played:
    """What a session's record says was played: the program as checked for this person and
    output (background files named by content), its digest, and its prescription if any."""

    program: Program
    digest: str
    prescribed: AssignedProgram | None


class Session:
    """One program played once: ``Session(parts).run(program, sink)``; ``stop(reason)`` from
    any thread fades it out (50 ms) and records it as stopped, for that reason.

    Before anything plays: the calibration must be there, the program must fit the profile in
    force (the applied desired state, else the settings'), the day's sessions must not be used up,
    and the pre-flight tells the expected dose at the level that will play (``watch.notify``) and
    refuses a session that would pass 100 % of the weekly allowance if the profile says so
    (``SessionRefused``). The dose is dated by the dose clock (``device/trusted_time.py``), not
    the wall clock; until the device has trusted time the session plays at most at the dose
    mode's reference level (``untrusted_level_cap``). A sound device
    lost mid-session ends it as a ``fault`` whose reason says so; the record is stored all the
    same. ``session_id``: the id its "before" check-in answers were stored under (default: new).
    ``wall_clock``: the time of day for the day's session limit; the record's times are the dose
    clock's.

    A prescribed program (``run(..., prescribed=)``) names its background files by content; they
    are read from the device's cache (``SessionParts.backgrounds``), and its record carries its
    library id and version, and as its digest the SHA-256 it was prescribed with (the digest of
    what played when it was converted for a speaker).
    """

    def __init__(
        self,
        parts: SessionParts,
        *,
        session_id: str | None = None,
        watch: SessionWatch = SessionWatch(),
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.parts = parts
        self.session_id = session_id or new_id()
        self.watch = watch
        self.wall_clock = wall_clock
        self._stop = threading.Event()
        self._stop_reason = STOPPED_BY_THE_PERSON
        #: The weekly allowance's 100 % action stopped it (set when it has played).
        self.stopped_by_dose = False
        self._dose_events: list[DoseEvent] = []
        #: The ledger dated by the dose clock, from ``run`` on.
        self._dated: DatedLedger | None = None
        #: The session's safety state machine, once ``run`` made it (the service's ``status``).
        self.supervisor: SessionSupervisor | None = None

    def stop(self, reason: str = STOPPED_BY_THE_PERSON) -> None:
        """Fade out and end as ``stopped`` with ``reason`` (who stopped it, and why)."""
        self._stop_reason = reason  # before the event: whoever sees it set finds the reason
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(
        self, program: Program, sink: AudioSink, *, prescribed: AssignedProgram | None = None
    ) -> SessionRecord:
        """Play ``program`` into ``sink`` (not yet open) and store its record; see the class.
        ``prescribed``: the assigned program ``program`` is (None: a built-in or a file)."""
        parts = self.parts
        calibration = load_session_calibration(parts.settings.calibration_file)
        # the applied desired state (signed by the server, limits folded in) overrides the settings
        profile = parts.store.applied_profile() or parts.settings.profile
        checked = check_program_for(program, profile, calibration.output)
        playable = parts.backgrounds.resolve(checked) if parts.backgrounds else checked
        played = _Played(
            checked,
            digest=(
                prescribed.sha256
                if prescribed is not None and checked is program
                else checked.digest()
            ),
            prescribed=prescribed,
        )
        clock = DoseClock(parts.ledger, parts.time_sources)
        clock.refresh()
        self._dated = DatedLedger(clock)
        try:
            profile = self._check_before(playable, profile, calibration, clock)
            supervisor = SessionSupervisor(
                parts.recorder, simulation=parts.settings.simulation, session_id=self.session_id
            )
            self.supervisor = supervisor
            supervisor.handle(Event.START, f"play {program.name!r}")
            with ExitStack() as held:
                claim = self._consent(held, supervisor)
                pipeline = self._pipeline(playable, profile, calibration, claim, supervisor)
                record = self._play(
                    played, profile, pipeline, sink, supervisor=supervisor, claim=claim
                )
        finally:
            parts.recorder.flush()  # the session's events are in the store before its record
        parts.store.record_session(parts.settings.device_id, record)
        return record

    def _check_before(
        self, program: Program, profile: HearingProfile, calibration: Calibration, clock: DoseClock
    ) -> HearingProfile:
        """The ledger's state, the day's limit and the pre-flight dose; raise when refused. The
        profile to play under: its ceiling held where the session will really play."""
        parts, now = self.parts, self.wall_clock()
        week = parts.ledger.status(clock.now(), profile.dose_mode)
        if week.corrupted:  # the server's clinician is the one who can reset it: tell them
            cause = "the dose ledger is damaged: the week counts as fully used until a reset"
            parts.recorder.event("dose_ledger_corrupted", cause, session_id=self.session_id)
        daily = daily_limit_refusal(parts.store, now, profile)
        if daily is not None:
            parts.recorder.event("session_refused", daily, session_id=self.session_id)
            raise SessionRefused(daily, daily=True)
        held, why = held_level(profile, week.fraction, trusted_time=clock.exact)
        check = preflight(
            program,
            sample_rate=parts.settings.sample_rate,
            calibration=calibration,
            profile=held,
            week=week,
        )
        message = check.message + why
        self.watch.notify(message)
        if check.refused:
            parts.recorder.event("session_refused", message, session_id=self.session_id)
            raise SessionRefused(message)
        return held

    def _pipeline(
        self,
        program: Program,
        profile: HearingProfile,
        calibration: Calibration,
        claim: ConsentClaim | None,
        supervisor: SessionSupervisor,
    ) -> Pipeline:
        """The engine's pipeline under the MCU's hard limits, into the ledger, with the MCU's
        warnings ramping the level down before the chain; dose events told and recorded."""
        parts, settings = self.parts, self.parts.settings
        board = claim.board if claim is not None else ""

        def on_dose_event(event: DoseEvent) -> None:
            self._dose_events.append(event)
            self.watch.notify(event.message)
            parts.recorder.event(
                event.kind, event.message, session_id=self.session_id, hardware_board=board
            )
            if event.kind != "dose_stop":  # a stop is fed once its fade-out has played
                supervisor.handle(Event.DOSE_REACHED, event.message)

        warnings: list[BlockProcessor] = []
        if claim is not None:
            monitor = claim.monitor
            warnings.append(WarningAttenuator(lambda: monitor.attenuation_db, settings.sample_rate))
        return build_pipeline(
            program,
            sample_rate=settings.sample_rate,
            calibration=calibration,
            profile=profile,
            hard=claim.hello.limits if claim is not None else None,
            ledger=self._dated,
            wall_clock=self._dated.clock.now if self._dated is not None else self.wall_clock,
            on_dose_event=on_dose_event,
            on_second=_ear_cup_check(claim, parts.recorder, self.session_id),
            before_chain=warnings,
        )

    def _play(
        self,
        played: _Played,
        profile: HearingProfile,
        pipeline: Pipeline,
        sink: AudioSink,
        *,
        supervisor: SessionSupervisor,
        claim: ConsentClaim | None,
    ) -> SessionRecord:
        """Play through both gates; feed the end to ``supervisor``; the session's record."""
        settings, chain, program = self.parts.settings, pipeline.chain, played.program
        started_at = datetime.fromtimestamp(self._record_time(), UTC)
        mixer = self.parts.mixer
        paused_before = mixer.frames_paused if mixer is not None else 0
        if mixer is not None:  # a press's cut of a prompt heard within a block (issue 21)
            duck = 10.0 ** (mixer.duck_db / 20.0)
            sink = CutAhead(sink, mixer, chain.latency_frames, floor_gain=duck)
        result = pipeline.play(
            sink,
            block_frames=settings.block_frames,
            gate=lambda: supervisor.sound_allowed and (claim is None or claim.consent),
            reason=lambda: _silence_reason(supervisor, claim),
            should_stop=lambda: self._stop.is_set() or chain.stop_requested,
            on_block=_with_level(self.watch.on_block, chain, self.watch.on_level),
            mixer=self.parts.mixer,
        )
        ended_at = datetime.fromtimestamp(self._record_time(), UTC)
        # played is the program heard: the silence of a pause is not (it still counts in the dose)
        paused = (mixer.frames_paused - paused_before) if mixer is not None else 0
        played_s = max(0.0, result.played_s - paused / settings.sample_rate)
        self._dose_last_part(chain, profile)
        dose_stop = chain.stop_requested and bool(self._dose_events)
        self.stopped_by_dose = result.outcome == "stopped" and dose_stop
        reason = result.reason or (self._dose_events[-1].message if dose_stop else "")
        if result.outcome == "fault":
            supervisor.handle(Event.FAULT, reason)
        elif result.outcome == "stopped" and dose_stop:
            supervisor.handle(Event.DOSE_STOP, reason)
        elif result.outcome == "stopped":
            reason = reason or self._stop_reason  # who stopped it, and why
            supervisor.handle(Event.STOP, reason)
        else:
            supervisor.handle(Event.SESSION_END, NORMAL_END_CAUSE)
        return SessionRecord(
            session_id=self.session_id,
            program_name=program.name,
            program_digest=played.digest,
            program_library_id=played.prescribed.library_id if played.prescribed else None,
            program_version=played.prescribed.version if played.prescribed else None,
            started_at=started_at,
            ended_at=ended_at,
            planned_s=program.duration_s,
            played_s=played_s,
            outcome=result.outcome,
            reason=reason,
            sink=sink.kind,
            sample_rate=settings.sample_rate,
            peak_dbfs=result.peak_dbfs,
            rms_dbfs=result.rms_dbfs,
            simulation=settings.simulation,
            hardware_board=claim.board if claim is not None else "",
            dose_fraction=mode_fraction(chain.session_dose, profile.dose_mode, 1),
            laeq_dba=max(-100.0, chain.laeq_dba),
            max_mel_dba=max([-100.0, *chain.mels]),
            underruns=result.underruns,
        )

    def _record_time(self) -> float:
        """When the record says the session started or ended: the dose clock's time, never before
        this release and carried on from trusted time (a clock reading 1970 dates nothing then)."""
        return self._dated.clock.now() if self._dated is not None else self.wall_clock()

    def _dose_last_part(self, chain: SafetyChain, profile: HearingProfile) -> None:
        """The chain's meter adds whole seconds to the ledger; the incomplete last one (all of a
        0.05 s accidental start) is added here, so every second played counts toward the dose
        whatever the session's length (a session too short to count as one still does). If it
        takes the week past 100 % (or a further 100 %), the person is told and it is recorded,
        as the chain does for a whole second; there is no sound left to lower or stop."""
        partial = chain.meter.flush()
        if partial is None or self._dated is None:
            return
        level_dba, length_s = partial
        dated = self._dated
        dated.add_energy(
            dated.clock.now(), pressure_squared(level_dba) * length_s, seconds=round(length_s)
        )
        added = dose_fraction(level_dba, length_s, profile.dose_mode)
        before, chain.week_fraction = chain.week_fraction, chain.week_fraction + added
        chain.session_dose += added
        for hundred in crossed_hundreds(before, chain.week_fraction):
            message = f"you have used {hundred * 100} % of this week's safe listening allowance"
            self.watch.notify(message)
            self.parts.recorder.event("dose_reached", message, session_id=self.session_id)

    def _consent(self, held: ExitStack, supervisor: SessionSupervisor) -> ConsentClaim | None:
        """The MCU armed for this session (released when ``held`` closes), its consent changes
        and warnings fed to ``supervisor``; None in simulation mode, which is recorded."""
        settings, monitor = self.parts.settings, self.parts.monitor
        if settings.simulation:
            cause = "simulation mode: playing without the safety MCU's consent"
            log.warning("SIMULATION MODE: playing without the safety MCU's consent")
            self.parts.recorder.event("no_monitor", cause, session_id=self.session_id)
            supervisor.handle(Event.ARMED, cause)
            return None
        if monitor is None:
            supervisor.handle(Event.ARM_FAILED, "no safety MCU configured")
            raise NoSafetyMonitor(
                "no safety MCU configured (serial_url), so nothing will play; "
                "use --simulation for a bench run without hardware (marked on every record)"
            )
        try:
            claim = monitor.claim(
                f"session {self.session_id}", settings.arm_timeout_s, preempt=True
            )
        except ResoneraError as exc:
            supervisor.handle(Event.ARM_FAILED, str(exc))
            raise
        held.callback(claim.release)

        def on_consent(consent: bool, why: str) -> None:
            if not consent:
                supervisor.handle(Event.FAULT, why)

        def on_warning(attenuation_db: float, _text: str) -> None:
            warning = Event.WARNING if attenuation_db < 0 else Event.WARNING_CLEARED
            supervisor.handle(warning, "hardware warning")

        # removed before the release: its MUTE ends the session, it is no fault of it
        monitor.add_listener(on_consent)
        held.callback(monitor.remove_listener, on_consent)
        monitor.add_warning_listener(on_warning)
        held.callback(monitor.remove_warning_listener, on_warning)
        if not claim.consent:  # withdrawn between the arm and the listener: the gate says so too
            supervisor.handle(Event.FAULT, claim.reason)
        supervisor.handle(Event.ARMED, f"safety MCU {claim.board} armed")
        log.info("safety MCU %s armed; playing with its consent", claim.board)
        return claim


def held_level(
    profile: HearingProfile, week_fraction: float, *, trusted_time: bool
) -> tuple[HearingProfile, str]:
    """``profile`` with its ceiling where a session starting now really plays, and why, for the
    pre-flight's words ("" when at the profile's maximum): at the fallback once the week's
    allowance is used (``attenuate``: the chain starts there), and at most at the dose mode's
    reference level while the time is untrusted."""
    level, why = profile.max_level_dba, ""
    cap = untrusted_level_cap(profile.dose_mode)
    if not trusted_time and cap < level:
        level = cap
        why = (
            f"; the device's clock is not confirmed by network time yet, so it plays at most at "
            f"{cap:g} dBA"
        )
    fallback = profile.fallback_level_dba
    if week_fraction >= 1.0 and profile.on_dose_reached == "attenuate" and fallback < level:
        level = fallback
        why = f"; this week's allowance is used, so it plays at most at {fallback:g} dBA"
    if level == profile.max_level_dba:
        return profile, ""
    return profile.model_copy(update={"max_level_dba": level}), why


def _silence_reason(supervisor: SessionSupervisor, claim: ConsentClaim | None) -> str:
    """Why a session's gate is closed: the MCU's word first, else its safety state's."""
    if claim is not None and not claim.consent:
        return claim.reason
    return supervisor.silence_reason or "the safety gate closed"


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
    claim: ConsentClaim | None, recorder: SafetyEventRecorder, session_id: str
) -> Callable[[float], None]:
    """Each second, the predicted level against the ear-cup microphone, where the board has one;
    a sustained disagreement mutes (the calibration cannot be trusted)."""
    if claim is None or claim.hello.limits.max_ear_spl_db <= 0:
        return lambda _mel: None
    check = EarCupCheck()
    monitor, board = claim.monitor, claim.board

    def on_second(predicted_dba: float) -> None:
        telemetry = monitor.telemetry
        reason = check.second(predicted_dba, telemetry.ear_spl_db if telemetry else None)
        if reason is not None:
            log.error("%s", reason)
            code = serial_link.FAULT_CALIBRATION
            recorder.event("fault", reason, code=code, session_id=session_id, hardware_board=board)
            monitor.request_mute(code)

    return on_second


@contextmanager
def standalone_parts(settings: DeviceSettings, store: DeviceStore) -> Iterator[SessionParts]:
    """A session's owners for a process of its own (``resonera-device play`` without the
    service): the recorder, the ledger and, unless in simulation mode, one monitor on the MCU's
    port for as long as this lasts. Closed in reverse: the MCU muted, every event written."""
    with ExitStack() as owned:
        recorder = owned.enter_context(
            SafetyEventRecorder(store, settings.device_id, simulation=settings.simulation)
        )
        ledger = DoseLedger.for_settings(settings)  # sealed under the settings' data key
        owned.callback(ledger.close)
        monitor: HardwareMonitor | None = None
        if settings.serial_url is not None and not settings.simulation:
            monitor = owned.enter_context(
                _started(HardwareMonitor(settings.serial_url, events=recorder))
            )
        backgrounds = BackgroundCache(backgrounds_dir(settings.data_dir))
        yield SessionParts(settings, store, monitor, ledger, recorder, backgrounds=backgrounds)


@contextmanager
def _started(monitor: HardwareMonitor) -> Iterator[HardwareMonitor]:
    """``monitor`` started (a missing port is tried again: arming says why), stopped after."""
    monitor.start(wait_for_port=True)
    try:
        yield monitor
    finally:
        monitor.stop()


def play_standalone(
    settings: DeviceSettings,
    store: DeviceStore,
    program: Program,
    sink: AudioSink,
    *,
    watch: SessionWatch = SessionWatch(),
    prescribed: AssignedProgram | None = None,
) -> SessionRecord:
    """One session with owners of its own (``standalone_parts``), start to stored record;
    ``prescribed``: the assigned program ``program`` is (``prescriptions.choose_program``)."""
    with standalone_parts(settings, store) as parts:
        return Session(parts, watch=watch).run(program, sink, prescribed=prescribed)
