"""The device's safety states (docs/architecture.md §5), as one table that owns every transition.

``idle`` (muted) → ``arming`` → ``playing`` ⇄ ``attenuating``; any fault → ``fault`` (muted, latched)
until its cause is gone *and* the person starts again. Pure logic: events carry the time the caller
read from its clock; nothing here sleeps, reads a clock or touches audio. Every transition is returned
and kept with its cause so the caller records and syncs it.

No path leads to ``playing`` without the safety MCU's consent, except when the machine was created in
simulation mode, which each transition then carries.

A session's machine ends when the session does (``idle`` after a stop, the program's end, a dose
stop or a failed arm): from then on a ``fault`` changes nothing. Nothing sounds, so there is
nothing to mute, and a consent withdrawal arriving then is the session's own release (MUTE at the
device's request), not a fault of the session; recording it as ``idle -> fault`` made every normal
end look like a fault and ``status`` say "fault" on an idle device (issue 21). A real fault of the
hardware is still recorded by the monitor, as its own event. A ``start`` begins again.

``sound_allowed`` is one of the two gates of a session's audio: the player reads it before every
block together with the MCU's consent (``device/session.py``), so a session sounds only while both
agree; a fault fed here mutes even if the MCU still consents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final


class State(StrEnum):
    IDLE = "idle"
    ARMING = "arming"
    PLAYING = "playing"
    ATTENUATING = "attenuating"
    FAULT = "fault"


class Event(StrEnum):
    START = "start"  # the person asks to play
    ARMED = "armed"  # preconditions met: link up, limits read, output present, dose left
    ARM_FAILED = "arm_failed"  # a precondition failed (not a hardware fault)
    WARNING = "warning"  # e.g. amplifier nearing its temperature limit: ramp down
    WARNING_CLEARED = "warning_cleared"
    DOSE_REACHED = (
        "dose_reached"  # 100 % (or a further 100 %) of the allowance, profile says attenuate
    )
    DOSE_STOP = "dose_stop"  # ... profile says stop
    FAULT = "fault"  # consent withdrawn, reading over a limit, link lost, sound device lost
    FAULT_CLEARED = "fault_cleared"  # the cause is gone; a new START may arm again
    STOP = "stop"  # the person stops, or the program ended
    SESSION_END = "session_end"


SOUND_STATES: Final = frozenset({State.PLAYING, State.ATTENUATING})


class IllegalTransition(Exception):
    """An event that the current state does not accept (a bug in the caller, not in the peer)."""


@dataclass(frozen=True)
class Transition:
    at: float
    from_state: State
    to_state: State
    event: Event
    cause: str
    simulation: bool


#: (state, event) → next state. Pairs not listed are ignored (``None``) or illegal (see below).
_TABLE: Final[dict[tuple[State, Event], State]] = {
    (State.IDLE, Event.START): State.ARMING,
    (State.ARMING, Event.ARMED): State.PLAYING,
    (State.ARMING, Event.ARM_FAILED): State.IDLE,
    (State.ARMING, Event.STOP): State.IDLE,
    (State.PLAYING, Event.WARNING): State.ATTENUATING,
    (State.PLAYING, Event.DOSE_REACHED): State.ATTENUATING,
    (State.ATTENUATING, Event.WARNING): State.ATTENUATING,
    (State.ATTENUATING, Event.DOSE_REACHED): State.ATTENUATING,
    (State.ATTENUATING, Event.WARNING_CLEARED): State.PLAYING,
    (State.PLAYING, Event.DOSE_STOP): State.IDLE,
    (State.ATTENUATING, Event.DOSE_STOP): State.IDLE,
    (State.PLAYING, Event.STOP): State.IDLE,
    (State.ATTENUATING, Event.STOP): State.IDLE,
    (State.PLAYING, Event.SESSION_END): State.IDLE,
    (State.ATTENUATING, Event.SESSION_END): State.IDLE,
    (State.FAULT, Event.STOP): State.FAULT,
}
#: Events that are meaningless but harmless in a state (a late warning after a stop, say).
_IGNORED: Final[frozenset[Event]] = frozenset(
    {Event.WARNING, Event.WARNING_CLEARED, Event.DOSE_REACHED, Event.FAULT_CLEARED, Event.STOP}
)


@dataclass
class SafetyStateMachine:
    """Feed events with ``handle``; read ``state``, ``sound_allowed`` and ``history``."""

    simulation: bool = False
    state: State = State.IDLE
    #: Causes of warnings in force (attenuation lasts while any remains, dose attenuation stays).
    warnings: set[str] = field(default_factory=set)
    dose_attenuated: bool = False
    fault_cause: str | None = None
    fault_cleared: bool = True
    #: The session ended (see the module): a later fault is not this session's.
    ended: bool = False
    history: list[Transition] = field(default_factory=list)

    @property
    def sound_allowed(self) -> bool:
        """True in ``playing`` and ``attenuating`` only: the session's audio gate (with consent)."""
        return self.state in SOUND_STATES

    @property
    def silence_reason(self) -> str:
        """Why ``sound_allowed`` is false ("" while it is true)."""
        if self.state is State.FAULT:
            return self.fault_cause or "safety fault"
        if self.sound_allowed:
            return ""
        return f"the safety state is {self.state.value}"

    @property
    def attenuated(self) -> bool:
        return self.state is State.ATTENUATING

    def handle(self, event: Event, at: float, cause: str = "") -> Transition | None:
        """Apply ``event``; return the transition it made (None if it changed nothing)."""
        if event is Event.FAULT:
            if self.ended:
                return None
            return self._fault(at, cause)
        if event is Event.FAULT_CLEARED:
            self.fault_cleared = True
            return None
        if self.state is State.FAULT and event is Event.START:
            if not self.fault_cleared:
                raise IllegalTransition(
                    f"cannot start: the fault is still present ({self.fault_cause})"
                )
            return self._move(
                State.ARMING, event, at, cause or f"restart after: {self.fault_cause}"
            )
        if event is Event.WARNING:
            self.warnings.add(cause)
        elif event is Event.WARNING_CLEARED:
            self.warnings.discard(cause)
            if self.warnings or self.dose_attenuated:
                return None  # another reason to stay attenuated remains
        elif event is Event.DOSE_REACHED:
            self.dose_attenuated = True
        target = _TABLE.get((self.state, event))
        if target is None:
            if event in _IGNORED:
                return None
            raise IllegalTransition(
                f"event {event.value!r} is not accepted in state {self.state.value!r}"
            )
        if target is State.IDLE:
            self.warnings.clear()
            self.dose_attenuated = False
            self.ended = True
        elif event is Event.START:
            self.ended = False
        if target is self.state:
            return None
        return self._move(target, event, at, cause)

    def _fault(self, at: float, cause: str) -> Transition | None:
        self.fault_cleared = False
        if self.state is State.FAULT:
            return None  # already latched; the first cause is the one that counts
        self.fault_cause = cause
        self.warnings.clear()
        self.dose_attenuated = False
        return self._move(State.FAULT, Event.FAULT, at, cause)

    def _move(self, target: State, event: Event, at: float, cause: str) -> Transition:
        transition = Transition(at, self.state, target, event, cause, self.simulation)
        self.state = target
        self.history.append(transition)
        return transition
