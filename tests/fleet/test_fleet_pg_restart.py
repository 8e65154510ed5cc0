"""PostgreSQL restarted under load: simulated devices (real store, outbox, sync code, mutual TLS)
keep producing while the ``resonera-server ingest`` consumer's database is stopped (fast shutdown)
and started again. The consumer must ride it out (retry, no crash, no ack for what it could not
commit), and once the database is back every record is stored exactly once and the outboxes drain."""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Postgres, require_tool, run_postgres

from resonera.stack.fleet_sim import Fleet, LocalStack, build_fleet

pytestmark = pytest.mark.slow

DEVICES = int(os.environ.get("RESONERA_FLEET_PG_DEVICES", "100"))
OUTAGE_S = 6.0
DRAIN_S = 90.0


def start_again(postgres: Postgres) -> None:
    """Start a stopped server with the options it last ran with (``postmaster.opts``, which is
    what ``pg_ctl restart`` reuses), so it comes back on the same port and data."""
    words = shlex.split((postgres.datadir / "postmaster.opts").read_text())
    options = [w for i, w in enumerate(words[1:], 1) if "-D" not in (w, words[i - 1])]
    log_file = postgres.datadir.parent / "postgres.log"
    subprocess.run(
        [
            *postgres.as_postgres,
            postgres.pg_ctl,
            "start",
            "-D",
            str(postgres.datadir),
            "-w",
            "-t",
            "60",
            "-o",
            shlex.join(options),
            "-l",
            str(log_file),
        ],
        check=True,
        capture_output=True,
        timeout=90,
    )


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    with run_postgres() as server:
        server.execute("CREATE DATABASE fleet")
        yield server


@pytest.fixture
def stack(tmp_path: Path, postgres: Postgres) -> Iterator[LocalStack]:
    require_tool("mosquitto")
    running = LocalStack(tmp_path / "fleet", database_url=postgres.url("fleet"))
    try:
        running.start_broker()
        running.start_consumer()
        yield running
    finally:
        running.close()


@pytest.fixture
def fleet(stack: LocalStack) -> Iterator[Fleet]:
    fleet = build_fleet(stack, DEVICES)
    try:
        assert fleet.connect_all() == DEVICES
        yield fleet
    finally:
        fleet.close()


def test_postgres_restart_under_load_loses_and_duplicates_nothing(
    postgres: Postgres, stack: LocalStack, fleet: Fleet
) -> None:
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            fleet.produce(1, interval_s=0.5)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        assert fleet.wait(lambda: fleet.stats.acked_count >= DEVICES, 60.0), "no load reached"
        postgres.stop()  # fast shutdown: every connection of the consumer is cut
        time.sleep(1.0)  # acks for batches committed just before the stop may still arrive
        acked_at_outage = fleet.stats.acked_count
        pending_at_outage = fleet.pending
        time.sleep(OUTAGE_S)
        # Nothing can be committed now, so nothing may be acknowledged: the records stay in
        # the outboxes (and more keep arriving there).
        assert fleet.stats.acked_count == acked_at_outage
        assert fleet.pending > pending_at_outage
        consumer = stack.consumers[0]
        assert consumer.poll() is None, "the ingest consumer died with the database"
        start_again(postgres)
    finally:
        stop.set()
        producer.join()

    assert fleet.drain(DRAIN_S), f"{fleet.pending} messages unacknowledged"
    assert consumer.poll() is None
    produced = {(d, m) for d, ids in fleet.produced().items() for m in ids}
    stored = stack.stored_ids()
    assert len(stored) == len(set(stored)), "a record was stored twice"
    missing = produced - set(stored)
    assert not missing, f"{len(missing)} records lost, e.g. {sorted(missing)[:3]}"
    assert set(stored) == produced
    assert fleet.outbox_depths() == (0, 0)
    log = (stack.workdir / "ingest-1.log").read_text(errors="replace")
    assert "retrying" in log, "the consumer never saw the outage"
    assert "Traceback" not in log
