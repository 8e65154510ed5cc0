"""The agent's memory (issue 6: RSS ≤ 100 MB while playing; figures in benchmarks/bench_agent.py).

The device's store and dose ledger use plain ``sqlite3`` (``device/localdb.py``), not SQLAlchemy
(~20 MB resident; that the agent plays without importing it is checked in
``test_agent_footprint.py``), while the files keep the layout and the time format earlier releases
wrote. glibc's heap is capped (``device/memory.py``) where it is glibc, and left alone elsewhere."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from factories import make_record

from resonera.device.store import DeviceStore


def test_times_are_stored_as_earlier_releases_wrote_them(tmp_path: Path) -> None:
    """UTC without a zone, microseconds always: rows written before and after an upgrade sort and
    compare alike (the day's session count, history order)."""
    store = DeviceStore(tmp_path / "device.db")
    berlin = timezone(timedelta(hours=2))
    first = make_record(started_at=datetime(2026, 11, 1, 9, 0, tzinfo=UTC))
    # 2026-11-01 10:30 +02:00 is 08:30 UTC: earlier than the first, whatever its clock said
    second = make_record(
        started_at=datetime(2026, 11, 1, 10, 30, tzinfo=berlin),
        ended_at=datetime(2026, 11, 1, 10, 30, 3, tzinfo=berlin),
    )
    store.record_session("dev-1", first)
    store.record_session("dev-1", second)
    store.close()
    with sqlite3.connect(tmp_path / "device.db") as conn:
        stored = sorted(row[0] for row in conn.execute("SELECT started_at FROM sessions"))
    conn.close()
    assert stored == ["2026-11-01 08:30:00.000000", "2026-11-01 09:00:00.000000"]
    store = DeviceStore(tmp_path / "device.db")
    assert [r.session_id for r in store.sessions()] == [first.session_id, second.session_id]
    assert store.sessions_since(datetime(2026, 11, 1, 8, 45, tzinfo=UTC)) == 1
    assert store.sessions_since(datetime(2026, 11, 1, 10, 40, tzinfo=berlin)) == 1
    store.close()


def test_a_record_that_cannot_be_stored_leaves_no_outbox_message(tmp_path: Path) -> None:
    """The record and its message are one transaction: a failed insert rolls both back, and the
    store goes on working (the sequence number is not used up)."""
    store = DeviceStore(tmp_path / "device.db")
    record = make_record()
    first = store.record_session("dev-1", record)
    with pytest.raises(sqlite3.IntegrityError):
        store.record_session("dev-1", record)  # the same session id again
    assert [m.message_id for m in store.pending()] == [first.id]
    second = store.record_session("dev-1", make_record())
    assert second.seq == first.seq + 1
    store.close()


#: In a fresh interpreter, as ``resonera-device run`` does it (the settings stay for the process):
#: the heap settings, then blocks above and below the mmap threshold allocated and freed in threads.
HEAP = """
import threading

import numpy as np

from resonera.device.memory import limit_native_heap, release_free_memory

applied = [limit_native_heap(), limit_native_heap()]  # twice (a second service) is harmless
sums = []

def work():
    for size in (1_000, 200_000, 2_000_000):
        sums.append(float(np.ones(size, dtype=np.float64).sum()))

threads = [threading.Thread(target=work) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(applied, sorted(sums) == sorted([1_000.0, 200_000.0, 2_000_000.0] * 4), release_free_memory())
"""


def test_the_heap_settings_apply_on_glibc_only_and_leave_allocation_working() -> None:
    glibc = (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    result = subprocess.run(
        [sys.executable, "-c", HEAP], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [f"[{glibc},", f"{glibc}]", "True", str(glibc)]
