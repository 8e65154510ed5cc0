"""Why a session cannot start, or why one stopped: one table of reasons, each with its spoken prompt
and its status light, and the pure decision over a snapshot of facts. No I/O: the device service
gathers the facts (``DeviceService.play_facts``), the panel says the prompt and shows the light,
the control socket and ``status`` give the same words.

The decision comes BEFORE any check-in is asked: a play press that cannot start says why at once
(issue 21), instead of asking "how do you feel" and then staying silent.

Order (``why_cannot_play``): what no press can fix comes first (the server shut the device out, the
device blocked), then the hardware (a fault, the headphones), then the clinician's settings (nothing
assigned, the program refused, the day's sessions, the week's dose). The person hears the reason
that matters first; fixing it may reveal the next.

Lights (``serial_link.LIGHT_*``): a refusal's light shows until the next press or for
``REFUSAL_LIGHT_S``, whichever comes first; a lasting condition (``Reason.lasting``: shut out,
storage full, clock untrusted) shows whenever the device is idle, until it is gone.

Definitions:
- storage full: less than ``MIN_FREE_BYTES`` free where the device keeps its data, or the store
  failing a write. A session must be recorded: one that could not be is not started.
- clock untrusted: the wall clock reads earlier than ``CLOCK_FLOOR`` (this release's date: a board
  without a real-time clock boots in 1970) or earlier than the newest record the device holds (by
  more than ``CLOCK_SLACK_S``). Session records and the day's session limit go by the wall clock,
  and such records would count toward the wrong day. The dose does not depend on it: the ledger
  is dated by the dose clock (``device/trusted_time.py``), which never dates a second before the
  floor and moves what it dated once trusted time arrives. A wall clock that reads a plausible
  time without network time to confirm it is no refusal: sessions play, at most at the dose
  mode's reference level (``untrusted_level_cap``), and the pre-flight says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from resonera.common import serial_link as sl
from resonera.common.clock import CLOCK_FLOOR
from resonera.device.prescriptions import NOTHING_MAY_PLAY
from resonera.device.prompt_catalogue import CATALOGUE, FALLBACK_LANGUAGE

__all__ = [
    "CLOCK_FLOOR",
    "CLOCK_SLACK_S",
    "MIN_FREE_BYTES",
    "REASONS",
    "REFUSAL_LIGHT_S",
    "PlayFacts",
    "Reason",
    "Refusal",
    "StoppedFacts",
    "refusal",
    "why_cannot_play",
    "why_it_stopped",
]

#: Less free space than this where the data lives: storage full (a session's record, its safety
#: events and the outbox must fit; 32 MiB is weeks of records).
MIN_FREE_BYTES: Final = 32 * 1024 * 1024
#: A record this much newer than the wall clock means the clock went back (NTP jitter is less).
CLOCK_SLACK_S: Final = 300.0
#: What an ``updating`` refusal holds for (the status's and the log's detail).
UPDATING_DETAIL: Final = "updating the agent or the safety MCU's firmware"
#: How long a refusal's light shows when no press comes first.
REFUSAL_LIGHT_S: Final = 30.0

ReasonCode = Literal[
    "updating",
    "shut_out_revoked",
    "shut_out_expired",
    "shut_out_quarantined",
    "storage_full",
    "clock_untrusted",
    "headphones_unplugged",
    "hardware_fault",
    "nothing_assigned",
    "program_refused",
    "daily_limit",
    "dose_reached",
    "limits_lowered",
]


@dataclass(frozen=True)
class Reason:
    """One row of the table: ``code``, the catalogue ``prompt`` key that says it, the ``light``
    (``serial_link.LIGHT_*``), and whether it lasts (shown whenever idle) or is one press's."""

    code: ReasonCode
    prompt: str
    light: int
    lasting: bool = False

    @property
    def words(self) -> str:
        """What is said, in English (the socket and ``status`` give these words too)."""
        return CATALOGUE[FALLBACK_LANGUAGE][self.prompt]


#: Every reason, in the order ``why_cannot_play`` weighs them (``limits_lowered`` only stops).
REASONS: Final[Mapping[ReasonCode, Reason]] = {
    reason.code: reason
    for reason in (
        Reason("updating", "refused_updating", sl.LIGHT_BLOCKED),
        Reason("shut_out_revoked", "refused_revoked", sl.LIGHT_SHUT_OUT, lasting=True),
        Reason("shut_out_expired", "refused_expired", sl.LIGHT_SHUT_OUT, lasting=True),
        Reason("shut_out_quarantined", "refused_quarantined", sl.LIGHT_SHUT_OUT, lasting=True),
        Reason("storage_full", "refused_storage_full", sl.LIGHT_BLOCKED, lasting=True),
        Reason("clock_untrusted", "refused_clock", sl.LIGHT_BLOCKED, lasting=True),
        Reason("headphones_unplugged", "refused_headphones", sl.LIGHT_FAULT),
        Reason("hardware_fault", "refused_fault", sl.LIGHT_FAULT),
        Reason("nothing_assigned", "no_program", sl.LIGHT_REFUSED),
        Reason("program_refused", "refused_program", sl.LIGHT_REFUSED),
        Reason("daily_limit", "refused_daily_limit", sl.LIGHT_REFUSED),
        Reason("dose_reached", "refused_dose", sl.LIGHT_DOSE_REACHED),
        Reason("limits_lowered", "stopped_limits_lowered", sl.LIGHT_REFUSED),
    )
}


@dataclass(frozen=True)
class Refusal:
    """A reason that holds now, with ``detail`` (what exactly: the limit, the program, the fault;
    for logs and ``status``, not spoken)."""

    reason: Reason
    detail: str = ""

    @property
    def code(self) -> ReasonCode:
        return self.reason.code

    @property
    def message(self) -> str:
        """The spoken words, then the detail: for the socket, ``status`` and the log."""
        words = self.reason.words
        return f"{words} ({self.detail})" if self.detail else words


def refusal(code: ReasonCode, detail: str = "") -> Refusal:
    return Refusal(REASONS[code], detail)


@dataclass(frozen=True)
class PlayFacts:
    """What the device knows at one moment that bears on starting a session (the service's
    snapshot). Defaults are a healthy device with something to play."""

    #: The agent is switching to its new version this instant (between sessions, seconds).
    updating: bool = False
    #: The server's notice: ``revoked``, ``expired`` or ``quarantined`` (None: not shut out).
    shut_out: Literal["revoked", "expired", "quarantined"] | None = None
    shut_out_reason: str = ""
    #: Free bytes where the data lives (None: unknown) and whether the store took a write.
    free_bytes: int | None = None
    store_writable: bool = True
    #: Below this many free bytes the storage counts as full.
    min_free_bytes: int = MIN_FREE_BYTES
    #: The wall clock, and whether a record the device holds is dated after it (by more than
    #: ``CLOCK_SLACK_S``: the clock went back).
    now: float = CLOCK_FLOOR
    records_after_now: bool = False
    #: The safety MCU's fault in force (a limit crossed now, latched), ``FAULT_NONE`` when none;
    #: whether headphones are in (None: the board does not say).
    fault: int = sl.FAULT_NONE
    headphones: bool | None = None
    #: The programs the play button plays (empty: nothing may play).
    assigned: tuple[str, ...] = ("program",)
    #: Why the program asked for cannot play ("": it can): not found, refused by the checks.
    program_refused: str = ""
    #: ``daily_limit_refusal``'s words ("" when sessions are left today).
    daily_limit: str = ""
    #: The week's allowance used (1.0 = all), and whether the profile refuses past 100 %.
    dose_fraction: float = 0.0
    refuse_over_allowance: bool = True


SHUT_OUT_CODES: Final[Mapping[str, ReasonCode]] = {
    "revoked": "shut_out_revoked",
    "expired": "shut_out_expired",
    "quarantined": "shut_out_quarantined",
}

#: A fault the MCU reports when it muted on the device's own request or at power-up: no fault.
NOT_FAULTS: Final = frozenset({sl.FAULT_NONE, sl.FAULT_DEVICE_REQUEST, sl.FAULT_POWER_UP})


def why_cannot_play(facts: PlayFacts) -> Refusal | None:
    """The first reason (in the table's order) a session may not start now, or None."""
    if facts.updating:
        return refusal("updating", UPDATING_DETAIL)
    if facts.shut_out is not None:
        return refusal(SHUT_OUT_CODES[facts.shut_out], facts.shut_out_reason)
    if not facts.store_writable:
        return refusal("storage_full", "the store failed a write")
    if facts.free_bytes is not None and facts.free_bytes < facts.min_free_bytes:
        free, needed = facts.free_bytes / 2**20, facts.min_free_bytes / 2**20
        return refusal("storage_full", f"{free:.1f} MiB free, {needed:.0f} MiB needed")
    clock = _clock_problem(facts)
    if clock:
        return refusal("clock_untrusted", clock)
    if facts.fault == sl.FAULT_HEADPHONES_UNPLUGGED or facts.headphones is False:
        return refusal("headphones_unplugged")
    if facts.fault not in NOT_FAULTS:
        return refusal("hardware_fault", sl.FAULT_TEXT.get(facts.fault, str(facts.fault)))
    if not facts.assigned:
        return refusal("nothing_assigned", facts.program_refused or NOTHING_MAY_PLAY)
    if facts.program_refused:
        return refusal("program_refused", facts.program_refused)
    if facts.daily_limit:
        return refusal("daily_limit", facts.daily_limit)
    if facts.refuse_over_allowance and facts.dose_fraction >= 1.0:
        return refusal("dose_reached", f"{facts.dose_fraction:.0%} of the week's allowance used")
    return None


def _clock_problem(facts: PlayFacts) -> str:
    if facts.now < CLOCK_FLOOR:
        when = datetime.fromtimestamp(facts.now, UTC).date()
        return f"the clock reads {when}, before this software was released"
    if facts.records_after_now:
        return "the clock reads earlier than the newest record on the device"
    return ""


@dataclass(frozen=True)
class StoppedFacts:
    """How a session ended, as its record and the service saw it."""

    outcome: str
    reason: str = ""
    fault: int = sl.FAULT_NONE
    #: The clinician's new, lower limits stopped it.
    limits_lowered: bool = False
    #: The weekly allowance stopped it (a dose stop).
    dose_stop: bool = False


def why_it_stopped(facts: StoppedFacts) -> Refusal | None:
    """Why a session that ended was cut short, said to the person; None for an end they chose or
    a program that completed (its "session finished" is said already)."""
    if facts.outcome == "completed":
        return None
    if facts.limits_lowered:
        return refusal("limits_lowered", facts.reason)
    if facts.dose_stop:
        return refusal("dose_reached", facts.reason)
    if facts.outcome == "fault":
        headphones = facts.fault == sl.FAULT_HEADPHONES_UNPLUGGED or "headphones" in facts.reason
        code: ReasonCode = "headphones_unplugged" if headphones else "hardware_fault"
        return refusal(code, facts.reason)
    return None
