"""Program previews (issue 8): a 60-second preview of a 1-hour program, cold (rendered by the device
engine through the safety chain into the cache) against cached (the file is there), in the same run,
through ``server.programs.render_preview`` on a migrated SQLite database. Also four clinicians asking
for the same cold preview at once: they should wait for one render, not make four.

Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from bench_render import PROGRAM_A
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session

from resonera.server import programs
from resonera.server.db import make_engine, migrate
from resonera.server.models import UserRow
from resonera.server.settings import ServerSettings

COLD_RUNS = 3
CACHED_RUNS = 200
CONCURRENT = 4


def _hour_program(seed: int) -> str:
    """An hour of ``bench_render``'s program A; the seed makes each cold run a new cache entry."""
    return PROGRAM_A.format(seconds=3600).replace(
        'name = "reference-a"', f'name = "reference-a hour {seed}"\nseed = {seed}'
    )


def _program(engine: Engine, user_id: int, seed: int) -> str:
    with Session(engine) as session:
        row = programs.create_program(
            session, actor_user_id=user_id, document=_hour_program(seed), fmt="toml"
        )
        return row.id


def _preview_s(engine: Engine, settings: ServerSettings, program_id: str) -> float:
    with Session(engine) as session:
        start = time.perf_counter()
        programs.render_preview(settings, session, program_id)
        return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        engine = make_engine(f"sqlite:///{root / 'server.db'}")
        migrate(engine)
        settings = ServerSettings(
            database_url=f"sqlite:///{root / 'server.db'}",
            data_dir=root / "data",
            jwt_secret=SecretStr("x" * 40),
        )
        with Session(engine) as session:
            user = UserRow(
                email="bench@example.org",
                password_hash="-",
                role="clinician",
                created_at=datetime.now(UTC),
            )
            session.add(user)
            session.commit()
            assert user.id is not None
            user_id = user.id
        ids = [_program(engine, user_id, seed) for seed in range(COLD_RUNS + 1)]
        cold = [_preview_s(engine, settings, program_id) for program_id in ids[:COLD_RUNS]]
        cached = [_preview_s(engine, settings, ids[0]) for _ in range(CACHED_RUNS)]

        together: list[float] = []
        barrier = threading.Barrier(CONCURRENT)

        def ask() -> None:
            barrier.wait()
            together.append(_preview_s(engine, settings, ids[COLD_RUNS]))

        threads = [threading.Thread(target=ask) for _ in range(CONCURRENT)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        engine.dispose()

    cold_s, cached_s = statistics.median(cold), statistics.median(cached)
    limit = settings.preview_max_s
    print(f"preview of a 1-hour program, first {limit:.0f} s (44.1 kHz, 16-bit, safety chain)")
    print(
        f"  cold (render + cache write): median {cold_s * 1000:8.1f} ms of {COLD_RUNS} "
        f"({limit / cold_s:.0f}x real time)"
    )
    print(f"  cached (file already there): median {cached_s * 1000:8.3f} ms of {CACHED_RUNS}")
    print(f"  cold / cached: {cold_s / cached_s:.0f}x")
    print(
        f"  {CONCURRENT} asking at once (cold): slowest {max(together) * 1000:.1f} ms "
        f"({max(together) / cold_s:.2f}x one cold render: they share one render)"
    )


if __name__ == "__main__":
    main()
