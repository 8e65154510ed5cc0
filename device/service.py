"""``resonera-device run``: the agent as one long-running, supervised process, and its composition
root.

It stays one module (some 600 lines): the composition root, the service's lifecycle and the control
socket's commands are one object's, and a newcomer reads what owns what in one place.

``DeviceService`` builds, once and through constructors, one owner per long-lived resource and
holds it for the process's life:

- ``store`` (``DeviceStore``: records and the outbox) and ``ledger`` (``DoseLedger``: the week's
  dose; sessions and prompts write it, the panel reads it, a clinician's reset repairs it);
- ``recorder`` (``SafetyEventRecorder``): every safety event of the process, link and session;
- ``monitor`` (``HardwareMonitor``, when a ``serial_url`` is set): the one opener of the safety
  MCU's port, for the process's life. Sessions, prompts between sessions and check-ins ask it for
  the MCU's consent (``claim``); none opens the port or hands it over. A port that is missing or
  lost is reopened by the monitor, and meanwhile nobody has consent;
- ``panel`` (``Panel``: buttons, status light, spoken prompts), built for this service through
  ``PanelHost`` (the methods below under "the panel's host"); the monitor serves it, and every
  session plays through its prompt mixer;
- ``applier`` (``DesiredStateApplier``) and ``sync`` (``DeviceSync``: the MQTT connection,
  draining the outbox; its paho client from ``client_factory``); desired states are taken on a
  thread of their own (``desired``), in the order they come, since a prescribed program's
  background file may take a while to fetch;
- ``backgrounds`` (``BackgroundCache``): the prescribed programs' background files.

What plays (issue 20): the programs the clinician prescribed, as the applied desired state brought
them and the store keeps them (``DeviceStore.assigned_programs``), by name (any case) or library
id; with none prescribed, the device's own programs (``resolve_program``: the built-ins, a file)
only if the person's profile allows it (``builtin_when_unassigned``), and the play button then
plays ``BUILTIN_DEFAULT``. Anything else is refused saying why.

Inside the process:
- the player: one ``Session`` at a time (``device/session.py``) in a thread of its own, started
  and stopped through the control socket or the buttons; ``SIGTERM`` fades it out (``stop``),
  records it, then closes everything;
- check-ins (issue 12): the panel asks the profile's questions around each session; each answer
  is stored sealed and queued as a ``checkin`` message here at once, under the session's id (the
  "before" answers fix the id the session then plays under);
- telemetry: a ``metrics`` message with the outbox depth every ``sync.telemetry_interval_s``,
  the agent's version and the safety MCU's firmware version (its last HELLO; the dashboard's
  devices page shows both);
- the control socket ``run.sock`` in the data directory (mode 0600): one line in, one line out.
  ``play [PROGRAM]`` → ``ok …`` or ``error …`` (no program: the first prescribed, else the
  built-in default if allowed); ``stop`` → ``ok …``; ``status`` → one JSON object.

Nothing here is needed to stay safe: the outbox, the dose ledger and the stores are durable, so a
SIGKILL at any point loses at most the session that was playing (never a stored record).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from resonera.common import serial_link as sl
from resonera.common.errors import ResoneraError
from resonera.common.ids import new_id
from resonera.common.mqtt_client import build_client
from resonera.common.profile import HearingProfile
from resonera.common.program import Program
from resonera.common.program_check import check_program_for
from resonera.common.records import CheckInRecord, SessionRecord
from resonera.device.backgrounds import BackgroundCache
from resonera.device.controls import Answered
from resonera.device.desired_state import DesiredStateApplier
from resonera.device.enroll import renew_daily, renewed_mqtt
from resonera.device.hwmonitor import HardwareMonitor, HardwareNotReady
from resonera.device.idle_prompts import IdlePrompts
from resonera.device.memory import release_free_memory
from resonera.device.panel import Panel, panel_for
from resonera.device.prescriptions import BUILTIN_DEFAULT, AssignedProgram, choose_program
from resonera.device.refusals import (
    CLOCK_SLACK_S,
    MIN_FREE_BYTES,
    UPDATING_DETAIL,
    PlayFacts,
    Refusal,
    StoppedFacts,
    refusal,
    why_cannot_play,
    why_it_stopped,
)
from resonera.device.safety.dose_ledger import DoseLedger
from resonera.device.safety.session import load_session_calibration
from resonera.device.safety_events import SafetyEventRecorder
from resonera.device.session import (
    Session,
    SessionParts,
    SessionRefused,
    SessionWatch,
    daily_limit_refusal,
    open_sink,
)
from resonera.device.settings import DeviceSettings
from resonera.device.store import DeviceStore
from resonera.device.sync import ClientFactory, DeviceSync
from resonera.device.trusted_time import DoseClock
from resonera.device.updater.launcher import EX_TEMPFAIL
from resonera.device.updater.updater import AgentUpdates, ServiceHooks
from resonera.device.version import agent_version

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 1024


class ServiceUnavailable(ResoneraError):
    """No ``resonera-device run`` answers on the control socket."""


class PlayRefused(ResoneraError):
    """A session may not start now: ``refusal`` says why (its words are the spoken prompt's)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class _InOrder:
    """Work run one piece at a time, in the order given, on a daemon thread of its own (taking a
    desired state: a download must not hold up MQTT's network thread; one that outlives the
    service's stop is cut short by the process's end, and its document is taken again at the
    next start, as nothing of it was stored)."""

    def __init__(self, name: str) -> None:
        self._work: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def __call__(self, work: Callable[[], None]) -> None:
        self._work.put(work)

    def close(self, timeout_s: float) -> None:
        self._work.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while (work := self._work.get()) is not None:
            try:
                work()
            except Exception:  # one document's failure must not stop the next
                log.exception("taking a desired state failed")


@dataclass
class _Playing:
    program: str
    started_at: float
    session: Session
    thread: threading.Thread


#: Records count as going to the server this long after the last ack.
SYNCING_WINDOW_S = 2.0


def _log_line(message: str) -> None:
    log.info("%s", message)


class DeviceService:
    """Build, then ``run()`` (blocks until ``shutdown()`` or SIGTERM/SIGINT); see the module."""

    def __init__(
        self,
        settings: DeviceSettings,
        resolve_program: Callable[[str], Program],
        *,
        store: DeviceStore | None = None,
        client_factory: ClientFactory = build_client,
    ) -> None:
        self.settings = settings
        self.resolve_program = resolve_program
        self.store: DeviceStore = store or settings.open_store()
        self.ledger: DoseLedger = DoseLedger.for_settings(settings)
        #: What the ledger dates exposure by, and the week is asked at (``trusted_time.py``).
        self.dose_clock = DoseClock(self.ledger)
        self.recorder: SafetyEventRecorder = SafetyEventRecorder(
            self.store, settings.device_id, simulation=settings.simulation
        )
        self.monitor: HardwareMonitor | None = (
            None
            if settings.serial_url is None
            else HardwareMonitor(settings.serial_url, events=self.recorder)
        )
        idle_prompts = IdlePrompts(
            settings,
            self.monitor,
            self.dose_clock,
            self.profile_in_force,
            session_playing=lambda: self._playing is not None,
        )
        self.panel: Panel = panel_for(settings, self, speak_idle=idle_prompts.speak)
        if self.monitor is not None:
            self.monitor.attach_panel(self.panel)
        self.applier: DesiredStateApplier = DesiredStateApplier.for_settings(
            settings,
            self.store,
            on_lowered=self._limits_lowered,
            on_applied=self._profile_applied,
            open_ledger=self._ledger_for_reset,
            on_update=self._agent_update_asked,
        )
        self.backgrounds: BackgroundCache | None = self.applier.backgrounds
        self._desired = _InOrder("desired")
        self.sync: DeviceSync = DeviceSync(
            settings,
            self.store,
            desired=self.applier,
            client_factory=client_factory,
            dispatch_desired=self._desired,
        )
        #: Agent updates (issue 25, ``device/updater/``): prepared beside this agent, switched to
        #: between sessions by exiting ``EX_TEMPFAIL`` for the launcher; sessions refused meanwhile.
        self.updates = AgentUpdates(
            settings,
            self.store,
            agent_version(),
            ServiceHooks(
                self.monitor,
                lambda: self.sync.connected,
                lambda: self.sync.last_error,
                self.sync.kick,
                self._hold_sessions,
                self._release_sessions,
                self._restart_for_update,
            ),
        )
        self._updating = False
        self._exit_code = 0
        self.started = time.time()
        self.last_session: SessionRecord | None = None
        self.last_error = ""
        self._lock = threading.Lock()
        self._playing: _Playing | None = None
        #: The id the next session will have, fixed by its first "before" check-in answer (stored
        #: at once under it, so a crash mid-session loses none), and the last session's id.
        self._next_session: str | None = None
        self._ended_session: str | None = None
        self._shutdown = threading.Event()
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        #: The MCU's firmware version from the last HELLO seen (kept after the link is lost:
        #: telemetry reports the board it was).
        self._firmware: str | None = None
        #: Why the last session ended short (``refusals.why_it_stopped``; None: as chosen or
        #: completed) and whether it played at all; the panel takes it once (``ended_why``).
        self._ended_why: tuple[Refusal | None, bool] | None = None
        self._limits_lowered_stop = False
        #: The wall clock the refusals are judged by (``play_facts``); a test may set it.
        self.clock: Callable[[], float] = time.time
        #: Below this many free bytes in ``data_dir`` the storage counts as full.
        self.min_free_bytes = MIN_FREE_BYTES
        #: The store failed the last write the service made (a check-in, telemetry): no session
        #: starts that could not be recorded (``refusals``: storage full), until one succeeds.
        self._store_write_failed = False
        #: The MCU has reported headphones plugged in (or refused for their absence) since start.
        self._headphones_seen = False

    @property
    def session_parts(self) -> SessionParts:
        """What every session of this process plays with: the owners above."""
        return SessionParts(
            self.settings,
            self.store,
            self.monitor,
            self.ledger,
            self.recorder,
            self.panel.mixer,
            self.backgrounds,
        )

    # --- lifecycle -------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT or ``shutdown()``; 0 after a clean shutdown."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda _s, _f: self._shutdown.set())
        self.start()
        release_free_memory()  # what start-up (imports, migrations, prompts) freed
        try:
            interval = self.settings.sync.telemetry_interval_s
            while not self._shutdown.wait(timeout=interval):
                self._refresh_dose_clock()
                self.queue_telemetry()
        finally:
            self.close()
        return self._exit_code

    def start(self) -> None:
        self._desired.start()
        # before any document arrives: the prompts spoken again, if a prompt build since the
        # profile was applied dropped them; then an engine upgraded (or a file not fetched
        # before) reviews the programs, and reports
        self._desired(lambda: self._profile_applied(self.applier.current_profile()))
        self._desired(self._reassess)
        self.sync.start()
        self._open_socket()
        self.panel.start()
        if self.monitor is not None:
            self.monitor.start(wait_for_port=True)  # a missing port is tried again, as a lost one
        self._refresh_dose_clock()
        self.queue_telemetry()
        self._start_renewal()
        applied = self.store.applied_desired()
        self.updates.start(applied.content if applied is not None else None)
        log.info(
            "resonera-device run: device %s, control socket %s",
            self.settings.device_id,
            self.settings.control_socket_path,
        )

    def _refresh_dose_clock(self) -> None:
        """Network time that arrived between sessions is taken at once (the untrusted minutes
        moved), and the floor the ledger keeps moves on with the boot clock across reboots."""
        try:
            self.dose_clock.refresh()
        except Exception:  # a ledger that cannot be written now: the next session says why
            log.exception("the dose clock could not be refreshed")

    def _start_renewal(self) -> None:
        """Renew the enrolled certificate now and daily when it nears its end (device/enroll.py)."""

        def renewed(key: ec.EllipticCurvePrivateKey) -> None:
            self.store.signing_key = key  # what is queued from now on is signed with the new key
            mqtt = renewed_mqtt(self.settings)
            if mqtt is not None:  # the broker is to see the new certificate, not the old
                self.sync.reconnect(mqtt)

        threading.Thread(
            target=renew_daily,
            args=(self.settings, self._shutdown, renewed),
            name="renewal",
            daemon=True,
        ).start()

    def shutdown(self) -> None:
        self._shutdown.set()

    def _agent_update_asked(self, content: dict[str, Any]) -> None:
        self.updates.desired(content)  # built after the applier, which is built before sync

    def _hold_sessions(self) -> bool:
        """The switch to a new agent: no session starts from now on (False: one plays)."""
        with self._lock:
            if self._playing is not None:
                return False
            self._updating = True
            return True

    def _release_sessions(self) -> None:
        with self._lock:
            self._updating = False

    def _restart_for_update(self) -> None:
        """Shut down as usual, then exit 75: the launcher starts the slot ``state.json`` names."""
        self._exit_code = EX_TEMPFAIL
        self._shutdown.set()

    def close(self) -> None:
        """Fade out and record a playing session, mute and let go of the MCU, flush, disconnect."""
        log.info("shutting down")
        self.updates.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            with contextlib.suppress(FileNotFoundError):
                self.settings.control_socket_path.unlink()
        playing = self._playing
        if playing is not None:
            playing.session.stop("the device service was shut down")
            playing.thread.join(timeout=30)
        self._note_firmware()
        if self.monitor is not None:
            self.monitor.stop()  # MUTE; a prompt still speaking loses its consent and ends
        self.panel.close()
        self.queue_telemetry()
        self.sync.drain(timeout_s=2.0)  # a best effort: what is not acked stays in the outbox
        self.sync.stop()
        self._desired.close(timeout_s=5.0)
        self.recorder.close()  # every safety event written
        self.ledger.close()
        self.store.close()

    # --- playing ---------------------------------------------------------------------------------

    def play(self, spec: str | None = None) -> str:
        """Start ``spec`` in the background (see the module: a prescribed program by name or
        library id; with none prescribed and the profile allowing it, a preset or a file; None:
        the play button's first); the reply line for the socket. ``PlayRefused`` says why it may
        not play, in the words the panel speaks (``refusals.py``)."""
        # refused before the thread starts, so the person hears why (the session checks again)
        refused = self.why_cannot_play(spec)
        if refused is not None:
            raise PlayRefused(refused)
        program, prescribed = self._resolve(spec or self.assigned_programs()[0])
        with self._lock:
            if self._playing is not None:
                raise ResoneraError(f"already playing {self._playing.program!r}; stop it first")
            if self._updating:  # switching to a new agent, or flashing the MCU's firmware
                raise PlayRefused(refusal("updating", UPDATING_DETAIL))
            session_id, self._next_session = self._next_session or new_id(), None
            session = Session(
                self.session_parts, session_id=session_id, watch=SessionWatch(notify=_log_line)
            )
            thread = threading.Thread(
                target=self._play_session,
                args=(session, program, prescribed),
                name="player",
                daemon=True,
            )
            self._playing = _Playing(program.name, time.time(), session, thread)
            self.applier.session_started()
            self.updates.session_started()
        thread.start()
        return f"ok playing {program.name!r} ({program.duration_s:.0f} s)"

    def why_cannot_play(self, spec: str | None = None) -> Refusal | None:
        """Why ``spec`` (None: the play button's first program) may not start now, or None."""
        return why_cannot_play(self.play_facts(spec))

    def play_facts(self, spec: str | None = None) -> PlayFacts:
        """What bears on starting ``spec`` now (``refusals.PlayFacts``), read from the owners."""
        now = self.clock()
        profile = self.profile_in_force()
        assigned = self.assigned_programs()
        program_refused = ""
        if spec is not None or assigned:
            try:  # what ``Session.run`` would refuse, found before any check-in is asked
                program, _ = self._resolve(spec or assigned[0])
                output = load_session_calibration(self.settings.calibration_file).output
                check_program_for(program, profile, output)
            except ResoneraError as exc:
                program_refused = str(exc)
        shut_out = self.sync.shut_out
        fault, headphones = self._hardware_facts()
        try:
            free: int | None = shutil.disk_usage(self.settings.data_dir).free
        except OSError:
            free = None
        ahead = datetime.fromtimestamp(now + CLOCK_SLACK_S, UTC)
        return PlayFacts(
            updating=self._updating,
            shut_out=shut_out.kind if shut_out is not None else None,
            shut_out_reason=shut_out.reason if shut_out is not None else "",
            free_bytes=free,
            store_writable=not self._store_write_failed,
            min_free_bytes=self.min_free_bytes,
            now=now,
            records_after_now=self.store.sessions_since(ahead) > 0,
            fault=fault,
            headphones=headphones,
            assigned=assigned,
            program_refused=program_refused,
            daily_limit=daily_limit_refusal(self.store, now, profile) or "",
            dose_fraction=self.ledger.status(self.dose_clock.now(), profile.dose_mode).fraction,
            refuse_over_allowance=profile.refuse_over_allowance,
        )

    def _hardware_facts(self) -> tuple[int, bool | None]:
        """(a fault the MCU would refuse an ARM for now, headphones in or None when unknown or
        not required). A latched fault whose cause is gone is no reason: the next ARM clears it.
        A v1.4 board says whether it requires headphones and has a switch to see them (BOARD);
        with an older one their absence counts only on a board that has reported them plugged
        in (it has a switch) or refused for them."""
        monitor = self.monitor
        telemetry = monitor.telemetry if monitor is not None else None
        if monitor is None or telemetry is None:
            return sl.FAULT_NONE, None
        crossed = monitor.limit_crossed()
        board = monitor.board_info
        if board is not None:
            needed = board.requires_headphones and board.headphone_switch
            return crossed, (telemetry.headphones if needed else None)
        refused_for_them = telemetry.fault == sl.FAULT_HEADPHONES_UNPLUGGED
        self._headphones_seen = self._headphones_seen or telemetry.headphones or refused_for_them
        unplugged = self._headphones_seen and not telemetry.headphones
        return crossed, (False if unplugged else None)

    def stop_playing(self) -> str:
        playing = self._playing
        if playing is None:
            return "ok nothing is playing"
        playing.session.stop()
        return f"ok stopping {playing.program!r} (fading out)"

    def _resolve(self, spec: str) -> tuple[Program, AssignedProgram | None]:
        return choose_program(
            self.store.assigned_programs(), self.profile_in_force(), spec, self.resolve_program
        )

    def _play_session(
        self, session: Session, program: Program, prescribed: AssignedProgram | None
    ) -> None:
        self._limits_lowered_stop = False
        try:
            record = session.run(program, open_sink(self.settings), prescribed=prescribed)
            self.last_session = record
            self.last_error = ""
            log.info("session %s: %s %s", record.session_id, record.outcome, record.reason)
            self._ended_why = (self._why_it_stopped(record, session.stopped_by_dose), True)
        except Exception as exc:  # refused, no MCU, sound device: reported, the service lives on
            self.last_error = str(exc)
            log.error("session of %r did not play: %s", program.name, exc)
            self._ended_why = (self._why_not_played(exc), False)
        finally:
            self._ended_session = session.session_id
            release_free_memory()  # the session's renderer, chain and buffers
            with self._lock:
                self._playing = None
            self.applier.session_ended()
            self.updates.session_ended()
            self.sync.kick()

    def _why_it_stopped(self, record: SessionRecord, dose: bool) -> Refusal | None:
        fault = self.monitor.last_fault if self.monitor is not None else None
        return why_it_stopped(
            StoppedFacts(
                record.outcome,
                record.reason,
                fault=fault[0] if fault is not None and record.outcome == "fault" else 0,
                limits_lowered=self._limits_lowered_stop,
                dose_stop=dose,
            )
        )

    def _why_not_played(self, exc: Exception) -> Refusal:
        """A session that did not play: refused by its own checks (the day's sessions, the dose
        it would use), else the program or the device refused it."""
        if isinstance(exc, SessionRefused):
            return refusal("daily_limit" if exc.daily else "dose_reached", str(exc))
        if isinstance(exc, HardwareNotReady):  # the MCU would not arm: its fault says why
            fault = self.monitor.last_fault if self.monitor is not None else None
            unplugged = fault is not None and fault[0] == sl.FAULT_HEADPHONES_UNPLUGGED
            return refusal("headphones_unplugged" if unplugged else "hardware_fault", str(exc))
        return refusal("program_refused", str(exc))

    def _reassess(self) -> None:
        self.applier.reassess()
        self.sync.kick()  # a report may wait in the outbox

    def _limits_lowered(self, _profile: object) -> None:
        """A desired state lowered the limits during a session: the session stops (fading), so
        the lower limits hold from the next session on; it could not be changed mid-chain."""
        playing = self._playing
        if playing is not None:
            log.warning("limits lowered by the clinician during a session: stopping it")
            self._limits_lowered_stop = True
            playing.session.stop(
                "the clinician lowered the limits; they hold from the next session"
            )

    def _profile_applied(self, profile: HearingProfile) -> None:
        """A new profile or programs (the desired thread): its check-in questions and the
        programs' names spoken into the prompt cache."""
        self.panel.prepare_checkins(profile.checkins)
        self.panel.prepare_program_names([p.name for p in self.store.assigned_programs()])

    def _ledger_for_reset(self) -> DoseLedger:
        """The one ledger, for a clinician's reset. The applier closes what it is given after the
        reset: ``DoseLedger.close`` lets only the idle connections go, the ledger stays usable."""
        return self.ledger

    # --- the panel's host (device/panel.py: PanelHost; called on the panel's thread) ------------

    def ended_why(self) -> tuple[Refusal | None, bool] | None:
        """Why the last session ended short and whether it played (taken once; None: no
        session ended since the last call)."""
        ended, self._ended_why = self._ended_why, None
        return ended

    def sessions_waiting(self) -> int:
        """Sessions recorded but not yet sent to the server (offline is no error)."""
        return self.store.outbox_stats().by_kind.get("session", 0)

    def play_from_panel(self, program: str) -> str:
        """``play`` for the buttons: if it is refused, the check-in answers given before it stay
        stored under the id the session would have had; the next session gets a new one."""
        try:
            return self.play(program)
        except ResoneraError:
            with self._lock:
                self._next_session = None
            raise

    def playing_program(self) -> str | None:
        playing = self._playing
        return playing.program if playing is not None else None

    def assigned_programs(self) -> tuple[str, ...]:
        assigned = self.store.assigned_programs()
        if assigned:
            return tuple(program.name for program in assigned)
        return (BUILTIN_DEFAULT,) if self.profile_in_force().builtin_when_unassigned else ()

    def program_length_s(self, program: str) -> float | None:
        try:
            return self._resolve(program)[0].duration_s
        except ResoneraError:
            return None

    def dose_fraction(self) -> float:
        return self.ledger.status(self.dose_clock.now(), self.profile_in_force().dose_mode).fraction

    def syncing(self) -> bool:
        return time.time() - (self.sync.last_ack or 0.0) < SYNCING_WINDOW_S

    def profile_in_force(self) -> HearingProfile:
        """The applied desired state's profile, else the settings'."""
        return self.store.applied_profile() or self.settings.profile

    def checkin_answered(self, answer: Answered, at: datetime) -> None:
        if answer.phase == "before":
            with self._lock:
                self._next_session = session_id = self._next_session or new_id()
        else:
            session_id = self._ended_session or new_id()
        self._store_checkin(answer, at, session_id)

    def _store_checkin(self, answer: Answered, at: datetime, session_id: str) -> None:
        skipped = answer.value is None
        record = CheckInRecord(
            id=new_id(),
            session_id=session_id,
            device_id=self.settings.device_id,
            question_id=answer.question.id,
            phase=answer.phase,
            value=answer.value,
            skipped=skipped,
            answered_at=at,
            better=answer.question.better,
            skip_reason=CheckInRecord.as_skip_reason(answer.reason) if skipped else None,
        )
        try:
            self.store.record_checkin(self.settings.device_id, record)
        except Exception:  # the store failing must not end the panel's thread
            log.exception("check-in answer %s could not be stored", record.question_id)
            self._store_write_failed = True
            return
        self._store_write_failed = False
        self.sync.kick()

    # --- telemetry and status --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        stats = self.store.outbox_stats()
        applied = self.store.applied_desired()
        pending = self.store.pending_desired()
        playing = self._playing
        monitor = self.monitor
        self._note_firmware()
        ready = self.why_cannot_play()
        shut_out = self.sync.shut_out
        return {
            "device": self.settings.device_id,
            "agent_version": agent_version(),
            "firmware_version": self._firmware,
            "link": "connected" if self.sync.connected else "disconnected",
            "link_error": self.sync.last_error,
            "playing": playing.program if playing is not None else None,
            "playing_for_s": round(time.time() - playing.started_at, 1) if playing else None,
            "outbox_depth": stats.depth,
            "outbox_bytes": stats.bytes,
            "outbox_by_kind": stats.by_kind,
            "metrics_thinned": stats.metrics_thinned,
            "last_ack_at": self.store.meta("last_ack_at"),
            "desired_version": applied.version if applied is not None else 0,
            "desired_pending": pending.version if pending is not None else None,
            "programs": [
                {"name": p.name, "library_id": p.library_id, "version": p.version}
                for p in self.store.assigned_programs()
            ],
            "safety_link": (None if monitor is None else ("up" if monitor.connected else "down")),
            "controls": self.panel.describe(),
            "ready": None if ready is None else {"code": ready.code, "message": ready.message},
            "shut_out": (
                None
                if shut_out is None
                else {"kind": shut_out.kind, "reason": shut_out.reason, "since": shut_out.since}
            ),
            "safety_state": _safety_state(playing),
            # without network time sessions play capped at the dose mode's reference level
            "dose_clock_exact": self.dose_clock.exact,
            "sessions_waiting": stats.by_kind.get("session", 0),
            # routine link and consent hand-overs, counted instead of recorded (docs/safety-events.md)
            "routine": self.recorder.routine_counts(),
            "last_error": self.last_error,
            "uptime_s": round(time.time() - self.started, 1),
        }

    def _note_firmware(self) -> None:
        hello = self.monitor.hello if self.monitor is not None else None
        if hello is not None:
            self._firmware = str(hello.firmware_version)

    def queue_telemetry(self) -> None:
        """A ``metrics`` message: outbox depth and the rest of ``status`` (thinned first when the
        outbox is over its bound)."""
        try:
            self.store.thin_outbox()
            body = self.status()
            body["outbox_depth"] += 1  # this message too
        except Exception:
            log.exception("telemetry could not be gathered")
            return
        try:
            self.store.queue_message(self.settings.device_id, "metrics", {"telemetry": body})
        except Exception:
            log.exception("queueing telemetry failed")
            self._store_write_failed = True
            return
        self._store_write_failed = False
        self.sync.kick()

    # --- control socket --------------------------------------------------------------------------

    def _open_socket(self) -> None:
        path = self.settings.control_socket_path
        if path.exists():
            if _answers(path):
                raise ResoneraError(f"another resonera-device run already serves {path}")
            path.unlink()  # left by a process that was killed
        service = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(MAX_COMMAND_BYTES).decode(errors="replace").strip()
                reply = service.command(line)
                self.wfile.write(reply.encode() + b"\n")

        old_umask = os.umask(0o177)  # the socket is created 0600: only the device's user
        try:
            server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        finally:
            os.umask(old_umask)
        server.daemon_threads = True
        self._server = server
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 1.0}, name="control", daemon=True
        ).start()

    def command(self, line: str) -> str:
        verb, _, arg = line.partition(" ")
        try:
            if verb == "play":  # with no program: the first prescribed (else the default)
                return self.play(arg.strip() or None)
            if verb == "stop":
                return self.stop_playing()
            if verb == "status":
                return json.dumps(self.status())
            return "error commands: play [PROGRAM] | stop | status"
        except ResoneraError as exc:
            return f"error {exc}"
        except Exception as exc:
            log.exception("control command %r failed", line)
            return f"error {exc}"


def _safety_state(playing: _Playing | None) -> str:
    """The playing session's safety state ("idle" when none plays; "arming" before its
    supervisor exists: its checks are running)."""
    if playing is None:
        return "idle"
    supervisor = playing.session.supervisor
    return supervisor.state.value if supervisor is not None else "arming"


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def send_command(path: Path, line: str, timeout_s: float = 5.0) -> str:
    """One command to a running service; its one-line reply. ``ServiceUnavailable`` if none."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
        except OSError:
            raise ServiceUnavailable(
                f"no resonera-device run answers on {path} (start it, or the systemd unit)"
            ) from None
        sock.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace").strip()
