"""Dashboard page latency: p50/p95 of a clinician's patient page with 90 days of data (dose table
and chart data, session timeline, safety events, limits form), of the patients list, and of
``/healthz`` as the baseline of the same run (routing and the database round trip alone).

The world is the dashboard tests' own (``tests/dashboard/helpers.py``: sessions stored through
ingest, ``RESONERA_BENCH_DASHBOARD_PER_DAY`` a day, default 4), on a migrated SQLite file and on
PostgreSQL (started here, when installed). Requests go through the whole app in-process (cookie
session check, audit rows, decryption, Jinja2), so the figure is the server's own time without the
network. Target: patient page p95 ≤ 200 ms.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1] / "tests")]

from dashboard.helpers import PASSWORD, form_token, seed_world, table_cells  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from pydantic import SecretStr  # noqa: E402
from support import run_postgres  # noqa: E402

from resonera.server.app import create_app  # noqa: E402
from resonera.server.crypto import FieldCipher, HmacSigner, new_key_line, parse_keys  # noqa: E402
from resonera.server.db import make_engine, migrate  # noqa: E402
from resonera.server.desired import MemoryPublisher  # noqa: E402
from resonera.server.settings import ServerSettings  # noqa: E402

REQUESTS = int(os.environ.get("RESONERA_BENCH_DASHBOARD_N", "200"))
PER_DAY = int(os.environ.get("RESONERA_BENCH_DASHBOARD_PER_DAY", "4"))
TARGET_MS = 200.0


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


def measure(url: str, data_dir: Path) -> tuple[int, dict[str, list[float]]]:
    """Seed a migrated, empty database at ``url``; time the pages. (sessions on the page, samples)"""
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
            assert page.status_code == 200 and page.text.count('<tr data-day="') == 90
            sessions = len(table_cells(page.text, "sessions"))

            def patient_page() -> int:
                return int(client.get(page_url).status_code)

            def patients_list() -> int:
                return int(client.get("/patients").status_code)

            def health() -> int:
                return int(client.get("/healthz").status_code)

            for call in (patient_page, patients_list, health):  # warm caches and templates
                _timed(call, 5)
            return sessions, {
                "GET /healthz (baseline)": _timed(health, REQUESTS),
                "GET /patients (list)": _timed(patients_list, REQUESTS),
                "GET /patients/{id}?days=90": _timed(patient_page, REQUESTS),
            }
    finally:
        engine.dispose()


def report(backend: str, sessions: int, figures: dict[str, list[float]]) -> None:
    base = statistics.median(figures["GET /healthz (baseline)"])
    print(f"  {backend}: 90 days, {sessions} sessions on the patient page")
    for name, samples in figures.items():
        p50, p95 = statistics.median(samples), _p(samples, 95)
        print(
            f"    {name:28s} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  p50 = {p50 / base:5.1f}x baseline"
        )
    p95 = _p(figures["GET /patients/{id}?days=90"], 95)
    verdict = "meets" if p95 <= TARGET_MS else "MISSES"
    print(f"    patient page p95 {p95:.1f} ms {verdict} the {TARGET_MS:.0f} ms target")


def main() -> None:
    print(f"dashboard pages, {REQUESTS} requests each (in-process, whole app, cookie session):")
    with tempfile.TemporaryDirectory(prefix="resonera-bench-dashboard-") as folder:
        report("SQLite", *measure(f"sqlite:///{Path(folder) / 'server.db'}", Path(folder) / "data"))
        with ExitStack() as stack:
            try:
                postgres = stack.enter_context(run_postgres())
            except BaseException as exc:  # pytest's skip/fail outcomes when PostgreSQL is missing
                print(f"  PostgreSQL skipped: {exc}")
                return
            postgres.execute("CREATE DATABASE bench_dashboard")
            report("PostgreSQL", *measure(postgres.url("bench_dashboard"), Path(folder) / "data"))


if __name__ == "__main__":
    main()
