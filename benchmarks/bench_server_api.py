"""API latency with a big database: p95 of a clinician's session list and of the 7-day dose query,
with N sessions stored (default 1,000,000; ``RESONERA_BENCH_API_N`` for quick runs), on SQLite and
on PostgreSQL (when installed).

Sessions are bulk-loaded beneath the ORM (sqlite3 ``executemany``, PostgreSQL ``COPY``), spread
over ``PATIENTS`` patients and a year; the dose table is filled to match. Requests go through the
whole app (routing, auth against the database, audit row per read) in-process, so the figure is
the server's own time without the network.
"""

from __future__ import annotations

import os
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session
from support import bench_postgres

from resonera.common.ids import new_id
from resonera.server.app import create_app
from resonera.server.crypto import FieldCipher, HmacSigner, new_key_line, parse_keys
from resonera.server.db import make_engine, migrate
from resonera.server.desired import MemoryPublisher
from resonera.server.models import (
    AssignmentRow,
    ClinicianPatientRow,
    DeviceRow,
    PatientRow,
    SessionRow,
    UserRow,
    table_of,
)
from resonera.server.security import issue_access_token
from resonera.server.settings import ServerSettings

if TYPE_CHECKING:
    import psycopg

N = int(os.environ.get("RESONERA_BENCH_API_N", "1000000"))
PATIENTS = 1000
CLINICIAN_PATIENTS = 20
REQUESTS = 200
TARGET_MS = 50.0
TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


def _patients() -> list[str]:
    return [new_id() for _ in range(PATIENTS)]


COLUMNS = [c.name for c in table_of(SessionRow).columns if c.name != "id"]
#: Columns the rows below leave out take their model defaults (new columns need no change here).
DEFAULTS = {
    c.name: c.default.arg
    for c in table_of(SessionRow).columns
    if c.default is not None and c.default.is_scalar
}


def _session_rows(patients: list[str]) -> Iterator[tuple[Any, ...]]:
    """Rows in ``COLUMNS`` order, newest data within the last year."""
    rng = random.Random(7)
    digest = "0" * 64
    for i in range(N):
        patient = i % PATIENTS
        start = TODAY - timedelta(seconds=rng.randrange(365 * 86400))
        row = {
            "device_id": f"dev-{patient}",
            "message_id": f"m{i:035d}",
            "seq": i // PATIENTS,
            "device_time": start,
            "received_at": start,
            "patient_id": patients[patient],
            "session_id": f"s{i:035d}",
            "program_name": "calm-40hz" if i % 3 else "deep-sleep",
            "program_digest": digest,
            "started_at": start,
            "ended_at": start + timedelta(minutes=20),
            "planned_s": 1200.0,
            "played_s": 1200.0,
            "outcome": "completed",
            "sink": "null",
            "sample_rate": 48000,
            "peak_dbfs": -6.0,
            "rms_dbfs": -20.0,
            "simulation": False,
            "dose_fraction": 0.01,
        }
        yield tuple(row[c] if c in row else DEFAULTS[c] for c in COLUMNS)


def _people(engine: Engine, patients: list[str]) -> tuple[UserRow, list[str]]:
    cipher = FieldCipher(*parse_keys(new_key_line("b"), "bench"))
    now = datetime.now(UTC)
    with Session(engine) as session:
        clinician = UserRow(email="c@bench", password_hash="x", role="clinician", created_at=now)
        session.add(clinician)
        session.flush()
        assert clinician.id is not None
        for number, pid in enumerate(patients):
            enc = {
                f: cipher.encrypt("x", patient_id=pid, field=f)
                for f in ("name", "birth_date", "notes")
            }
            session.add(
                PatientRow(
                    id=pid,
                    name_enc=enc["name"],
                    birth_date_enc=enc["birth_date"],
                    notes_enc=enc["notes"],
                    created_at=now,
                    updated_at=now,
                )
            )
            session.add(DeviceRow(id=f"dev-{number}", created_at=now))
        session.flush()
        for number, pid in enumerate(patients):
            session.add(
                AssignmentRow(
                    device_id=f"dev-{number}",
                    patient_id=pid,
                    valid_from=TODAY - timedelta(days=400),
                    created_at=now,
                )
            )
            if number < CLINICIAN_PATIENTS:
                session.add(
                    ClinicianPatientRow(user_id=clinician.id, patient_id=pid, created_at=now)
                )
        session.commit()
        session.refresh(clinician)
        return clinician, patients[:CLINICIAN_PATIENTS]


DOSE_COLUMNS = ("patient_id", "day", "dose_fraction", "sessions", "played_s")


def _dose_rows(patients: list[str]) -> list[tuple[str, date, float, int, float]]:
    return [
        (pid, (TODAY - timedelta(days=d)).date(), 0.03, 3, 3600.0)
        for pid in patients
        for d in range(365)
    ]


def sqlite_insert(
    conn: sqlite3.Connection, table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]
) -> None:
    """Bulk insert in chunks, times as the naive UTC text SQLAlchemy stores on SQLite."""
    marks = ",".join("?" * len(columns))
    sql = f"INSERT INTO {table} ({','.join(columns)}) VALUES ({marks})"

    def text(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.astimezone(UTC).replace(tzinfo=None).strftime(SQLITE_TIME)
        return value.isoformat() if isinstance(value, date) else value

    rows = iter(rows)
    while chunk := [tuple(map(text, r)) for _, r in zip(range(50_000), rows, strict=False)]:
        conn.executemany(sql, chunk)


def postgres_copy(
    cur: psycopg.Cursor[Any], table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]
) -> None:
    with cur.copy(f"COPY {table} ({','.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def load_sqlite(path: Path, patients: list[str]) -> None:
    conn = sqlite3.connect(path)
    sqlite_insert(conn, "session_record", COLUMNS, _session_rows(patients))
    sqlite_insert(conn, "dose_daily", DOSE_COLUMNS, _dose_rows(patients))
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()


def load_postgres(url: str, patients: list[str]) -> None:
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn:
        with conn.cursor() as cur:
            postgres_copy(cur, "session_record", COLUMNS, _session_rows(patients))
            postgres_copy(cur, "dose_daily", DOSE_COLUMNS, _dose_rows(patients))
        conn.commit()
        conn.execute("ANALYZE")


def timed(call: Callable[[], Any], requests: int, warmup: int) -> tuple[float, float]:
    """Median and p95 in milliseconds of ``requests`` calls after ``warmup`` unmeasured ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[max(0, int(0.95 * len(times)) - 1)]


def bench_app(engine: Engine) -> tuple[ServerSettings, FastAPI]:
    settings = ServerSettings(jwt_secret=SecretStr("b" * 40), demo=False).checked_for_start()
    app = create_app(
        settings,
        engine,
        cipher=FieldCipher(*parse_keys(new_key_line("b"), "bench")),
        publisher=MemoryPublisher(),
        signer=HmacSigner(b"bench"),
    )
    return settings, app


def measure(label: str, engine: Engine, clinician: UserRow, mine: list[str]) -> None:
    settings, app = bench_app(engine)
    headers = {
        "Authorization": f"Bearer {issue_access_token(settings, clinician, datetime.now(UTC))}"
    }
    rng = random.Random(1)
    with TestClient(app) as client:

        def get(url: str, **params: Any) -> None:
            response = client.get(url, params=params, headers=headers)
            assert response.status_code == 200, response.text

        def patient_sessions() -> None:
            get(f"/api/v1/patients/{rng.choice(mine)}/sessions", limit=100)

        def window() -> None:
            since = (TODAY - timedelta(days=rng.randrange(30, 300))).isoformat()
            get(f"/api/v1/patients/{rng.choice(mine)}/sessions", limit=100, **{"from": since})

        def all_sessions() -> None:
            get("/api/v1/sessions", limit=100)

        def dose() -> None:
            get(f"/api/v1/patients/{rng.choice(mine)}/dose", days=7)

        for name, call in (
            ("patient's sessions, newest 100", patient_sessions),
            ("patient's sessions from a date", window),
            ("all my patients' sessions, 100", all_sessions),
            ("7-day dose", dose),
        ):
            median, p95 = timed(call, REQUESTS, warmup=10)
            verdict = "ok" if p95 <= TARGET_MS else f"over the {TARGET_MS:.0f} ms target"
            print(f"  {label:10s} {name:32s} p50 {median:6.1f} ms  p95 {p95:6.1f} ms  {verdict}")


Measure = Callable[[str, Engine, UserRow, list[str]], None]


def on_each_database(
    database: str,
    people: Callable[[Engine, list[str]], tuple[UserRow, list[str]]],
    load_sqlite: Callable[[Path, list[str]], None],
    load_postgres: Callable[[str, list[str]], None],
    measure: Measure,
) -> None:
    """Set up, bulk-load and measure on SQLite, then on PostgreSQL where it is installed."""
    patients = _patients()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        path = Path(tmp) / f"{database}.db"
        engine = make_engine(f"sqlite:///{path}")
        migrate(engine)
        clinician, mine = people(engine, patients)
        start = time.perf_counter()
        load_sqlite(path, patients)
        print(f"  SQLite loaded in {time.perf_counter() - start:.1f} s")
        measure("SQLite", engine, clinician, mine)
        engine.dispose()
        url = bench_postgres(stack, f"bench_{database}")
        if url is None:
            return
        engine = make_engine(url)
        migrate(engine)
        clinician, mine = people(engine, patients)
        start = time.perf_counter()
        load_postgres(url, patients)
        print(f"  PostgreSQL loaded in {time.perf_counter() - start:.1f} s")
        measure("PostgreSQL", engine, clinician, mine)
        engine.dispose()


def main() -> None:
    print(
        f"server API latency: {N:,} sessions over {PATIENTS} patients, clinician with "
        f"{CLINICIAN_PATIENTS} (RESONERA_BENCH_API_N to change), {REQUESTS} requests each"
    )
    on_each_database("api", _people, load_sqlite, load_postgres, measure)


if __name__ == "__main__":
    main()
