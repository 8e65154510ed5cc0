"""The dose clock: the time the dose ledger dates exposure by, which no wrong wall clock can use to
forget a second played (issue 22; ``docs/safety.md`` §3, "A dose that survives a wrong clock").

A Raspberry Pi has no real-time clock: until network time sets it, the wall clock may read 1970,
the time it was last shut down, or whatever someone typed. The ledger keeps each second in the
minute the dose clock gives it, and the dose clock trusts only what it can know:

- **Within a boot, the boot clock** (``CLOCK_BOOTTIME``: it never jumps, and counts suspend). Every
  reading is anchored to it, so a step of the wall clock moves nothing already dated.
- **A floor: a Unix time known to have passed**, kept in the ledger with every second it dates and
  carried across reboots: this release's date at first (``CLOCK_FLOOR``), raised by exact time and
  by the server's signed time (``raise_floor``: the ``issued_at`` of a verified desired state, a
  time the server had reached, so a lower bound however old the retained copy), and advanced by
  the boot clock while the device runs.
- **Exact time**: the wall clock while the kernel says it is synchronised to network time
  (``kernel_clock_synchronized``: the adjtimex status ``timedatectl``'s ``NTPSynchronized`` shows).
  From then on, for the rest of the boot, the dose clock is that time carried on by the boot
  clock, whatever the wall clock does later.

Until the boot has exact time the clock is *untrusted*: it reads the wall clock, but never earlier
than the floor (a 1970 clock dates at the floor). The minutes dated so are marked
(``untrusted_from``), and when exact time arrives (``refresh``) the ledger moves them in one
transaction: later by what the floor lagged the real time (each such second really happened no
later than its date plus that lag: the conservative side, since a later date counts longer), but
never past now; and any minute dated after now (a clock read +30 days) comes back to now. A session
played while the clock read 1970 therefore counts from when it was really played, at the latest
from when trust came; one played at +30 days counts for 7 days from the correction, not 37.
While untrusted, sessions play at most at the dose mode's reference level
(``untrusted_level_cap``).

Pure where it can be: ``ClockState`` and its methods are the whole logic (dates in, dates out);
``DoseClock`` reads the sources and keeps the state in the ledger.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, NamedTuple

from resonera.common.clock import CLOCK_FLOOR
from resonera.common.dose import REFERENCE_DBA, DoseMode, pressure_squared
from resonera.device.safety.dose_ledger import DoseLedger, DoseStatus

__all__ = [
    "CLOCK_FLOOR",
    "BootReading",
    "ClockState",
    "DatedLedger",
    "DoseClock",
    "TimeSources",
    "kernel_clock_synchronized",
    "read_boot_clock",
    "untrusted_level_cap",
]

log = logging.getLogger(__name__)

_BOOT_ID: Final = Path("/proc/sys/kernel/random/boot_id")


class BootReading(NamedTuple):
    """Which boot this is, and the seconds since it (a clock that never jumps)."""

    boot_id: str
    seconds: float


@functools.cache
def _boot_id() -> str:
    """The kernel's id of this boot (read once: it is the process's for its life). Without one
    each process counts as a boot of its own: its clock starts untrusted, at the kept floor."""
    try:
        return _BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        return f"process-{os.getpid()}-{time.time_ns()}"


def read_boot_clock() -> BootReading:
    """This boot's id and ``CLOCK_BOOTTIME`` (``CLOCK_MONOTONIC`` where there is none)."""
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return BootReading(_boot_id(), time.clock_gettime(clock))


class _Timex(ctypes.Structure):
    """``struct timex`` (``<sys/timex.h>``, Linux, 64-bit and 32-bit alike through ``c_long``)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_padding", ctypes.c_int * 11),
    ]


_TIME_ERROR: Final = 5  # adjtimex's answer while the clock is not synchronised
_STA_UNSYNC: Final = 0x0040


def kernel_clock_synchronized() -> bool:
    """Whether the kernel holds the wall clock synchronised to network time (an NTP client,
    systemd-timesyncd or chrony, disciplined it and a manual step has not undone it since): read
    with ``adjtimex`` (modes 0: read only, no privilege), what ``timedatectl show -p
    NTPSynchronized`` reports. Anything that cannot be read counts as not synchronised."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        timex = _Timex()
        state = int(libc.adjtimex(ctypes.byref(timex)))
    except (OSError, AttributeError):
        return False
    return state not in (-1, _TIME_ERROR) and not timex.status & _STA_UNSYNC


@dataclass(frozen=True)
class TimeSources:
    """Where the dose clock reads time: the wall clock, the boot clock, and whether the wall
    clock is synchronised now. Tests give their own."""

    wall: Callable[[], float] = time.time
    boot: Callable[[], BootReading] = read_boot_clock
    synchronized: Callable[[], bool] = kernel_clock_synchronized


def untrusted_level_cap(mode: DoseMode) -> float:
    """The most a session plays at while the time is untrusted: the dose mode's reference level
    (80 dBA in mode 1, 75 in mode 2), where an hour uses 2.5 % of the week. ITU-T H.871 caps a
    device that cannot compute the dose at 95 dBA; this one still computes it (on the floor), so
    the cap only bounds what a week dated wrongly could miss: at most 2.5 % of the allowance an
    hour, and the pre-flight says so."""
    return REFERENCE_DBA[mode]


class Move(NamedTuple):
    """What the ledger must do when the clock corrects itself (``DoseLedger.move_minutes``):
    the minutes from ``first_minute`` on later by ``shift_minutes``, none past ``now_minute``
    (None: the time now is not known, so nothing is brought back from the future)."""

    first_minute: int | None
    shift_minutes: int
    now_minute: int | None


@dataclass(frozen=True)
class ClockState:
    """The dose clock at its anchor: ``floor`` (Unix time known to have passed) at ``boot_s`` of
    boot ``boot_id``; ``exact``: the floor there was the real time (this boot has had trusted
    time); ``untrusted_from``: the first minute dated without trusted time since it last had it
    (None: none)."""

    boot_id: str
    boot_s: float
    floor: float
    exact: bool = False
    untrusted_from: int | None = None

    @classmethod
    def resumed(cls, kept: ClockState | None, boot: BootReading) -> ClockState:
        """The state for ``boot``: ``kept`` itself within the same boot (another process of it),
        else a new boot at the kept floor, untrusted until exact time comes."""
        if kept is not None and kept.boot_id == boot.boot_id and boot.seconds >= kept.boot_s:
            return kept
        floor = max(CLOCK_FLOOR, kept.floor if kept is not None else CLOCK_FLOOR)
        untrusted = kept.untrusted_from if kept is not None else None
        return cls(boot.boot_id, boot.seconds, floor, exact=False, untrusted_from=untrusted)

    def floor_at(self, boot_s: float) -> float:
        return self.floor + max(0.0, boot_s - self.boot_s)

    def time_at(self, boot_s: float, wall: float) -> float:
        """The dose time: exact time carried on by the boot clock, else the wall clock but never
        before the floor."""
        floor = self.floor_at(boot_s)
        return floor if self.exact else max(floor, wall)

    def dated(self, boot_s: float, at: float) -> ClockState:
        """After dating a second at ``at``: anchored at ``boot_s``, an untrusted minute marked."""
        untrusted = self.untrusted_from
        if not self.exact:
            minute = int(at // 60)
            untrusted = minute if untrusted is None else min(untrusted, minute)
        return replace(self, boot_s=boot_s, floor=self.floor_at(boot_s), untrusted_from=untrusted)

    def made_exact(self, boot_s: float, real: float) -> tuple[ClockState, Move]:
        """Trusted time ``real`` at ``boot_s``: the untrusted minutes move later by what the floor
        lagged it, never past now; anything after now comes back to now."""
        lag = real - self.floor_at(boot_s)
        move = Move(self.untrusted_from, max(0, math.ceil(lag / 60)), int(real // 60))
        return ClockState(self.boot_id, boot_s, real, exact=True), move

    def raised(self, boot_s: float, known: float) -> tuple[ClockState, Move] | None:
        """A time ``known`` to have passed (the server's signed time): the floor rises to it, and
        the untrusted minutes with it (each happened no earlier than its date plus the rise).
        Nothing comes back from the future: the time now is still not known. None when it is not
        above the floor, or when this boot has exact time (which knows better than a server's
        clock, off by its own skew)."""
        rise = known - self.floor_at(boot_s)
        if rise <= 0 or self.exact:
            return None
        state = replace(self, boot_s=boot_s, floor=known)
        return state, Move(self.untrusted_from, math.ceil(rise / 60), None)

    def text(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def parse(cls, text: str | None) -> ClockState | None:
        """A kept state, or None when there is none or it does not read (then the floor starts
        again from ``CLOCK_FLOOR``: the ledger's rows are all still there)."""
        if text is None:
            return None
        try:
            data = json.loads(text)
            untrusted = data.get("untrusted_from")
            return cls(
                boot_id=str(data["boot_id"]),
                boot_s=float(data["boot_s"]),
                floor=float(data["floor"]),
                exact=bool(data.get("exact", False)),
                untrusted_from=int(untrusted) if untrusted is not None else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("the dose clock's kept state does not read; starting from the floor")
            return None


class DoseClock:
    """The dose clock of one ledger: ``now()`` is the time to date a second by and to ask the
    week at; ``exact`` whether this boot has trusted time. The state lives in the ledger, read
    afresh at every call, so every process of the device (the service, a standalone play) keeps
    one clock. ``refresh()`` asks the sources whether the wall clock is synchronised now."""

    def __init__(self, ledger: DoseLedger, sources: TimeSources | None = None) -> None:
        self.ledger = ledger
        self.sources = sources or TimeSources()

    def _state(self, boot: BootReading) -> ClockState:
        return ClockState.resumed(ClockState.parse(self.ledger.clock_state()), boot)

    def now(self) -> float:
        boot = self.sources.boot()
        return self._state(boot).time_at(boot.seconds, self.sources.wall())

    @property
    def exact(self) -> bool:
        return self._state(self.sources.boot()).exact

    def refresh(self) -> bool:
        """Take the wall clock as exact when the kernel says it is synchronised (the untrusted
        minutes moved, ``ClockState.made_exact``); whether this boot has trusted time."""
        synchronized = self.sources.synchronized()
        with self.ledger.clock_lock:
            boot = self.sources.boot()
            state = self._state(boot)
            if not synchronized:
                if ClockState.parse(self.ledger.clock_state()) != state:
                    self.ledger.save_clock_state(state.text())  # a new boot, kept from now on
                return state.exact
            real = self.sources.wall()
            exact, move = state.made_exact(boot.seconds, real)
            if not state.exact or abs(real - state.floor_at(boot.seconds)) >= 1.0:
                self.ledger.move_minutes(*move, exact.text())
            return True

    def raise_floor(self, known: float) -> None:
        """A Unix time known to have passed (a signed server time): the floor and the untrusted
        minutes rise to it."""
        with self.ledger.clock_lock:
            boot = self.sources.boot()
            raised = self._state(boot).raised(boot.seconds, known)
            if raised is None:
                return
            state, move = raised
            self.ledger.move_minutes(*move, state.text())
        log.info("dose clock: at least %s, from the server's signed time", _utc(known))

    def date(self, at: float, pa2s: float, seconds: int) -> None:
        """Add ``pa2s`` over ``seconds`` ending at dose time ``at`` (a reading of ``now``)."""
        with self.ledger.clock_lock:
            boot = self.sources.boot()
            state = self._state(boot).dated(boot.seconds, at)
            self.ledger.add_energy(at, pa2s, seconds, clock_state=state.text())


@dataclass(frozen=True)
class DatedLedger:
    """The ledger as the safety chain sees it (its ``DoseRecord``), dated by the dose clock: give
    the chain ``clock.now`` as its clock."""

    clock: DoseClock

    def status(self, now: float, mode: DoseMode = 1) -> DoseStatus:
        return self.clock.ledger.status(now, mode)

    def add_second(self, at: float, level_dba: float) -> None:
        self.clock.date(at, pressure_squared(level_dba), 1)

    def add_energy(self, at: float, pa2s: float, seconds: int) -> None:
        self.clock.date(at, pa2s, seconds)


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
