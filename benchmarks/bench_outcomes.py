"""Outcome analytics latency with a big database: p50/p95 of a patient's 90-day outcome view and
of the cohort view, with N sessions stored (default 1,000,000; ``RESONERA_BENCH_API_N`` for quick
runs, shared with ``bench_server_api``) and a before and an after check-in per session, on SQLite
and on PostgreSQL (when installed). ``GET /healthz`` is the baseline: the app's fixed cost.

The sessions, patients and clinician come from ``bench_server_api`` (same rows, same loaders);
check-ins are bulk-loaded beside them the same way. Requests go through the whole app in-process.
"""

from __future__ import annotations

import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bench_server_api as api
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session
from support import run_postgres

from resonera.server.app import create_app
from resonera.server.crypto import FieldCipher, HmacSigner, new_key_line, parse_keys
from resonera.server.db import make_engine, migrate
from resonera.server.desired import MemoryPublisher
from resonera.server.models import PatientConfigRow, UserRow
from resonera.server.security import issue_access_token
from resonera.server.settings import ServerSettings

TARGET_MS = 100.0
REQUESTS = 200
COHORT_REQUESTS = 50
CHECKIN_COLUMNS = (
    "device_id",
    "record_id",
    "session_id",
    "patient_id",
    "question_id",
    "phase",
    "value",
    "skipped",
    "higher_is_better",
    "answered_at",
    "received_at",
)
_AT = {name: api.COLUMNS.index(name) for name in ("device_id", "session_id", "patient_id")}
_STARTED = api.COLUMNS.index("started_at")


def _checkin_rows(patients: list[str]) -> Iterator[tuple[Any, ...]]:
    """A relaxation answer before and after every session ``bench_server_api`` stores; one in
    twenty skipped."""
    rng = random.Random(11)
    for number, row in enumerate(api._session_rows(patients)):
        device, session_id, patient = (
            row[_AT[k]] for k in ("device_id", "session_id", "patient_id")
        )
        start = row[_STARTED]
        before = rng.randrange(11)
        after = min(10, before + rng.randrange(4))
        for phase, value, at in (
            ("before", before, start - timedelta(minutes=1)),
            ("after", after, start + timedelta(minutes=21)),
        ):
            skipped = rng.random() < 0.05
            yield (
                device,
                f"c{number:034d}{phase[0]}",
                session_id,
                patient,
                "relax",
                phase,
                None if skipped else value,
                skipped,
                True,
                at,
                at,
            )


def load_sqlite(path: Path, patients: list[str]) -> None:
    api.load_sqlite(path, patients)
    conn = sqlite3.connect(path)
    marks = ",".join("?" * len(CHECKIN_COLUMNS))
    sql = f"INSERT INTO checkin ({','.join(CHECKIN_COLUMNS)}) VALUES ({marks})"

    def text(row: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(
            v.astimezone(UTC).replace(tzinfo=None).strftime(api.SQLITE_TIME)
            if isinstance(v, datetime)
            else v
            for v in row
        )

    rows = _checkin_rows(patients)
    while chunk := [text(r) for _, r in zip(range(50_000), rows, strict=False)]:
        conn.executemany(sql, chunk)
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()


def load_postgres(url: str, patients: list[str]) -> None:
    import psycopg

    api.load_postgres(url, patients)
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn:
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY checkin ({','.join(CHECKIN_COLUMNS)}) FROM STDIN") as copy,
        ):
            for row in _checkin_rows(patients):
                copy.write_row(row)
        conn.commit()
        conn.execute("ANALYZE")


def _prescribe(engine: Engine, clinician: UserRow, mine: list[str]) -> None:
    """The clinician's patients get 5 sessions a week and the relaxation question."""
    assert clinician.id is not None
    profile = {
        "checkins": [
            {"id": "relax", "text": "How relaxed?", "low_label": "not", "high_label": "fully"}
        ]
    }
    with Session(engine) as session:
        for pid in mine:
            session.add(
                PatientConfigRow(
                    patient_id=pid,
                    version=1,
                    profile=profile,
                    limits={},
                    programs=[],
                    sessions_per_week=5,
                    created_by=clinician.id,
                    created_at=datetime.now(UTC),
                )
            )
        session.commit()


def _times(call: Callable[[], Any], requests: int) -> tuple[float, float]:
    for _ in range(5):
        call()
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[max(0, int(0.95 * len(times)) - 1)]


def measure(label: str, engine: Engine, clinician: UserRow, mine: list[str]) -> None:
    settings = ServerSettings(jwt_secret=SecretStr("b" * 40), demo=False).checked_for_start()
    app = create_app(
        settings,
        engine,
        cipher=FieldCipher(*parse_keys(new_key_line("b"), "bench")),
        publisher=MemoryPublisher(),
        signer=HmacSigner(b"bench"),
    )
    now = datetime.now(UTC)
    with Session(engine) as session:
        admin = UserRow(email="a@bench", password_hash="x", role="admin", created_at=now)
        session.add(admin)
        session.commit()
        session.refresh(admin)
    headers = {"Authorization": f"Bearer {issue_access_token(settings, clinician, now)}"}
    admin_headers = {"Authorization": f"Bearer {issue_access_token(settings, admin, now)}"}
    rng = random.Random(1)
    with TestClient(app) as client:

        def get(url: str, auth: dict[str, str] = headers, **params: Any) -> None:
            response = client.get(url, params=params, headers=auth)
            assert response.status_code == 200, response.text

        cases: list[tuple[str, Callable[[], None], int]] = [
            ("baseline GET /healthz", lambda: get("/healthz"), REQUESTS),
            (
                "patient's 90-day outcomes",
                lambda: get(f"/api/v1/patients/{rng.choice(mine)}/outcomes", days=90),
                REQUESTS,
            ),
            (
                f"cohort of {len(mine)}, 90 days",
                lambda: get("/api/v1/cohort/outcomes", days=90),
                COHORT_REQUESTS,
            ),
            (
                f"cohort of all {api.PATIENTS} (admin), 30 d",
                lambda: get("/api/v1/cohort/outcomes", admin_headers, days=30),
                max(5, COHORT_REQUESTS // 10),
            ),
        ]
        baseline = 0.0
        for name, call, requests in cases:
            median, p95 = _times(call, requests)
            if not baseline:
                baseline = median
            verdict = ""
            if "patient's" in name:
                verdict = "ok" if p95 <= TARGET_MS else f"over the {TARGET_MS:.0f} ms target"
            print(
                f"  {label:10s} {name:34s} p50 {median:7.1f} ms  p95 {p95:7.1f} ms  "
                f"×{median / baseline:5.1f} baseline  {verdict}"
            )


def main() -> None:
    print(
        f"outcome analytics latency: {api.N:,} sessions over {api.PATIENTS} patients, "
        f"{2 * api.N:,} check-ins, clinician with {api.CLINICIAN_PATIENTS} "
        "(RESONERA_BENCH_API_N to change)"
    )
    patients = api._patients()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        path = Path(tmp) / "outcomes.db"
        engine = make_engine(f"sqlite:///{path}")
        migrate(engine)
        clinician, mine = api._people(engine, patients)
        _prescribe(engine, clinician, mine)
        start = time.perf_counter()
        load_sqlite(path, patients)
        print(f"  SQLite loaded in {time.perf_counter() - start:.1f} s")
        measure("SQLite", engine, clinician, mine)
        engine.dispose()
        try:
            postgres = stack.enter_context(run_postgres())
        except BaseException as exc:  # pytest's skip/fail outcomes when PostgreSQL is missing
            print(f"  PostgreSQL skipped: {exc}")
            return
        postgres.execute("CREATE DATABASE bench_outcomes")
        url = postgres.url("bench_outcomes")
        engine = make_engine(url)
        migrate(engine)
        clinician, mine = api._people(engine, patients)
        _prescribe(engine, clinician, mine)
        start = time.perf_counter()
        load_postgres(url, patients)
        print(f"  PostgreSQL loaded in {time.perf_counter() - start:.1f} s")
        measure("PostgreSQL", engine, clinician, mine)
        engine.dispose()


if __name__ == "__main__":
    main()
