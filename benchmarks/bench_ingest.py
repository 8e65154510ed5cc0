"""Ingest store speed: validated, idempotent batches into SQLite, against raw inserts of the same rows.

The baseline, measured in the same run, is ``sqlite3.executemany`` of the same number of rows into an
equivalent table with no validation: the ratio is the price of envelope checks, body validation and
insert-or-ignore. Measured into an empty store, again (all duplicates), and into a store already
holding ``FILLED`` sessions: a batch's cost must not grow with the history.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from factories import make_record
from sqlmodel import Session

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.server.db import init_db, make_engine
from resonera.server.ingest import IngestProcessor, Received
from resonera.server.models import DeviceRow

MESSAGES = 5_000
BATCH = 200
FILLED = 300_000


def messages() -> list[Received]:
    out = []
    for i in range(MESSAGES):
        device = f"bench-{i % 50}"
        env = Envelope.create(
            device=device, seq=i, kind="session", body=make_record().model_dump(mode="json")
        )
        out.append(Received(topic=topics.up(device, "session"), payload=env.to_bytes()))
    return out


def _fill(path: Path, count: int) -> None:
    """``count`` more sessions, copies of a stored one under other message ids."""
    conn = sqlite3.connect(path)
    columns = [r[1] for r in conn.execute("PRAGMA table_info(session_record)") if r[1] != "id"]
    values = ["'fill-' || i" if c == "message_id" else f"s.{c}" for c in columns]
    conn.execute(
        f"INSERT INTO session_record ({', '.join(columns)}) "
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count}) "
        f"SELECT {', '.join(values)} FROM n, (SELECT * FROM session_record LIMIT 1) AS s"
    )
    conn.commit()
    conn.close()


def time_ingest(batch: list[Received], folder: Path, *, filled: int = 0) -> tuple[float, float]:
    """Seconds of wall-clock and of CPU time to store ``batch``."""
    engine = make_engine(f"sqlite:///{folder / 'ingest.db'}")
    init_db(engine)
    with Session(engine) as session:  # ingest stores registered devices only
        for name in sorted({topics.parse_up(m.topic)[0] for m in batch}):
            if session.get(DeviceRow, name) is None:
                session.add(DeviceRow(id=name, created_at=datetime.now(UTC)))
        session.commit()
    processor = IngestProcessor(engine)
    if filled:
        processor.process(batch[:1])
        _fill(folder / "ingest.db", filled)
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(batch), BATCH):
        processor.process(batch[i : i + BATCH])
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    engine.dispose()
    return elapsed, cpu


def time_raw(batch: list[Received], folder: Path) -> tuple[float, float]:
    conn = sqlite3.connect(folder / "raw.db")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("create table t (device text, id text, payload blob, primary key (device, id))")
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(batch), BATCH):
        rows = [(m.topic, str(n), m.payload) for n, m in enumerate(batch[i : i + BATCH], start=i)]
        conn.executemany("insert or ignore into t values (?, ?, ?)", rows)
        conn.commit()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    conn.close()
    return elapsed, cpu


def _show(label: str, timing: tuple[float, float]) -> str:
    elapsed, cpu = timing
    return f"  {label:20s} {MESSAGES / elapsed:9.0f} msg/s  CPU {cpu / MESSAGES * 1e6:5.1f} µs/msg"


def main() -> None:
    batch = messages()
    with tempfile.TemporaryDirectory() as tmp:
        ingest = time_ingest(batch, Path(tmp))
        again = time_ingest(batch, Path(tmp))  # same messages again: all duplicates
        (Path(tmp) / "ingest.db").unlink()
        filled = time_ingest(batch, Path(tmp), filled=FILLED)
        raw = time_raw(batch, Path(tmp))
    print(f"ingest: {MESSAGES} session envelopes in batches of {BATCH}, SQLite")
    print(_show("validated + stored", ingest))
    print(_show("all duplicates", again))
    print(_show(f"into {FILLED:,} stored", filled))
    print(_show("raw executemany", raw) + " (baseline)")
    print(f"  ingest / raw cost ratio: {ingest[0] / raw[0]:.1f} (CPU {ingest[1] / raw[1]:.1f})")


if __name__ == "__main__":
    main()
