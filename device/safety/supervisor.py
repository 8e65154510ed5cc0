"""The safety state machine of one session, fed from every thread that knows something (the monitor's
I/O thread, the audio thread, the session), with each transition recorded as a safety event.

The table in ``state.py`` decides, and its ``sound_allowed`` gates the session's audio (with the
MCU's consent). This serialises the inputs and writes down what happened. An event the table
refuses means the session and its machine disagree: in that doubt the machine goes to ``fault``,
so the audio mutes, and the cause says which event was refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from resonera.device.safety.state import Event, IllegalTransition, SafetyStateMachine, State
from resonera.device.safety_events import SafetyEventRecorder

log = logging.getLogger(__name__)


class SessionSupervisor:
    def __init__(
        self,
        recorder: SafetyEventRecorder | None,
        *,
        simulation: bool,
        session_id: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.recorder = recorder
        self.session_id = session_id
        self.clock = clock
        self.machine = SafetyStateMachine(simulation=simulation)
        self._lock = threading.Lock()

    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def sound_allowed(self) -> bool:
        """The machine's gate (a plain read: the audio thread asks before every block)."""
        return self.machine.sound_allowed

    @property
    def silence_reason(self) -> str:
        return self.machine.silence_reason

    def handle(self, event: Event, cause: str) -> bool:
        """Feed one event; True if it changed the state. A refused event is not raised (the
        sources are independent threads): it latches ``fault`` with the refusal as its cause."""
        with self._lock:
            try:
                transition = self.machine.handle(event, self.clock(), cause)
            except IllegalTransition as exc:
                log.warning("safety state %s refused %s: %s", self.machine.state, event.value, exc)
                cause = f"the safety state machine refused {event.value!r} ({exc}): muted"
                transition = self.machine.handle(Event.FAULT, self.clock(), cause)
        if transition is None:
            return False
        log.info(
            "safety state %s -> %s (%s)",
            transition.from_state.value,
            transition.to_state.value,
            cause,
        )
        if self.recorder is not None:
            self.recorder.event(
                "transition",
                cause or event.value,
                from_state=transition.from_state.value,
                to_state=transition.to_state.value,
                session_id=self.session_id,
            )
        return True
