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
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bench_server_api as api
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session

from resonera.server.models import PatientConfigRow, UserRow
from resonera.server.security import issue_access_token

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
    api.sqlite_insert(conn, "checkin", CHECKIN_COLUMNS, _checkin_rows(patients))
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()


def load_postgres(url: str, patients: list[str]) -> None:
    import psycopg

    api.load_postgres(url, patients)
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn:
        with conn.cursor() as cur:
            api.postgres_copy(cur, "checkin", CHECKIN_COLUMNS, _checkin_rows(patients))
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


def measure(label: str, engine: Engine, clinician: UserRow, mine: list[str]) -> None:
    settings, app = api.bench_app(engine)
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
            median, p95 = api.timed(call, requests, warmup=5)
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
    api.on_each_database("outcomes", _people, load_sqlite, load_postgres, measure)


def _people(engine: Engine, patients: list[str]) -> tuple[UserRow, list[str]]:
    clinician, mine = api._people(engine, patients)
    _prescribe(engine, clinician, mine)
    return clinician, mine


if __name__ == "__main__":
    main()
