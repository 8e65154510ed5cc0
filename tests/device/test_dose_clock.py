"""A dose that survives a wrong clock (issue 22, item 6): the dose clock (``device/trusted_time.py``)
over the real, persisted ledger, on injected clocks (``dose_clocks.FakeTime``: the true time, the
wall clock's error, the boot clock, network time). The issue found a session played while the
clock read 1970 forgotten once the clock was corrected, and one at +30 days counted until +37 days
with the daily view at 0.00 %."""

from __future__ import annotations

import json
import math
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from device_peer import ServerKey, device_settings
from dose_clocks import FakeTime

from resonera.common.clock import CLOCK_FLOOR
from resonera.common.dose import WINDOW_S, pressure_squared
from resonera.device.desired_state import DesiredStateApplier
from resonera.device.safety.dose_ledger import DoseLedger
from resonera.device.trusted_time import (
    ClockState,
    DatedLedger,
    DoseClock,
    kernel_clock_synchronized,
    read_boot_clock,
)

#: Wednesday 2026-06-17, 12:00 UTC: mid-week, after this release's floor.
T0 = 1_781_697_600.0
HOUR, DAY, YEAR = 3600.0, 86400.0, 365 * 86400.0
LEVEL = 85.0


def play(clock: DoseClock, fake: FakeTime, seconds: int, level: float = LEVEL) -> float:
    """``seconds`` at ``level`` through the chain's record (``DatedLedger``), dated by the dose
    clock as the chain dates them, 10 s per write (accelerated: the ledger's arithmetic is the
    same per second); the energy played."""
    record = DatedLedger(clock)
    for _ in range(seconds // 10):
        fake.advance(10.0)
        record.add_energy(clock.now(), pressure_squared(level) * 10.0, 10)
    return pressure_squared(level) * (seconds // 10 * 10)


def week_at_true_time(ledger: DoseLedger, clock: DoseClock) -> float:
    assert clock.exact, "asked at trusted time"
    return ledger.status(clock.now()).pa2s


@pytest.fixture
def ledger(tmp_path: Path) -> DoseLedger:
    return DoseLedger(tmp_path / "dose.db")


def test_a_session_played_while_the_clock_read_1970_counts_once_it_is_corrected(
    ledger: DoseLedger,
) -> None:
    fake = FakeTime(T0, synced=True)
    clock = DoseClock(ledger, fake.sources())
    assert clock.refresh() and clock.exact
    before = play(clock, fake, 600)  # Wednesday: 10 min with network time
    # Thursday: a reboot without network, the clock back in 1970
    fake.reboot(off_for=DAY, wall_error=-T0 - DAY)
    assert not clock.refresh() and not clock.exact
    assert clock.now() >= T0  # dated at the floor, never in 1970
    offline = play(clock, fake, 900)
    fake.advance(2 * HOUR)
    fake.synced, fake.wall_error = True, 0.0  # network time arrives, the clock is set
    assert clock.refresh()
    assert week_at_true_time(ledger, clock) == pytest.approx(before + offline, rel=1e-9)
    # the offline session counts for a whole week from when it was really played (it is dated
    # no earlier; the minute it shares with Wednesday's last seconds moves whole), and is gone
    # after the week from the correction
    late = ledger.status(fake.real + WINDOW_S - 3 * HOUR).pa2s
    assert offline <= late <= offline + pressure_squared(LEVEL) * 10.0 * (1 + 1e-9)
    assert ledger.status(fake.real + WINDOW_S + 120).pa2s == 0.0


def test_forward_by_a_year_mid_week_loses_no_dose(ledger: DoseLedger) -> None:
    fake = FakeTime(T0, synced=True)
    clock = DoseClock(ledger, fake.sources())
    clock.refresh()
    monday = play(clock, fake, 1200)
    fake.advance(2 * DAY)
    fake.synced, fake.wall_error = False, YEAR  # someone sets the clock a year ahead
    ahead = play(clock, fake, 600)  # the boot keeps its trusted time: the step moves nothing
    assert ledger.status(clock.now()).pa2s == pytest.approx(monday + ahead, rel=1e-9)
    # a reboot while the clock still reads a year ahead: the clock is untrusted now
    fake.reboot(off_for=HOUR)
    clock.refresh()
    assert not clock.exact
    later = play(clock, fake, 300)
    ledger.add_energy(clock.now(), 0.0, 0)  # a write a year ahead: the retention removes nothing
    fake.advance(HOUR)
    fake.synced, fake.wall_error = True, 0.0
    clock.refresh()
    assert week_at_true_time(ledger, clock) == pytest.approx(monday + ahead + later, rel=1e-9)


def test_back_to_1970_mid_week_then_forward_by_a_year_loses_no_dose(ledger: DoseLedger) -> None:
    fake = FakeTime(T0, synced=True)
    clock = DoseClock(ledger, fake.sources())
    clock.refresh()
    played = play(clock, fake, 600)
    for error in (-T0, YEAR, -T0 / 2, 0.0):  # four reboots, four wrong clocks, no network
        fake.reboot(off_for=6 * HOUR, wall_error=error)
        clock.refresh()
        played += play(clock, fake, 300)
    fake.synced = True
    clock.refresh()
    assert week_at_true_time(ledger, clock) == pytest.approx(played, rel=1e-9)


def test_a_session_from_the_future_is_clamped_to_the_correction(ledger: DoseLedger) -> None:
    fake = FakeTime(T0, wall_error=30 * DAY)  # a first boot at +30 days, no network
    clock = DoseClock(ledger, fake.sources())
    clock.refresh()
    played = play(clock, fake, 1800)
    assert clock.now() > T0 + 29 * DAY
    fake.advance(HOUR)
    fake.synced, fake.wall_error = True, 0.0
    clock.refresh()
    now = clock.now()
    assert ledger.status(now).pa2s == pytest.approx(played, rel=1e-9)
    # the daily view shows it today, not 0.00 % everywhere
    today = ledger.daily(now)[-1]
    assert today[1] == pytest.approx(played, rel=1e-9)
    # counted for the 7 days from the correction, not until +37 days
    assert ledger.status(now + WINDOW_S - 120).pa2s == pytest.approx(played, rel=1e-9)
    assert ledger.status(now + WINDOW_S + 120).pa2s == 0.0


def test_the_servers_signed_time_raises_the_floor(ledger: DoseLedger) -> None:
    fake = FakeTime(T0, wall_error=-T0)  # a first boot in 1970, no network
    clock = DoseClock(ledger, fake.sources())
    clock.refresh()
    assert clock.now() == pytest.approx(CLOCK_FLOOR)
    early = play(clock, fake, 60)
    signed = T0 - HOUR  # a retained desired state, issued an hour ago
    clock.raise_floor(signed)
    assert not clock.exact
    assert clock.now() == pytest.approx(signed)
    played = early + play(clock, fake, 60)
    assert ledger.status(clock.now()).pa2s == pytest.approx(played, rel=1e-9)
    clock.raise_floor(signed - DAY)  # an older document: nothing moves
    assert clock.now() == pytest.approx(signed + 60)
    # the minutes dated before the rise moved with it: all inside the week of the true time
    fake.synced, fake.wall_error = True, 0.0
    clock.refresh()
    assert week_at_true_time(ledger, clock) == pytest.approx(played, rel=1e-9)


def test_the_clock_is_one_for_every_process_of_a_boot(ledger: DoseLedger) -> None:
    fake = FakeTime(T0, synced=True)
    DoseClock(ledger, fake.sources()).refresh()
    fake.advance(HOUR)
    fake.synced, fake.wall_error = False, -T0
    # another process of the same boot (a standalone play): the boot's trusted time holds
    other = DoseClock(ledger, fake.sources())
    assert other.exact
    assert other.now() == pytest.approx(T0 + HOUR)


def test_a_kept_state_that_does_not_read_starts_again_from_the_floor(ledger: DoseLedger) -> None:
    ledger.save_clock_state("{not json")
    fake = FakeTime(T0, wall_error=-T0)
    clock = DoseClock(ledger, fake.sources())
    assert clock.now() == pytest.approx(CLOCK_FLOOR)
    assert not clock.refresh()
    state = ClockState.parse(ledger.clock_state())
    assert state is not None and state.floor == pytest.approx(CLOCK_FLOOR)


def test_moving_minutes_keeps_every_joule_and_merges_rows(ledger: DoseLedger) -> None:
    minute = int(T0 // 60)
    ledger.add_energy(T0, 10.0, 10)
    ledger.add_energy(T0 + 60, 20.0, 20)
    ledger.add_energy(T0 + 3 * 60, 5.0, 5)  # the trusted minute two later
    moved = ledger.move_minutes(minute, 3, minute + 3, ClockState("b", 0.0, T0).text())
    assert moved == 2
    status = ledger.status(T0 + 4 * 60)
    assert (status.pa2s, status.seconds) == (35.0, 35)
    assert [total for _day, total in ledger.daily(T0 + 4 * 60, days=1)] == [35.0]
    assert math.isclose(ledger.status(T0 + 3 * 60 + WINDOW_S).pa2s, 35.0)


def test_a_verified_desired_states_signed_time_raises_the_floor(tmp_path: Path) -> None:
    """The applier takes the server's signed ``issued_at`` as a time that has passed: a device
    whose clock reads 1970 without network time dates no earlier than the document."""
    key = ServerKey()
    device = "clock-dev"
    settings = device_settings(None, tmp_path, device, server_public_key=key.public_b64)
    ledger = DoseLedger.for_settings(settings)
    fake = FakeTime(T0, wall_error=-T0)
    applier = DesiredStateApplier(
        settings.open_store(),
        device,
        settings.pinned_server_key(),
        settings.profile,
        open_ledger=lambda: ledger,
        time_sources=fake.sources(),
    )
    issued = datetime.fromtimestamp(T0 - DAY, UTC)
    signed = key.payload(device, 1, issued_at=issued.isoformat())
    assert applier.handle(signed).outcome == "applied"
    clock = DoseClock(ledger, fake.sources())
    assert not clock.exact
    assert clock.now() == pytest.approx(T0 - DAY)
    forged = json.loads(
        key.payload(device, 2, issued_at=(issued + timedelta(days=400)).isoformat())
    )
    forged["issued_at"] = "2028-01-01T00:00:00+00:00"  # changed after signing: refused, not taken
    assert applier.handle(json.dumps(forged).encode()).outcome == "refused"
    assert clock.now() == pytest.approx(T0 - DAY)


def test_a_minute_never_lands_on_a_row_that_does_not_open(ledger: DoseLedger) -> None:
    """A moved minute would be lost in a damaged row (a clinician's reset removes it): it stays."""
    minute = int(T0 // 60)
    ledger.add_energy(T0, 10.0, 10)
    ledger.add_energy(T0 + 120, 5.0, 5)
    with sqlite3.connect(ledger.path) as conn:  # the landing minute rots
        conn.execute("UPDATE dose_minute SET seconds = 4 WHERE minute = ?", (minute + 2,))
    assert ledger.move_minutes(minute, 2, minute + 2, ClockState("b", 0.0, T0).text()) == 0
    assert ledger.reset_corrupted(T0 + 180, "test") == 1
    assert ledger.status(T0 + 180).pa2s == 10.0


def test_the_real_sources_read_without_privilege() -> None:
    """adjtimex read-only and the boot clock: a bool (False wherever it cannot be read), the same
    boot id, a clock that does not go back."""
    assert isinstance(kernel_clock_synchronized(), bool)
    first, second = read_boot_clock(), read_boot_clock()
    assert first.boot_id == second.boot_id and second.seconds >= first.seconds > 0
