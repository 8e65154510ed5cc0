"""Dashboard page latency: p50/p95 of a clinician's patient page with 90 days of data (dose table
and chart data, session timeline, safety events, limits form), of the patient's outcomes page at
90 days (adherence, check-in trends, change per program, exposure: ``server/analytics.py``), of
the report to print at 90 days, of the cohort page, of the patients list, and of ``/healthz`` as
the baseline of the same run (routing and the database round trip alone).

The world is the dashboard tests' own (``tests/dashboard/helpers.py``: sessions stored through
ingest, ``RESONERA_BENCH_DASHBOARD_PER_DAY`` a day, default 4), on a migrated SQLite file and on
PostgreSQL (started here, when installed). Requests go through the whole app in-process (cookie
session check, audit rows, decryption, Jinja2), so the figure is the server's own time without the
network. Every session of the patient has a before and an after answer to both check-in
questions. Targets: patient page p95 ≤ 200 ms; outcomes page p95 ≤ 200 ms as a page (issue 12's
100 ms is the 90-day analytics alone, ``bench_server_api.py``'s figure).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1] / "tests")]

from dashboard.helpers import (  # noqa: E402
    PASSWORD,
    Seeded,
    form_token,
    seed_outcomes,
    seed_world,
    table_cells,
)
from factories import OUTCOME_QUESTIONS, checkin  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from pydantic import SecretStr  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402
from sqlmodel import Session, select  # noqa: E402
from support import bench_postgres  # noqa: E402

from resonera.server.app import create_app  # noqa: E402
from resonera.server.crypto import FieldCipher, HmacSigner, new_key_line, parse_keys  # noqa: E402
from resonera.server.db import make_engine, migrate  # noqa: E402
from resonera.server.desired import MemoryPublisher  # noqa: E402
from resonera.server.models import SessionRow  # noqa: E402
from resonera.server.outcomes import store_checkins  # noqa: E402
from resonera.server.settings import ServerSettings  # noqa: E402

REQUESTS = int(os.environ.get("RESONERA_BENCH_DASHBOARD_N", "200"))
PER_DAY = int(os.environ.get("RESONERA_BENCH_DASHBOARD_PER_DAY", "4"))
TARGET_MS = 200.0
OUTCOMES = "GET /patients/{id}/outcomes?days=90"


def seed_checkins(engine: Engine, seeded: Seeded) -> int:
    """The outcome plan (``seed_outcomes``: profile, questions, known trends), then a before and
    an after answer to each question around every other session of the patient. (answers)"""
    plan = seed_outcomes(engine, seeded, datetime.now(UTC).date())
    planned = {body["session_id"] for body in plan.bodies}
    with Session(engine) as session:
        rows = session.exec(
            select(SessionRow.session_id, SessionRow.started_at, SessionRow.ended_at).where(
                SessionRow.patient_id == seeded.patient
            )
        ).all()
    records = list(plan.records)
    for k, (session_id, started, ended) in enumerate(rows):
        if session_id in planned:
            continue
        for question in OUTCOME_QUESTIONS:
            better = question.get("better", "higher")
            before = 2 + k % 5
            after = before + 2 if better == "higher" else max(0, before - 1)
            records += [
                checkin(seeded.device, session_id, question["id"], "before", before, _utc(started)),
                checkin(seeded.device, session_id, question["id"], "after", after, _utc(ended)),
            ]
    with engine.begin() as conn:
        store_checkins(
            conn, seeded.device, seeded.patient, records[len(plan.records) :], now=datetime.now(UTC)
        )
    return len(records)


def _utc(value: datetime) -> datetime:
    """SQLite gives naive UTC back."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _timed(call: Callable[[], int], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        status = call()
        out.append((time.perf_counter() - start) * 1000)
        assert status == 200, status
    return out


def _p(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]


def measure(url: str, data_dir: Path) -> tuple[int, int, dict[str, list[float]]]:
    """Seed a migrated, empty database at ``url``; time the pages. (sessions on the page,
    check-in answers, samples)"""
    keys = new_key_line("b1")
    settings = ServerSettings(
        database_url=url,
        jwt_secret=SecretStr("bench-jwt-secret-0123456789-abcdefghijkl"),
        patient_keys=SecretStr(keys),
        data_dir=data_dir,
    )
    engine = make_engine(url)
    try:
        migrate(engine)
        cipher = FieldCipher(*parse_keys(keys, "bench"))
        seeded = seed_world(engine, cipher, days=90, sessions_per_day=PER_DAY)
        answers = seed_checkins(engine, seeded)
        app = create_app(
            settings, engine, cipher=cipher, publisher=MemoryPublisher(), signer=HmacSigner(b"b")
        )
        with TestClient(app, follow_redirects=False, headers={"Accept": "text/html"}) as client:
            token = form_token(client.get("/login").text)
            signed_in = client.post(
                "/login",
                data={"email": seeded.clinician, "password": PASSWORD, "csrf_token": token},
            )
            assert signed_in.status_code == 303, signed_in.text
            page_url = f"/patients/{seeded.patient}?days=90"
            page = client.get(page_url)
            assert page.status_code == 200 and page.text.count('<tr data-x="') == 90
            sessions = len(table_cells(page.text, "sessions"))

            def patient_page() -> int:
                return int(client.get(page_url).status_code)

            outcomes_url = f"/patients/{seeded.patient}/outcomes?days=90"
            outcomes = client.get(outcomes_url)
            assert outcomes.status_code == 200 and len(table_cells(outcomes.text, "exposure")) > 60

            def outcomes_page() -> int:
                return int(client.get(outcomes_url).status_code)

            report_url = f"/patients/{seeded.patient}/report?days=90"
            assert client.get(report_url).status_code == 200

            def report_page() -> int:
                return int(client.get(report_url).status_code)

            def cohort_page() -> int:
                return int(client.get("/cohort?days=90").status_code)

            def patients_list() -> int:
                return int(client.get("/patients").status_code)

            def health() -> int:
                return int(client.get("/healthz").status_code)

            calls = (patient_page, outcomes_page, report_page, cohort_page, patients_list, health)
            for call in calls:  # warm caches and templates
                _timed(call, 5)
            return (
                sessions,
                answers,
                {
                    "GET /healthz (baseline)": _timed(health, REQUESTS),
                    "GET /patients (list)": _timed(patients_list, REQUESTS),
                    "GET /patients/{id}?days=90": _timed(patient_page, REQUESTS),
                    OUTCOMES: _timed(outcomes_page, REQUESTS),
                    "GET /patients/{id}/report?days=90": _timed(report_page, REQUESTS),
                    "GET /cohort?days=90": _timed(cohort_page, REQUESTS),
                },
            )
    finally:
        engine.dispose()


def report(backend: str, sessions: int, answers: int, figures: dict[str, list[float]]) -> None:
    base = statistics.median(figures["GET /healthz (baseline)"])
    print(f"  {backend}: 90 days, {sessions} sessions on the patient page, {answers} check-ins")
    for name, samples in figures.items():
        p50, p95 = statistics.median(samples), _p(samples, 95)
        print(
            f"    {name:37s} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  p50 = {p50 / base:5.1f}x baseline"
        )
    p95 = _p(figures["GET /patients/{id}?days=90"], 95)
    verdict = "meets" if p95 <= TARGET_MS else "MISSES"
    print(f"    patient page p95 {p95:.1f} ms {verdict} the {TARGET_MS:.0f} ms target")
    p95 = _p(figures[OUTCOMES], 95)
    verdict = "meets" if p95 <= TARGET_MS else "MISSES"
    print(f"    outcomes page p95 {p95:.1f} ms {verdict} the {TARGET_MS:.0f} ms target")


def main() -> None:
    print(f"dashboard pages, {REQUESTS} requests each (in-process, whole app, cookie session):")
    with tempfile.TemporaryDirectory(prefix="resonera-bench-dashboard-") as folder:
        report("SQLite", *measure(f"sqlite:///{Path(folder) / 'server.db'}", Path(folder) / "data"))
        with ExitStack() as stack:
            url = bench_postgres(stack, "bench_dashboard")
            if url is not None:
                report("PostgreSQL", *measure(url, Path(folder) / "data"))


if __name__ == "__main__":
    main()
