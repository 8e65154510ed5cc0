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


def time_ingest(batch: list[Received], folder: Path, *, filled: int = 0) -> float:
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
    start = time.perf_counter()
    for i in range(0, len(batch), BATCH):
        processor.process(batch[i : i + BATCH])
    elapsed = time.perf_counter() - start
    engine.dispose()
    return elapsed


def time_raw(batch: list[Received], folder: Path) -> float:
    conn = sqlite3.connect(folder / "raw.db")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("create table t (device text, id text, payload blob, primary key (device, id))")
    start = time.perf_counter()
    for i in range(0, len(batch), BATCH):
        rows = [(m.topic, str(n), m.payload) for n, m in enumerate(batch[i : i + BATCH], start=i)]
        conn.executemany("insert or ignore into t values (?, ?, ?)", rows)
        conn.commit()
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def main() -> None:
    batch = messages()
    with tempfile.TemporaryDirectory() as tmp:
        ingest_s = time_ingest(batch, Path(tmp))
        again_s = time_ingest(batch, Path(tmp))  # same messages again: all duplicates
        (Path(tmp) / "ingest.db").unlink()
        filled_s = time_ingest(batch, Path(tmp), filled=FILLED)
        raw_s = time_raw(batch, Path(tmp))
    print(f"ingest: {MESSAGES} session envelopes in batches of {BATCH}, SQLite")
    print(f"  validated + stored   {MESSAGES / ingest_s:9.0f} msg/s")
    print(f"  all duplicates       {MESSAGES / again_s:9.0f} msg/s")
    print(f"  into {FILLED:,} stored {MESSAGES / filled_s:9.0f} msg/s")
    print(f"  raw executemany      {MESSAGES / raw_s:9.0f} msg/s (baseline)")
    print(f"  ingest / raw cost ratio: {ingest_s / raw_s:.1f}")


if __name__ == "__main__":
    main()
