"""Which safety-event records are routine hand-overs, counted rather than recorded.

A safety event is something a clinician or an auditor must be able to read back: a fault, a
warning, a limit or dose action, a refusal, the person's own stop. The safety link also reports
hand-overs that happen many times an hour on a healthy device: consent granted when a session or a
prompt between sessions arms the MCU, consent withdrawn when it gives the MCU back (MUTE at the
device's own request), the link coming up, the link closing or dropping while nothing sounds, and
the safety state machine's transitions of a normal start and end. Kept as records they buried the
real events (146 "safety events" in 12 minutes, issue 21) and became FHIR AdverseEvents.

``routine_counter`` is the one classifier: the device's ``SafetyEventRecorder`` counts what it
names instead of storing it, and the server's ingest and migration 0016 tag the routine records
old agents sent (``ROUTINE_TYPE_PREFIX``) so that lists and exports leave them out. It reads only
fields every record has carried since protocol v1, so it classifies old records the same way.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from resonera.common import serial_link as sl
from resonera.common.records import SafetyEventRecord

RoutineCounter = Literal[
    "consent_granted",  # a session or a prompt between sessions armed the MCU
    "device_mutes",  # the device gave the MCU back: MUTE at its own request (a claim's release)
    "link_up",  # the MCU said HELLO: the link (re)opened
    "link_closed",  # the monitor closed the port in order (service or standalone play ending)
    "link_drops",  # the link dropped while the MCU consented to nothing (no sound to stop)
    "session_transitions",  # idle -> arming -> playing, and playing -> idle at the program's end
]
ROUTINE_COUNTERS: Final[tuple[RoutineCounter, ...]] = get_args(RoutineCounter)

#: The cause a session's normal end is fed to its safety state machine with (device/session.py).
NORMAL_END_CAUSE: Final = "program completed"
#: The cause the monitor's orderly stop records its link going down with (common/safety_link.py).
MONITOR_STOPPED_CAUSE: Final = "monitor stopped"
#: The server stores a routine record's ``event_type`` as this prefix and its counter.
ROUTINE_TYPE_PREFIX: Final = "routine:"

_NORMAL_TRANSITIONS: Final = frozenset({("idle", "arming"), ("arming", "playing")})
_SOUNDING_STATES: Final = frozenset({"playing", "attenuating"})


def routine_counter(record: SafetyEventRecord) -> RoutineCounter | None:
    """The counter ``record`` adds to when it is a routine hand-over; None for a safety event."""
    kind = record.type
    if kind == "consent_granted":
        return "consent_granted"
    if kind == "consent_withdrawn":
        # our own MUTE; a limit, fault or lost link withdraws with the code that says which
        return "device_mutes" if record.code == sl.FAULT_DEVICE_REQUEST else None
    if kind == "link_up":
        return "link_up"
    if kind == "link_down":
        if record.cause == MONITOR_STOPPED_CAUSE:
            return "link_closed"
        # The monitor records a drop while the MCU consented with FAULT_LINK_GARBLED (heartbeat
        # or port lost mid-session: a fault); one while nothing was consented with no code.
        return "link_drops" if record.code == sl.FAULT_NONE else None
    if kind == "transition":
        return _routine_transition(record)
    return None


def _routine_transition(record: SafetyEventRecord) -> RoutineCounter | None:
    move = (record.from_state or "", record.to_state or "")
    if move in _NORMAL_TRANSITIONS:
        return "session_transitions"
    if move[0] in _SOUNDING_STATES and move[1] == "idle" and record.cause == NORMAL_END_CAUSE:
        return "session_transitions"
    if move == ("idle", "fault") and sl.describe_fault(sl.FAULT_DEVICE_REQUEST) in record.cause:
        # Agents before issue 21 fed their own release's MUTE to an ended session's state
        # machine: a normal end misread as a fault (no such record is made any more).
        return "device_mutes"
    return None


def stored_event_type(record: SafetyEventRecord) -> str:
    """The server's ``event_type`` for ``record``: its type, or the prefix and its counter."""
    counter = routine_counter(record)
    return record.type if counter is None else f"{ROUTINE_TYPE_PREFIX}{counter}"


def is_routine_type(event_type: str) -> bool:
    """True for an ``event_type`` the server stored a routine record under."""
    return event_type.startswith(ROUTINE_TYPE_PREFIX)
