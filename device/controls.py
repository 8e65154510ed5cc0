"""Operating the device without a screen: what a button press means, what the light shows, and
which spoken prompt a change of state calls for. Pure: no I/O, no threads; time comes from ``clock``.

The safety MCU debounces the buttons and reports presses (``serial_link.ButtonPress``, protocol
v1.2); ``Controls.press(press, state)`` turns one into actions for the agent, given a snapshot of
the agent's state (``AgentState``). The meaning of each button:

============  ============================================  =====================================
button        short press                                   long press (≥ 800 ms, the MCU's)
============  ============================================  =====================================
play/pause    idle: play the first assigned program;        skip to the next assigned program
              playing: pause; paused: resume                (after the one playing or last played)
stop          stop (fading out); idle with a fault shown:   the same
              acknowledge it (the light goes back to idle)
volume up     +``step_db`` (ramped), at most the ceiling;   playing: say the time left in the
              at the ceiling: say "maximum volume"          session; idle: say the status (ready
volume down   −``step_db`` (ramped), at least the floor     or why not, sessions waiting to sync)
============  ============================================  =====================================

A play press that cannot start (``device/refusals.py``: nothing assigned here; the panel asks the
service for every other reason before any check-in) is a ``Refuse``: its prompt and its light.

The volume is an offset in dB on the program, from ``floor_db`` up to ``ceiling_db`` (0 dB: the
level the clinician set, which the profile and the safety chain already cap). Nothing here can
raise the level past the person's limits: the chain after the volume stage enforces them whatever
this says, and this never asks for more than 0 dB.

``Controls.changed(before, after)`` gives the prompts a change of state calls for: session start
(and the program's name: the play button cycles through the person's programs in the clinician's
order, so the person hears which one plays) and end, why sound stopped after a fault, 80 % and
100 % of the weekly allowance (ITU-T H.870 asks devices to tell the person at these points; see
``device/prompts.py`` for the wording).
``light_for(state)`` is what the status light shows.

Check-ins (issue 12). When the person's profile has questions for a phase, ``begin_checkin`` puts
the controls in a check-in: each question is asked (``Ask``: its text and what 0 and 10 mean), the
value starts at ``CHECKIN_START`` and the buttons change their meaning until it ends:

============  ======================================================================
volume up     value + 1 (at most 10), the number said (``SayNumber``)
volume down   value − 1 (at least 0), the number said
play/pause    confirm the value (``Answered``); the next question
stop          skip the question (``Answered`` with ``value=None``); the next question
long press    (any button) say the question again
============  ======================================================================

No press for ``checkin_timeout_s`` skips the question (``tick``). The "before" check-in holds the
program's ``Start``; it is returned when the last question is done, so the program waits.

``device/panel.py`` binds this to a running device: its ``Panel`` feeds presses and the agent's
state in, carries out the actions (the prompt mixer, the service's start/stop) and keeps the light.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from resonera.common import serial_link as sl
from resonera.common.profile import CheckInPhase, CheckInQuestion
from resonera.device.prescriptions import NOTHING_MAY_PLAY
from resonera.device.refusals import Refusal, refusal

__all__ = [
    "CHECKIN_START",
    "DOSE_PROMPTS",
    "FAULT_PROMPTS",
    "Action",
    "AgentState",
    "Answered",
    "Ask",
    "CheckIn",
    "ClearFault",
    "Controls",
    "Pause",
    "Prompt",
    "Refuse",
    "Resume",
    "SayNumber",
    "SayProgram",
    "SayStatus",
    "SetVolume",
    "Start",
    "Stop",
    "light_for",
]

#: Fault codes whose cause a person can act on get a prompt of their own (``device/prompts.py``).
FAULT_PROMPTS = {
    sl.FAULT_OVER_TEMPERATURE: "fault_amplifier_hot",
    sl.FAULT_HEADPHONES_UNPLUGGED: "fault_headphones_unplugged",
}
#: Weekly-allowance thresholds that are announced, with their prompt.
DOSE_PROMPTS = ((0.8, "dose_80"), (1.0, "dose_100"))


@dataclass(frozen=True)
class AgentState:
    """What the controls need to know about the agent, at one moment."""

    #: The program playing or paused (None when idle).
    program: str | None = None
    paused: bool = False
    #: Monotonic time (``clock``'s) at which the playing program ends, if known.
    ends_at: float | None = None
    #: The programs assigned to the person (the desired state), in order.
    assigned: tuple[str, ...] = ()
    #: The last program started (where "next" continues from when idle).
    last_program: str | None = None
    #: Why sound stopped (a fault code, ``FAULT_NONE`` when none is shown).
    fault: int = sl.FAULT_NONE
    #: A hardware warning turns the level down.
    attenuated: bool = False
    #: The weekly allowance used, as a fraction (1.0 = 100 %).
    dose_fraction: float = 0.0
    #: Syncing with the server (the outbox is being sent, a desired state being applied).
    syncing: bool = False
    #: A refusal's light, shown while idle (``refusals.Reason.light``; None: no refusal shown).
    refused_light: int | None = None

    @property
    def playing(self) -> bool:
        return self.program is not None and not self.paused


@dataclass(frozen=True)
class Start:
    program: str


@dataclass(frozen=True)
class Pause:
    pass


@dataclass(frozen=True)
class Resume:
    pass


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class ClearFault:
    pass


@dataclass(frozen=True)
class SetVolume:
    """Move the volume offset to ``db`` (≤ 0) over ``ramp_s``: never a jump."""

    db: float
    ramp_s: float


@dataclass(frozen=True)
class Prompt:
    """Say the catalogue's ``key`` (``device/prompts.py``); ``minutes`` for ``time_left``."""

    key: str
    minutes: int | None = None


@dataclass(frozen=True)
class SayProgram:
    """Say the name of ``program`` (issue 20: the person hears which one the button started)."""

    program: str


@dataclass(frozen=True)
class Ask:
    """Ask ``question`` in its check-in ``phase``: its text, its anchors, then ``value``."""

    question: CheckInQuestion
    phase: CheckInPhase
    value: int
    #: The check-in's first question: say what it is and how to answer first.
    first: bool = False


@dataclass(frozen=True)
class Refuse:
    """A session cannot start (or stopped) for ``refusal``: say why and show its light."""

    refusal: Refusal


@dataclass(frozen=True)
class SayStatus:
    """Say whether a play would start now (or why not) and how many sessions wait to sync."""


@dataclass(frozen=True)
class SayNumber:
    value: int


@dataclass(frozen=True)
class Answered:
    """The person's answer to ``question`` (``value`` None: skipped, ``reason`` says why)."""

    question: CheckInQuestion
    phase: CheckInPhase
    value: int | None
    reason: str = ""


Action = (
    Start
    | Pause
    | Resume
    | Stop
    | ClearFault
    | SetVolume
    | Prompt
    | SayProgram
    | Ask
    | SayNumber
    | Answered
    | Refuse
    | SayStatus
)

#: Where a check-in's value starts: the middle, so neither end is suggested.
CHECKIN_START = 5
CHECKIN_MAX = 10
SKIPPED_BY_PERSON = "skipped by the person"
SKIPPED_TIMEOUT = "no answer in time"
#: Why nothing plays when no program is assigned (``Refuse``).
NOTHING_ASSIGNED = refusal("nothing_assigned", NOTHING_MAY_PLAY)


@dataclass
class CheckIn:
    """A check-in under way: the questions left, the value being set, when it times out."""

    phase: CheckInPhase
    questions: list[CheckInQuestion]
    deadline: float
    value: int = CHECKIN_START
    #: What to do when the check-in is over (the program the "before" check-in holds).
    then: list[Action] = field(default_factory=list)

    @property
    def question(self) -> CheckInQuestion:
        return self.questions[0]


def light_for(state: AgentState) -> int:
    """The status light for ``state`` (``serial_link.LIGHT_*``): a fault first (the person must
    know why it is silent), then, while idle, why a session cannot start (``refused_light``),
    then a used-up allowance, then playing (attenuated or not), then syncing, else idle. Paused
    counts as idle: nothing is sounding."""
    if state.fault != sl.FAULT_NONE:
        return sl.LIGHT_FAULT
    if state.program is None and state.refused_light is not None:
        return state.refused_light
    if state.dose_fraction >= 1.0:
        return sl.LIGHT_DOSE_REACHED
    if state.playing:
        return sl.LIGHT_ATTENUATED if state.attenuated else sl.LIGHT_PLAYING
    if state.syncing:
        return sl.LIGHT_SYNCING
    return sl.LIGHT_IDLE


@dataclass
class Controls:
    """Button presses and state changes → actions. Holds the volume; everything else is passed in."""

    step_db: float = 3.0
    floor_db: float = -30.0
    ceiling_db: float = 0.0
    #: How long a volume step takes (docs/safety.md §5: gain changes ramp over tens of milliseconds).
    ramp_s: float = 0.25
    clock: Callable[[], float] = time.monotonic
    volume_db: float = 0.0
    #: No press for this long skips a check-in question.
    checkin_timeout_s: float = 60.0
    #: The check-in under way, if any (the buttons then answer it).
    checkin: CheckIn | None = None
    #: The highest weekly-allowance threshold already announced (so each is said once).
    _announced: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.floor_db < self.ceiling_db <= 0.0 or self.step_db <= 0 or self.ramp_s <= 0:
            raise ValueError("need floor_db < ceiling_db ≤ 0 dB, step_db > 0 and ramp_s > 0")
        self.volume_db = min(max(self.volume_db, self.floor_db), self.ceiling_db)

    def press(self, press: sl.ButtonPress, state: AgentState) -> list[Action]:
        """What ``press`` means in ``state``."""
        if self.checkin is not None:
            return self._answer(press, self.checkin)
        if press.button == sl.BUTTON_PLAY_PAUSE:
            return self._next(state) if press.long else self._play_pause(state)
        if press.button == sl.BUTTON_STOP:
            if state.program is not None:
                return [Stop()]
            return [ClearFault()] if state.fault != sl.FAULT_NONE else []
        if press.long:  # either volume button, held: how long is left?
            return self._time_left(state)
        up = press.button == sl.BUTTON_VOLUME_UP
        return self._volume(self.step_db if up else -self.step_db)

    def changed(self, before: AgentState, after: AgentState) -> list[Action]:
        """The prompts a change from ``before`` to ``after`` calls for, in the order to say them."""
        actions: list[Action] = []
        if after.fault != before.fault and after.fault in FAULT_PROMPTS:
            actions.append(Prompt(FAULT_PROMPTS[after.fault]))
        if after.program is not None and after.program != before.program:
            actions.extend((Prompt("session_start"), SayProgram(after.program)))
        elif before.program is not None and after.program is None and after.fault == sl.FAULT_NONE:
            actions.append(Prompt("session_end"))
        for threshold, key in DOSE_PROMPTS:
            if after.dose_fraction >= threshold > self._announced:
                self._announced = threshold
                actions.append(Prompt(key))
        if after.dose_fraction < DOSE_PROMPTS[0][0]:
            self._announced = 0.0  # a new week: announce again when it comes to that
        return actions

    def begin_checkin(
        self,
        phase: CheckInPhase,
        questions: Sequence[CheckInQuestion],
        *,
        unavailable: Mapping[str, str] | None = None,
        then: Sequence[Action] = (),
    ) -> list[Action]:
        """Start the check-in of ``phase`` with the profile's ``questions`` (those asked in it);
        ``unavailable`` (question id → why) are recorded skipped at once (no prompt to ask them
        with). ``then`` is returned when it is over (at once when nothing is asked); a check-in
        already under way is not interrupted: this one is not asked."""
        if self.checkin is not None:
            return []
        missing = unavailable or {}
        asked = [q for q in questions if q.asked(phase)]
        actions: list[Action] = [
            Answered(q, phase, None, missing[q.id]) for q in asked if q.id in missing
        ]
        pending = [q for q in asked if q.id not in missing]
        if not pending:
            return [*actions, *then]
        self.checkin = CheckIn(phase, pending, self.clock() + self.checkin_timeout_s)
        self.checkin.then = list(then)
        return [*actions, Ask(pending[0], phase, CHECKIN_START, first=True)]

    def abandon_checkin(self, why: str) -> list[Action]:
        """The check-in's prompt was cut off by something other than the person (a fault, the
        MCU refusing): every question left is recorded skipped with ``why``, and what it held
        (a program's ``Start``) is dropped: no later press can be taken for an answer."""
        checkin, self.checkin = self.checkin, None
        if checkin is None:
            return []
        return [Answered(q, checkin.phase, None, why) for q in checkin.questions]

    def tick(self) -> list[Action]:
        """A question unanswered for ``checkin_timeout_s`` is skipped (the panel calls this)."""
        checkin = self.checkin
        if checkin is None or self.clock() < checkin.deadline:
            return []
        return self._next_question(checkin, None, SKIPPED_TIMEOUT)

    # -- internals -------------------------------------------------------------------------------

    def _answer(self, press: sl.ButtonPress, checkin: CheckIn) -> list[Action]:
        checkin.deadline = self.clock() + self.checkin_timeout_s
        if press.long:
            return [Ask(checkin.question, checkin.phase, checkin.value)]
        if press.button == sl.BUTTON_PLAY_PAUSE:
            return self._next_question(checkin, checkin.value, "")
        if press.button == sl.BUTTON_STOP:
            return self._next_question(checkin, None, SKIPPED_BY_PERSON)
        step = 1 if press.button == sl.BUTTON_VOLUME_UP else -1
        checkin.value = min(max(checkin.value + step, 0), CHECKIN_MAX)
        return [SayNumber(checkin.value)]  # at an end too: the person hears where it stays

    def _next_question(self, checkin: CheckIn, value: int | None, reason: str) -> list[Action]:
        actions: list[Action] = [Answered(checkin.question, checkin.phase, value, reason)]
        checkin.questions.pop(0)
        if not checkin.questions:
            self.checkin = None
            return [*actions, *checkin.then]
        checkin.value = CHECKIN_START
        checkin.deadline = self.clock() + self.checkin_timeout_s
        return [*actions, Ask(checkin.question, checkin.phase, CHECKIN_START)]

    def _play_pause(self, state: AgentState) -> list[Action]:
        if state.program is not None:
            return [Resume()] if state.paused else [Pause()]
        if not state.assigned:
            return [Refuse(NOTHING_ASSIGNED)]
        return [Start(state.assigned[0])]

    def _next(self, state: AgentState) -> list[Action]:
        if not state.assigned:
            return [Refuse(NOTHING_ASSIGNED)]
        current = state.program or state.last_program
        following = _after(state.assigned, current)
        stop: list[Action] = [Stop()] if state.program is not None else []
        return [*stop, Start(following)]

    def _volume(self, delta_db: float) -> list[Action]:
        target = min(max(self.volume_db + delta_db, self.floor_db), self.ceiling_db)
        if delta_db > 0 and self.volume_db >= self.ceiling_db:
            return [Prompt("max_volume")]
        if target == self.volume_db:
            return []  # at the floor: nothing to turn down
        self.volume_db = target
        return [SetVolume(target, self.ramp_s)]

    def _time_left(self, state: AgentState) -> list[Action]:
        if state.program is None:
            return [SayStatus()]
        if state.ends_at is None:
            return []
        seconds = max(0.0, state.ends_at - self.clock())
        return [Prompt("time_left", minutes=math.ceil(seconds / 60.0))]


def _after(programs: Sequence[str], current: str | None) -> str:
    """The program after ``current`` in ``programs`` (wrapping); the first if ``current`` is not
    there (a new assignment replaced the list)."""
    if current in programs:
        return programs[(programs.index(current) + 1) % len(programs)]
    return programs[0]
