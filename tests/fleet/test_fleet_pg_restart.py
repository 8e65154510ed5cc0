"""Ingest on PostgreSQL with simulated devices (real store, outbox, sync code, mutual TLS).

PostgreSQL restarted under load: the devices keep producing while the ``resonera-server ingest``
consumer's database is stopped (fast shutdown) and started again. The consumer must ride it out
(retry, no crash, no ack for what it could not commit), and once the database is back every record
is stored exactly once and the outboxes drain.

Four consumers on the shared subscription, each committing in its own PostgreSQL transactions:
every record stored exactly once."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet import assert_exactly_once, connected_fleet
from support import Postgres, require_tool, run_postgres

from resonera.stack.fleet_sim import Fleet, LocalStack

pytestmark = pytest.mark.slow

DEVICES = int(os.environ.get("RESONERA_FLEET_PG_DEVICES", "100"))
OUTAGE_S = 6.0
DRAIN_S = 90.0


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
    with connected_fleet(stack, DEVICES) as fleet:
        yield fleet


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
        postgres.start()
    finally:
        stop.set()
        producer.join()

    assert fleet.drain(DRAIN_S), f"{fleet.pending} messages unacknowledged"
    assert consumer.poll() is None
    assert_exactly_once(stack, fleet)
    log = (stack.workdir / "ingest-1.log").read_text(errors="replace")
    assert "retrying" in log, "the consumer never saw the outage"
    assert "Traceback" not in log


def test_four_consumers_on_postgres_store_every_record_exactly_once(
    stack: LocalStack, fleet: Fleet
) -> None:
    for _ in range(3):
        stack.start_consumer()
    fleet.produce(3, events_every=3, metrics_every=3)
    assert fleet.drain(DRAIN_S), f"{fleet.pending} messages unacknowledged"
    assert stack.stored() == {
        "session_record": 3 * DEVICES,
        "safety_event": DEVICES,
        "device_message": DEVICES,
    }
    assert_exactly_once(stack, fleet)
    assert all(consumer.poll() is None for consumer in stack.consumers)
    for number in range(1, 5):
        log = (stack.workdir / f"ingest-{number}.log").read_text(errors="replace")
        assert "Traceback" not in log, log[-2000:]
