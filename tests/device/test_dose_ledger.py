from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from resonera.common.dose import dose_fraction
from resonera.device.safety.dose_ledger import DoseLedger

T0 = 1_800_000_000.0  # a fixed Unix time: the ledger never reads the clock itself
HOUR = 3600.0
DAY = 86400.0


def test_forty_hours_at_80_dba_is_the_weekly_allowance_in_accelerated_time(tmp_path: Path) -> None:
    ledger = DoseLedger(tmp_path / "dose.db")
    # 40 hours as 40 hour-long entries (accelerated: the arithmetic is the same per second)
    for hour in range(40):
        ledger.add_energy(T0 + hour * HOUR, pa2s=0.04 * HOUR, seconds=int(HOUR))
    status = ledger.status(T0 + 40 * HOUR, mode=1)
    assert status.fraction == pytest.approx(1.0, rel=0.01)
    assert ledger.status(T0 + 40 * HOUR, mode=2).fraction == pytest.approx(1.6 / 0.51, rel=0.01)


def test_seconds_add_up_like_the_formula(tmp_path: Path) -> None:
    ledger = DoseLedger(tmp_path / "dose.db")
    for s in range(120):
        ledger.add_second(T0 + s, 85.0)
    assert ledger.status(T0 + 120).fraction == pytest.approx(dose_fraction(85.0, 120.0), rel=1e-9)


def test_the_window_rolls_after_seven_days_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "dose.db"
    ledger = DoseLedger(path)
    ledger.add_energy(T0, pa2s=1000.0, seconds=100)
    ledger.add_energy(T0 + 3 * DAY, pa2s=500.0, seconds=50)
    ledger.close()
    reopened = DoseLedger(path)
    assert reopened.status(T0 + 3 * DAY).pa2s == pytest.approx(1500.0)
    assert reopened.status(T0 + 7 * DAY + 120).pa2s == pytest.approx(500.0)
    assert reopened.status(T0 + 11 * DAY).pa2s == 0.0


def test_daily_totals(tmp_path: Path) -> None:
    ledger = DoseLedger(tmp_path / "dose.db")
    ledger.add_energy(T0, pa2s=10.0)
    ledger.add_energy(T0 + DAY, pa2s=20.0)
    days = ledger.daily(T0 + DAY, days=3)
    assert [v for _d, v in days] == [0.0, 10.0, 20.0]


def test_a_corrupted_row_is_reported_and_counts_as_the_allowance_used(tmp_path: Path) -> None:
    path = tmp_path / "dose.db"
    ledger = DoseLedger(path)
    ledger.add_energy(T0, pa2s=10.0)
    with sqlite3.connect(path) as conn:
        conn.execute("update dose_minute set pa2s = 0.001")
    status = ledger.status(T0 + 60)
    assert status.corrupted
    assert status.fraction >= 1.0
    # adding to a bad row never launders it
    ledger.add_energy(T0 + 1, pa2s=1.0)
    assert ledger.status(T0 + 60).corrupted
    assert ledger.reset_corrupted(T0 + 120, "clinician reset after review") == 1
    assert not ledger.status(T0 + 120).corrupted


KILLER = """
import sys, time
from pathlib import Path
from resonera.device.safety.dose_ledger import DoseLedger
ledger = DoseLedger(Path(sys.argv[1]))
for s in range(100000):
    ledger.add_second(1_800_000_000.0 + s, 80.0)
    print(s + 1, flush=True)
"""


def test_killing_the_process_loses_at_most_the_second_in_progress(tmp_path: Path) -> None:
    path = tmp_path / "dose.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    reported = 0
    for line in proc.stdout:
        reported = int(line)
        if reported >= 150:
            break
    proc.kill()  # SIGKILL: no cleanup, like a power cut for the process
    proc.wait()
    for line in proc.stdout:  # what it printed before it died: each line follows a commit
        reported = int(line)
    counted = DoseLedger(path).status(1_800_000_000.0 + 100000).seconds
    assert counted >= reported  # everything reported as added was committed
    assert counted <= reported + 1  # plus at most the second in progress
