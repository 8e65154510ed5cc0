from __future__ import annotations

import hashlib
import sqlite3
import struct
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from resonera.common.dose import dose_fraction
from resonera.device.crypto_store import DataKeyMismatch, DataKeyMissing, create_key_file
from resonera.device.safety.dose_ledger import DoseLedger

T0 = 1_800_000_000.0  # a fixed Unix time: the ledger never reads the clock itself
HOUR = 3600.0
DAY = 86400.0
RESET_A = "0190a000-0000-7000-8000-00000000000a"
RESET_B = "0190a000-0000-7000-8000-00000000000b"


def _tamper(path: Path, minute: int | None = None) -> None:
    """Flip one bit of a sealed row (of every row, or of ``minute``'s): what disk rot does."""
    where = "" if minute is None else f" WHERE minute = {minute}"
    with sqlite3.connect(path) as conn:
        rows = conn.execute(f"SELECT minute, sealed FROM dose_minute{where}").fetchall()
        for row_minute, sealed in rows:
            flipped = bytes(sealed[:-1]) + bytes([sealed[-1] ^ 1])
            conn.execute(
                "UPDATE dose_minute SET sealed = ? WHERE minute = ?", (flipped, row_minute)
            )


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


def test_minutes_older_than_35_days_go_with_the_first_write_of_a_day(tmp_path: Path) -> None:
    ledger = DoseLedger(tmp_path / "dose.db")
    ledger.add_second(T0, 80.0)
    ledger.add_second(T0 + 34 * DAY, 80.0)
    with sqlite3.connect(tmp_path / "dose.db") as conn:
        assert conn.execute("SELECT count(*) FROM dose_minute").fetchone() == (2,)
    ledger.add_second(T0 + 36 * DAY, 80.0)  # a new day: the first minute is past the retention
    with sqlite3.connect(tmp_path / "dose.db") as conn:
        kept = [m for (m,) in conn.execute("SELECT minute FROM dose_minute ORDER BY minute")]
    assert kept == [int((T0 + 34 * DAY) // 60), int((T0 + 36 * DAY) // 60)]
    days_with_sound = [day for day, total in ledger.daily(T0 + 36 * DAY, days=40) if total]
    assert days_with_sound == [
        datetime.fromtimestamp(T0 + 34 * DAY, UTC).date(),
        datetime.fromtimestamp(T0 + 36 * DAY, UTC).date(),
    ]


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
    _tamper(path)
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


def _ledger_files(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.iterdir() if p.name.startswith("dose.db"))


# --- sealed at rest ------------------------------------------------------------------------------


def test_the_energy_is_sealed_on_disk_under_the_device_data_key(tmp_path: Path) -> None:
    ledger = DoseLedger(tmp_path / "dose.db")
    ledger.add_energy(T0, pa2s=1234.5678, seconds=60)
    ledger.close()
    on_disk = _ledger_files(tmp_path)
    assert all(struct.pack(f"{order}d", 1234.5678) not in on_disk for order in "<>")
    with sqlite3.connect(tmp_path / "dose.db") as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(dose_minute)")}
    assert columns == {"minute", "seconds", "sealed"}
    # the store's key: one data key per device, in the file the store uses
    assert (tmp_path / "keys" / "data.key").stat().st_size == 32
    assert DoseLedger(tmp_path / "dose.db").status(T0 + 60).pa2s == pytest.approx(1234.5678)


def test_a_lost_key_is_reported_never_silently_replaced(tmp_path: Path) -> None:
    ledger = DoseLedger(tmp_path / "dose.db")
    ledger.add_energy(T0, pa2s=10.0)
    ledger.add_energy(T0 + 60, pa2s=10.0)
    ledger.close()
    key_file = tmp_path / "keys" / "data.key"
    key_file.unlink()
    with pytest.raises(DataKeyMissing, match=r"the 2 stored record\(s\) cannot be read"):
        DoseLedger(tmp_path / "dose.db")
    assert not key_file.exists()  # no new key was made over the sealed rows


def test_another_key_is_refused_by_name(tmp_path: Path) -> None:
    DoseLedger(tmp_path / "dose.db").add_energy(T0, pa2s=10.0)
    other = tmp_path / "other" / "data.key"
    create_key_file(other)
    with pytest.raises(DataKeyMismatch, match="is not the key the dose ledger"):
        DoseLedger(tmp_path / "dose.db", key_path=other)


FIRST_RELEASE_DDL = (
    "CREATE TABLE dose_minute (minute INTEGER NOT NULL, pa2s FLOAT NOT NULL, "
    "seconds INTEGER NOT NULL, checksum VARCHAR NOT NULL, PRIMARY KEY (minute))",
    "CREATE TABLE dose_reset (id INTEGER NOT NULL, at DATETIME NOT NULL, "
    "removed_rows INTEGER NOT NULL, note VARCHAR NOT NULL, PRIMARY KEY (id))",
)


def test_a_plaintext_ledger_is_sealed_on_open_and_a_bad_row_stays_bad(tmp_path: Path) -> None:
    path = tmp_path / "dose.db"
    good, bad = int(T0 // 60), int(T0 // 60) + 1
    with sqlite3.connect(path) as conn:
        for ddl in FIRST_RELEASE_DDL:
            conn.execute(ddl)
        checksum = hashlib.sha256(f"{good}:{4321.25!r}:{60}".encode()).hexdigest()[:16]
        conn.execute("INSERT INTO dose_minute VALUES (?, 4321.25, 60, ?)", (good, checksum))
        conn.execute("INSERT INTO dose_minute VALUES (?, 7.0, 60, 'not-its-checksum')", (bad,))
        conn.execute(
            "INSERT INTO dose_reset VALUES (1, '2026-11-01 09:00:00.000000', 1, 'earlier reset')"
        )
    assert struct.pack(">d", 4321.25) in path.read_bytes()

    ledger = DoseLedger(path)
    status = ledger.status(T0 + 120)
    assert status.pa2s == pytest.approx(4321.25)  # the intact minute, now sealed
    assert status.corrupted  # the bad one is still reported
    ledger.close()
    on_disk = _ledger_files(tmp_path)
    assert struct.pack(">d", 4321.25) not in on_disk  # SQLite keeps a REAL big-endian
    assert b"earlier reset" not in on_disk
    reopened = DoseLedger(path)  # sealing happens once
    assert reopened.status(T0 + 120).pa2s == pytest.approx(4321.25)
    assert reopened.reset(RESET_A, T0 + 120, reason="review").removed_rows == 1
    assert not reopened.status(T0 + 120).corrupted


# --- a clinician's reset, once -------------------------------------------------------------------


def test_a_reset_removes_only_the_bad_rows_once_and_records_the_week_before(
    tmp_path: Path,
) -> None:
    path = tmp_path / "dose.db"
    ledger = DoseLedger(path)
    ledger.add_energy(T0, pa2s=0.1 * 5760.0, seconds=60)  # 10 % of the week, intact
    ledger.add_energy(T0 + 60, pa2s=99.0, seconds=60)
    _tamper(path, int((T0 + 60) // 60))
    assert ledger.status(T0 + 120).fraction == 1.0  # counted as all used

    done = ledger.reset(RESET_A, T0 + 120, reason="sensor swap", requested_by="dr@x.org")
    assert done.applied and not done.repeated
    assert done.removed_rows == 1
    assert done.corrupted_before
    assert done.week_fraction_before == 1.0
    assert done.week_pa2s_before == pytest.approx(576.0)
    assert done.week_fraction_after == pytest.approx(0.1)  # the real exposure still counts
    assert ledger.status(T0 + 120).fraction == pytest.approx(0.1)

    # rot again, then the same request again (a newer document still carrying it): nothing done
    ledger.add_energy(T0 + 180, pa2s=5.0, seconds=60)
    _tamper(path, int((T0 + 180) // 60))
    again = ledger.reset(RESET_A, T0 + 240, reason="sensor swap")
    assert again.repeated and again.applied and again.removed_rows == 1
    assert ledger.status(T0 + 240).corrupted


def test_a_reset_of_an_intact_ledger_is_refused_and_stays_refused(tmp_path: Path) -> None:
    path = tmp_path / "dose.db"
    ledger = DoseLedger(path)
    ledger.add_energy(T0, pa2s=0.5 * 5760.0, seconds=60)
    refused = ledger.reset(RESET_B, T0 + 60, reason="patient asked")
    assert not refused.applied
    assert refused.week_fraction_after == pytest.approx(0.5)
    assert ledger.status(T0 + 60).fraction == pytest.approx(0.5)  # nothing given back
    _tamper(path)
    assert ledger.reset(RESET_B, T0 + 120, reason="patient asked").repeated
    assert ledger.status(T0 + 120).corrupted  # that old request does not apply later


def test_a_reset_whose_event_was_not_written_is_found_again(tmp_path: Path) -> None:
    path = tmp_path / "dose.db"
    ledger = DoseLedger(path)
    ledger.add_energy(T0, pa2s=1.0)
    _tamper(path)
    assert not ledger.reset(RESET_A, T0 + 60, reason="review").event_recorded
    ledger.close()  # the process died before the event was in the store
    reopened = DoseLedger(path)
    pending = reopened.reset(RESET_A, T0 + 120, reason="review")
    assert pending.repeated and not pending.event_recorded
    assert (pending.reason, pending.removed_rows) == ("review", 1)
    reopened.mark_recorded(RESET_A)
    assert reopened.reset(RESET_A, T0 + 180, reason="review").event_recorded
