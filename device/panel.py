"""The device's buttons, status light and spoken prompts at work: ``Panel`` binds the pure
``Controls`` (``device/controls.py``: what a press means, what the light shows, which prompt a
change calls for) to a running agent, its ``PanelHost`` (the device service: start and stop a
program, what plays, the person's programs, profile and dose, where answers go).

One module of some 530 lines: ``Panel`` is one thread's state (the queue of presses, the check-in
under way, the light, what is being said) and its host protocol; split, each half would need the
other's internals.

The device service (``device/service.py``) builds one with ``panel_for`` and owns it: its one
safety monitor serves the panel (``HardwareMonitor.attach_panel``: presses, link events, the
light), and every session plays through the panel's ``PromptMixer`` (``SessionParts.mixer``), the
first stage of the audio path, before the safety chain. The panel does its work on a thread of its
own (never on the monitor's I/O thread) and keeps the light's state ready for the monitor.

Prompts are mixed into a session's audio path. One asked for while idle ("maximum volume", "no
program", "session finished", a fault's reason) is spoken at once by ``IdlePrompts``
(``device/idle_prompts.py``) on the panel's speaker thread (never the panel's own: a press is
carried out while a prompt speaks): it claims the MCU from the service's monitor for the length of
the prompt (a session starting takes it over) and plays the prompt over silence through the
engine's pipeline, the same safety chain as a session (and into the dose ledger). If the MCU
refuses (the fault is still there, a session holds it) it waits ``PromptMixer.max_wait_s`` for a session,
except a fault's reason and the first-use notice, which are kept for the start of the next session
(their wording fits that).

Buttons always answer (issue 21). Every press first cuts what is being said (``PromptMixer.cut``:
faded out within one audio block), then acts on the state it was pressed in. Before, prompts
between sessions played on the panel's thread, so presses queued behind them and acted seconds
later on a state that had changed: a long press of play queued behind a prompt started a session,
and the stop pressed meanwhile to quiet the prompt stopped it at once (a phantom "0 s, stopped by
the person"). A start waiting for a stopped session to fade (a skip) is dropped by any later press.
A check-in whose prompt a fault cut off is recorded skipped with why (``Controls.abandon_checkin``).

Refusals (issue 21, ``device/refusals.py``): a play press that cannot start says why and shows
its light before any check-in is asked (``PanelHost.why_cannot_play``); a session that ended short
says why (``PanelHost.ended_why``); a lasting reason (shut out, blocked) shows whenever idle.

Check-ins (issue 12): a ``Start`` asked for by a button first runs the "before" check-in of the
profile in force (``PanelHost.profile_in_force``), and a session that ends (with no fault) is
followed by the "after" one; the questions are spoken as any prompt (over silence when idle), each
answer or skip goes to ``PanelHost.checkin_answered`` (the service stores it). The question prompts
are spoken into the cache when a profile is applied (``prepare_checkins``, on the sync thread:
espeak-ng takes seconds); a question without its prompt (espeak-ng missing, no cache) is recorded
skipped with the reason.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from resonera.common import serial_link as sl
from resonera.common.errors import ResoneraError
from resonera.common.safety_link import LinkEvent
from resonera.device.audio.prompt_mixer import Clip, PromptMixer
from resonera.device.controls import (
    FAULT_PROMPTS,
    Action,
    AgentState,
    Answered,
    Ask,
    ClearFault,
    Controls,
    Pause,
    Prompt,
    Refuse,
    Resume,
    SayNumber,
    SayProgram,
    SayStatus,
    SetVolume,
    Start,
    Stop,
    light_for,
)
from resonera.device.prompt_catalogue import MAX_NUMBER
from resonera.device.prompts import (
    PromptLibrary,
    PromptsError,
    build_checkin_prompts,
    build_program_name_prompts,
    prompts_dir,
)
from resonera.device.refusals import REFUSAL_LIGHT_S, Refusal
from resonera.device.safety.session import load_session_calibration
from resonera.device.settings import DeviceSettings

if TYPE_CHECKING:
    from resonera.common.profile import CheckInPhase, CheckInQuestion, HearingProfile

__all__ = ["MAX_PAUSE_S", "Panel", "PanelHost", "panel_for"]

log = logging.getLogger(__name__)


class _Library(Protocol):
    """What the panel needs of ``PromptLibrary``."""

    def clips(self, *keys: str) -> list[Clip]: ...

    def time_left(self, minutes: int) -> list[Clip]: ...

    def has(self, key: str) -> bool: ...

    def question_key(self, question: CheckInQuestion) -> str: ...

    def program_key(self, name: str) -> str: ...


class PanelHost(Protocol):
    """What the panel needs of the agent that owns it (the device service), called on the
    panel's thread."""

    def play_from_panel(self, program: str) -> object:
        """Start ``program``; ``ResoneraError`` when it is refused (said why in the log)."""
        ...

    def stop_playing(self) -> object:
        """Stop the session playing (fading out)."""
        ...

    def playing_program(self) -> str | None:
        """The program playing, None when idle."""
        ...

    def assigned_programs(self) -> tuple[str, ...]:
        """The names of the programs the play button cycles through: the person's prescribed
        programs in the clinician's order (else the built-in default, if the profile allows it;
        empty: nothing may play)."""
        ...

    def program_length_s(self, program: str) -> float | None:
        """How long ``program`` plays, in seconds (None: unknown)."""
        ...

    def dose_fraction(self) -> float:
        """How much of the week's sound allowance is used (1.0: all)."""
        ...

    def syncing(self) -> bool:
        """Whether records are going to the server now."""
        ...

    def profile_in_force(self) -> HearingProfile:
        """The person's profile (its check-in questions too)."""
        ...

    def checkin_answered(self, answer: Answered, at: datetime) -> None:
        """Record one check-in answer or skip."""
        ...

    def why_cannot_play(self, spec: str | None = None) -> Refusal | None:
        """Why ``spec`` (None: the first assigned) may not start now (``refusals.py``), or None."""
        ...

    def ended_why(self) -> tuple[Refusal | None, bool] | None:
        """Why the last session ended short, and whether it played; taken once (None: no
        session ended since the last call)."""
        ...

    def sessions_waiting(self) -> int:
        """Sessions recorded and not yet sent to the server."""
        ...


class PlayRefusedError(Protocol):
    """What ``PanelHost.play_from_panel`` raises when the start is refused: a ``ResoneraError``
    with the ``refusal`` (``service.PlayRefused``)."""

    refusal: Refusal


@dataclass(frozen=True)
class _Cut:
    """The speaker thread to the panel's: a prompt between sessions was cut off, not by the
    person (a fault, the MCU refusing), for ``why``."""

    why: str


#: ``speak_idle``'s outcome when a fault cut the prompt off (``PlayResult.outcome``).
CUT_BY_FAULT = "fault"


#: Prompts kept for the next session when no session plays to carry them now, and the start's
#: (its session's pre-flight may take longer than a prompt waits).
KEPT_PROMPTS = frozenset({"first_use", "session_start", *FAULT_PROMPTS.values()})
#: How often the panel looks at the agent's state when nothing happens.
REFRESH_S = 0.25
#: How often the weekly dose is read again (it changes by the second only while playing).
DOSE_REFRESH_S = 10.0
#: How often the assigned programs are read again when no button is pressed (a press reads them).
ASSIGNED_REFRESH_S = 5.0
#: How long a skip waits for the session it stopped to end before starting the next (then the
#: start is dropped: something holds the session, and a press will try again).
SKIP_WAIT_S = 5.0
#: "Session finished": not said for a session that ended short (its reason is) or never played.
SESSION_END = Prompt("session_end")
#: Refusals whose cause a fault prompt (``FAULT_PROMPTS``) already said when the session stopped.
FAULT_REFUSALS = frozenset({"hardware_fault", "headphones_unplugged"})
#: A session paused this long is stopped: the amplifier should not stay armed over silence for
#: hours because someone forgot it (the person starts again with play).
MAX_PAUSE_S = 15 * 60.0


class Panel:
    """The buttons, the light and the prompts of one device, bound to its agent (``host``).

    ``library`` (``PromptLibrary``) may be None: no prompts were built, so the panel works
    silently. ``speak_idle(mixer)`` plays what the mixer holds when no session plays, on the
    panel's speaker thread, and returns how it ended (``CUT_BY_FAULT``: a fault cut it off; None:
    prompts wait for a session). ``notice_marker`` is a file whose existence says the first-use
    notice was given (created when it is queued). ``render_checkins(questions)`` speaks check-in
    questions into the cache and returns the library reopened (``PromptsError`` when it cannot).
    """

    def __init__(
        self,
        controls: Controls,
        mixer: PromptMixer,
        library: _Library | None,
        host: PanelHost,
        *,
        speak_idle: Callable[[PromptMixer], str | None] | None = None,
        notice_marker: Path | None = None,
        render_checkins: Callable[[Sequence[CheckInQuestion]], _Library] | None = None,
        render_names: Callable[[Sequence[str]], _Library] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.controls = controls
        self.mixer = mixer
        self.library = library
        self.host = host
        self._speak_idle = speak_idle
        self._notice_marker = notice_marker
        self._clock = clock
        self._render = render_checkins
        self._render_names = render_names
        #: Why the last profile's questions have no prompts ("" when they have).
        self.checkin_problem = ""
        #: Why the prescribed programs' names are not spoken ("" when they are).
        self.names_problem = ""
        self._asking = False
        #: One build of the prompt cache at a time (service start and a profile applied may race).
        self._render_lock = threading.Lock()
        self._presses: queue.Queue[sl.ButtonPress | _Cut | None] = queue.Queue(maxsize=64)
        self._thread: threading.Thread | None = None
        self._speaker: threading.Thread | None = None
        self._speak_wanted = threading.Event()
        #: A refusal's light and until when it shows (the next press ends it sooner).
        self._refused: tuple[int, float] | None = None
        #: A lasting reason a session cannot start (shown whenever idle), read with the programs.
        self._lasting: Refusal | None = None
        #: A start waiting for the session a skip stopped to end: (start, released, deadline).
        self._pending: tuple[Start, bool, float] | None = None
        self._state = AgentState()
        self._light = sl.LIGHT_IDLE
        self._fault = sl.FAULT_NONE
        self._last_program: str | None = None
        self._ends_at: float | None = None
        self._paused_at: float | None = None
        self._dose_fraction = 0.0
        self._dose_read_at: float | None = None
        self._programs: tuple[str, ...] = ()
        self._programs_read_at: float | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the panel's thread (presses are queued for it from then on) and its speaker's
        (prompts between sessions)."""
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="panel", daemon=True)
        self._thread.start()
        self._speaker = threading.Thread(target=self._speak_run, name="speaker", daemon=True)
        self._speaker.start()

    def close(self) -> None:
        """Stop the panel's threads; from now on nothing is spoken between sessions."""
        self._closed = True
        self.mixer.cut()  # a prompt between sessions ends at its next block
        self._speak_wanted.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            self._presses.put(None)
            thread.join(timeout=10)
        speaker, self._speaker = self._speaker, None
        if speaker is not None:
            speaker.join(timeout=10)

    # -- hwmonitor.ControlPanel (the monitor's I/O thread: return at once) ------------------------

    def on_press(self, press: sl.ButtonPress) -> None:
        try:
            self._presses.put_nowait(press)
        except queue.Full:
            log.warning("button %s dropped: the panel is not keeping up", press.name)

    def on_event(self, event: LinkEvent) -> None:
        if event.kind == "fault" and event.code != sl.FAULT_NONE:
            self._fault = event.code

    def light(self, consent: bool, attenuated: bool) -> int | None:
        light = self._light
        if light == sl.LIGHT_PLAYING and attenuated:
            return sl.LIGHT_ATTENUATED
        return light

    @property
    def state(self) -> AgentState:
        """The agent's state as the panel last saw it."""
        return self._state

    def describe(self) -> dict[str, object]:
        """For ``status``: the light, pause, volume, whether prompts were built, and the check-in
        question waiting for the person's answer, if one is."""
        checkin = self.controls.checkin
        waiting = f"{checkin.question.id} ({checkin.phase} the session)" if checkin else ""
        return {
            "light": sl.LIGHT_NAMES.get(self._light, str(self._light)),
            "paused": self._state.paused,
            "volume_db": self.mixer.volume_db,
            "prompts": self.library is not None,
            **({"checkin": self.checkin_problem} if self.checkin_problem else {}),
            **({"program_names": self.names_problem} if self.names_problem else {}),
            **({"checkin_waiting": waiting} if waiting else {}),
        }

    def prepare_checkins(self, questions: Sequence[CheckInQuestion]) -> None:
        """Speak ``questions`` into the prompt cache (a new profile applied; the sync thread).
        Failing (no espeak-ng, no cache) is logged and kept: those questions are then recorded
        skipped with the reason, and everything else works as before."""
        if not questions:
            self.checkin_problem = ""
            return
        if self._render is None:
            self.checkin_problem = "no spoken prompts on this device"
            return
        try:
            with self._render_lock:
                self.library = self._render(questions)
        except Exception as exc:  # espeak-ng failing in any way: reported, never the agent's end
            self.checkin_problem = f"the check-in questions could not be spoken: {exc}"
            log.warning("%s", self.checkin_problem)
        else:
            self.checkin_problem = ""

    def prepare_program_names(self, names: Sequence[str]) -> None:
        """Speak the prescribed programs' ``names`` into the prompt cache (programs applied; the
        thread that applied them). Failing (no espeak-ng, no cache) leaves the names unsaid and
        everything else as it was; it is logged once per cause, and ``status`` shows it."""
        if not names:
            return
        if self._render_names is None:
            problem = "no spoken prompts on this device"
        else:
            try:
                with self._render_lock:
                    self.library = self._render_names(names)
            except Exception as exc:  # espeak-ng failing in any way: said, never the agent's end
                problem = f"the programs' names are not spoken: {exc}"
            else:
                problem = ""
        if problem and problem != self.names_problem:
            log.warning("%s (the programs still play)", problem)
        self.names_problem = problem

    # -- the panel's thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                item = self._presses.get(timeout=REFRESH_S)
            except queue.Empty:
                item = None
            else:
                if item is None:
                    return
            try:
                if isinstance(item, _Cut):
                    self.prompt_cut(item.why)
                else:
                    self.handle(item)
            except Exception:  # a failing press must not end the panel (docs/architecture.md §8)
                log.exception("the control panel failed on %r", item)

    def handle(self, press: sl.ButtonPress | None) -> None:
        """Carry out ``press`` (if any), then ``refresh``. The panel's thread calls this."""
        if press is not None:
            self.mixer.cut()  # the press's answer, not what was being said (within one block)
            self._refused = None  # the person acted: the refusal's light has been seen
            self._pending = None  # a start waiting for a skip's fade is not what is wanted now
            self._programs_read_at = None  # what is assigned now, not a few seconds ago
            asking = self.controls.checkin is not None
            self._carry_out(self.controls.press(press, self._snapshot()), released=asking)
        self._carry_out(self.controls.tick(), released=True)
        self.refresh()

    def prompt_cut(self, why: str) -> None:
        """A prompt between sessions was cut off, not by the person (``why``): a check-in under
        way ends, its questions recorded skipped with ``why``, so no later press answers them."""
        if self.controls.checkin is not None:
            log.warning("check-in abandoned: its prompt was cut off (%s)", why)
            self._asking = False
            self._carry_out(self.controls.abandon_checkin(f"prompt cut off: {why}"), released=True)

    def _carry_out(self, actions: list[Action], *, released: bool) -> None:
        """Perform ``actions``; a ``Start`` is first checked (``why_cannot_play``: refused before
        any question), waits for a stopped session to end, then goes through the "before"
        check-in unless the check-in is what ``released`` it."""
        for action in actions:
            if isinstance(action, Refuse):  # the host knows a reason that weighs more, if any
                self._perform(Refuse(self.host.why_cannot_play(None) or action.refusal))
            elif not isinstance(action, Start):
                self._perform(action)
            elif (refused := self.host.why_cannot_play(action.program)) is not None:
                self._perform(Refuse(refused))
            elif self.host.playing_program() is not None:  # a skip: after the fade-out
                self._pending = (action, released, self._clock() + SKIP_WAIT_S)
            elif not released:
                self._carry_out(self._begin_checkin("before", [action]), released=True)
            else:
                self._perform(action)

    def _begin_checkin(
        self, phase: CheckInPhase, then: list[Action], why_not: str = ""
    ) -> list[Action]:
        questions = self.host.profile_in_force().checkins
        if not any(question.asked(phase) for question in questions):
            return then
        if why_not:
            unavailable = {question.id: why_not for question in questions}
        else:
            library = self.library
            why_not = self.checkin_problem or "no spoken prompt for it (prompts not built)"
            unavailable = {
                question.id: why_not
                for question in questions
                if library is None or not library.has(library.question_key(question))
            }
        return self.controls.begin_checkin(phase, questions, unavailable=unavailable, then=then)

    def refresh(self) -> None:
        """Look at the agent: speak what its changes call for, and set the light."""
        paused_at = self._paused_at
        if paused_at is not None and self._clock() - paused_at >= MAX_PAUSE_S:
            log.info("paused for %.0f min: stopping the session", MAX_PAUSE_S / 60)
            self._paused_at = None
            self.host.stop_playing()
        before, after = self._state, self._snapshot()
        if after.program is not None and after.program != before.program:
            self._started(after.program)
        if after.program is None and before.program is not None:
            self.mixer.resume()  # a paused session that ended: the next one must not start paused
            self._paused_at = self._ends_at = None
        # why it ended, once the panel sees it ended (the service knows a moment before)
        ended = self.host.ended_why() if after.program is None else None
        why, played = ended if ended is not None else (None, True)
        if not played:  # refused by its own checks: its "session starting" is not to be said
            self.mixer.cut(everything=True)
        self._state = after = self._snapshot()
        for action in self.controls.changed(before, after):
            if ended is None or action != SESSION_END or (why is None and played):
                self._perform(action)
        if why is not None and not (why.code in FAULT_REFUSALS and after.fault in FAULT_PROMPTS):
            self._perform(Refuse(why))
        if after.program is None and before.program is not None and played:
            fault = sl.FAULT_TEXT.get(after.fault, str(after.fault))
            why_not = (
                "" if after.fault == sl.FAULT_NONE else f"the session ended by a fault ({fault})"
            )
            self._carry_out(self._begin_checkin("after", [], why_not), released=True)
        self._start_pending(after)
        self._light = light_for(self._with_refusal_light(after))
        if before.program is not None and after.program is None and self.mixer.speaking:
            self._speak_wanted.set()  # what the ending session did not get to say

    def _start_pending(self, state: AgentState) -> None:
        """The start a skip left waiting, once the stopped session is silent (or given up)."""
        pending = self._pending
        if pending is None:
            return
        start, released, deadline = pending
        if state.program is None:
            self._pending = None
            self._carry_out([start], released=released)
        elif self._clock() >= deadline:
            self._pending = None
            log.warning("%r did not start: the session before it did not end", start.program)

    def _with_refusal_light(self, state: AgentState) -> AgentState:
        refused = self._refused
        if refused is not None and self._clock() >= refused[1]:
            self._refused = refused = None
        lasting = self._lasting
        light = refused[0] if refused is not None else lasting.reason.light if lasting else None
        return replace(state, refused_light=light)

    def _started(self, program: str) -> None:
        self._last_program = program
        self._fault = sl.FAULT_NONE
        length = self.host.program_length_s(program)
        self._ends_at = self._clock() + length if length is not None else None
        marker = self._notice_marker
        if marker is not None and not marker.exists():
            self._say("first_use")
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()

    def _snapshot(self) -> AgentState:
        now = self._clock()
        if self._dose_read_at is None or now - self._dose_read_at >= DOSE_REFRESH_S:
            try:
                self._dose_fraction = self.host.dose_fraction()
            except Exception:
                log.exception("the weekly dose could not be read")
            self._dose_read_at = now
        if self._programs_read_at is None or now - self._programs_read_at >= ASSIGNED_REFRESH_S:
            # the store: reads, not on every refresh
            self._programs = self.host.assigned_programs()
            lasting = self.host.why_cannot_play(None)
            self._lasting = lasting if lasting is not None and lasting.reason.lasting else None
            self._programs_read_at = now
        program = self.host.playing_program()
        ends_at = self._ends_at
        if ends_at is not None and self._paused_at is not None:
            ends_at += now - self._paused_at  # the clock stops while paused
        return AgentState(
            program=program,
            paused=program is not None and self.mixer.paused,
            ends_at=ends_at,
            assigned=self._programs,
            last_program=self._last_program,
            fault=self._fault if program is None else sl.FAULT_NONE,
            dose_fraction=self._dose_fraction,
            syncing=self.host.syncing(),
        )

    def _perform(self, action: Action) -> None:
        log.info("control: %s", action)
        if isinstance(action, Start):
            self._start_when_idle(action.program)
        elif isinstance(action, Stop):
            self.host.stop_playing()
        elif isinstance(action, Pause):
            self.mixer.pause()
            self._paused_at = self._clock()
        elif isinstance(action, Resume):
            if self._paused_at is not None and self._ends_at is not None:
                self._ends_at += self._clock() - self._paused_at
            self._paused_at = None
            self.mixer.resume()
        elif isinstance(action, ClearFault):
            self._fault = sl.FAULT_NONE
        elif isinstance(action, SetVolume):
            self.mixer.set_volume(action.db, action.ramp_s)
        elif isinstance(action, Ask):
            self._asking = True
            keys = [f"checkin_{action.phase}", "checkin_how"] if action.first else []
            if self.library is not None:
                question = self.library.question_key(action.question)
                self._say_clips(self.library.clips(*keys, question, f"n{action.value}"))
        elif isinstance(action, SayProgram):
            library = self.library
            key = library.program_key(action.program) if library is not None else ""
            if library is not None and library.has(key):  # a built-in's name is not spoken
                self._say_clips(library.clips(key), keep=True)
        elif isinstance(action, SayNumber):  # replaces a number not yet said: never lags
            self._say_clips(
                self.library.clips(f"n{action.value}") if self.library else [], replace=True
            )
        elif isinstance(action, Refuse):
            self._refuse(action.refusal)
        elif isinstance(action, SayStatus):
            self._say_status()
        elif isinstance(action, Answered):
            self.host.checkin_answered(action, datetime.now(UTC))
            if self.controls.checkin is None and self._asking:
                self._asking = False
                self._say("checkin_done")
        elif action.key == "time_left":
            self._say_clips(self.library.time_left(action.minutes or 0) if self.library else [])
        else:
            self._say(action.key)

    def _start_when_idle(self, program: str) -> None:
        if self._closed:
            return  # a check-in that timed out as the service shut down: nothing to start
        self.mixer.resume()
        try:
            self.host.play_from_panel(program)
        except ResoneraError as exc:
            refused: Refusal | None = getattr(exc, "refusal", None)
            if refused is not None:  # its checks changed their mind since the press
                self._refuse(refused)
            else:
                log.warning("the play button could not start %r: %s", program, exc)
            self._last_program = program  # a next press moves on, not back to this one

    def _refuse(self, refused: Refusal) -> None:
        """Say why a session cannot start or stopped, and show its light for a while."""
        log.warning("no session: %s", refused.message)  # never silent, even unspoken
        self._refused = (refused.reason.light, self._clock() + REFUSAL_LIGHT_S)
        self._say(refused.reason.prompt)
        self._light = light_for(self._with_refusal_light(self._state))

    def _say_status(self) -> None:
        """Ready, or why not; then how many sessions wait to be sent (offline is no error)."""
        refused = self.host.why_cannot_play(None)
        keys = [refused.reason.prompt if refused is not None else "status_ready"]
        waiting = self.host.sessions_waiting()
        if waiting:
            keys += [f"n{min(waiting, MAX_NUMBER)}", "sessions_waiting"]
        if self.library is not None:
            self._say_clips(self.library.clips(*keys))

    def _say(self, key: str) -> None:
        if self.library is not None:
            self._say_clips(self.library.clips(key), keep=key in KEPT_PROMPTS)

    def _say_clips(self, clips: list[Clip], keep: bool = False, replace: bool = False) -> None:
        if not clips:
            return
        self.mixer.say(*clips, keep=keep, replace=replace)
        self._speak_wanted.set()  # the speaker thread: spoken now if no session plays

    # -- the speaker thread ----------------------------------------------------------------------

    def _speak_run(self) -> None:
        """Speak what the mixer holds while no session plays (a session carries it otherwise)."""
        while not self._closed:
            self._speak_wanted.wait()
            self._speak_wanted.clear()
            try:
                self._speak_between_sessions()
            except Exception:  # the speaker must outlive any one prompt
                log.exception("a prompt between sessions failed")

    def _speak_between_sessions(self) -> None:
        speak = self._speak_idle
        while (
            speak is not None
            and not self._closed
            and self.mixer.speaking
            and self.host.playing_program() is None
        ):
            mixed = self.mixer.frames_mixed
            try:
                outcome = speak(self.mixer)
            except ResoneraError as exc:
                log.info("prompt not spoken now (%s): it waits for a session", exc)
                self._presses.put(_Cut(str(exc)))
                return
            if outcome == CUT_BY_FAULT:
                self._presses.put(_Cut("a fault muted the sound"))
                return
            if self.mixer.frames_mixed == mixed:
                return  # nothing was played (a session took over): never a busy loop


def panel_for(
    settings: DeviceSettings,
    host: PanelHost,
    *,
    speak_idle: Callable[[PromptMixer], str | None] | None = None,
) -> Panel:
    """The device's panel for ``host``: its controls, a mixer at the device's rate, the prompts
    built for it (``resonera-device prompts build``; without them the panel works silently, which
    is logged), check-in questions spoken into that cache, and the first-use marker in the data
    folder. ``speak_idle`` (``IdlePrompts.speak``) speaks prompts between sessions."""
    library: PromptLibrary | None = None
    try:
        library = PromptLibrary(prompts_dir(settings.data_dir), settings.sample_rate)
    except PromptsError as exc:
        log.warning("spoken prompts off: %s", exc)

    def render_checkins(questions: Sequence[CheckInQuestion]) -> PromptLibrary:
        directory = prompts_dir(settings.data_dir)
        calibration = load_session_calibration(settings.calibration_file)
        report = build_checkin_prompts(directory, calibration, questions)
        log.info("check-in prompts: %d spoken, %d unchanged", report.built, report.reused)
        return PromptLibrary(directory, settings.sample_rate)

    def render_names(names: Sequence[str]) -> PromptLibrary:
        directory = prompts_dir(settings.data_dir)
        calibration = load_session_calibration(settings.calibration_file)
        report = build_program_name_prompts(directory, calibration, names)
        log.info("program names: %d spoken, %d unchanged", report.built, report.reused)
        return PromptLibrary(directory, settings.sample_rate)

    return Panel(
        Controls(),
        PromptMixer(settings.sample_rate),
        library,
        host,
        speak_idle=speak_idle,
        notice_marker=settings.data_dir / "first-use-notice-given",
        render_checkins=render_checkins,
        render_names=render_names,
    )
