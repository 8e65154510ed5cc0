"""A fleet of simulated devices (``resonera.stack.fleet_sim``: the real device store, outbox and
sync code, one certificate and one mutual-TLS connection each) against mosquitto and
``resonera-server ingest`` processes on SQLite, beside the raw broker rate and the server's own
ingest rate measured in the same run (``bench_server_ingest``: the same publisher processes, plain MQTT).

Printed: devices held; backlog drain rate (records queued while offline, then every device
connects: stored and acknowledged per second) and its ack latencies; ack latency under a steady
load; time back to full rate after a broker restart and after the ingest consumer is killed and
restarted; drain rate with 1, 2 and 4 consumers on the shared subscription; a slow consumer (its
database write-locked by another connection most of the time while the devices keep producing):
peak broker memory and held messages, peak outbox depth, time to drain once it is fast again.
Then the same fleet, broker and consumers on a throwaway PostgreSQL (fsync off, as the tests run
it): time back to full rate after a PostgreSQL restart, drain rate with 1, 2 and 4 consumers.

All of it shares one 2-core machine: the devices' own work (SQLite store per record, ECDSA
signature, AES-GCM sealing, one store write per ack) runs in this one Python process, so the fleet
figures are bounded by the simulator, not only by the server; the server-only rate shows the
other side. ``RESONERA_BENCH_FLEET_DEVICES`` (default 1000) and ``RESONERA_BENCH_FLEET_SESSIONS``
(default 20) set the size.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from bench_server_ingest import PUBLISHERS, _payloads, ingest_rate, raw_rate
from support import Postgres, bench_postgres_server, run_mosquitto

from resonera.stack.fleet_sim import (
    Fleet,
    LocalStack,
    build_fleet,
    local_stack,
    run_slow_consumer,
)

DEVICES = int(os.environ.get("RESONERA_BENCH_FLEET_DEVICES", "1000"))
SESSIONS = int(os.environ.get("RESONERA_BENCH_FLEET_SESSIONS", "20"))
TIMEOUT_S = 900.0
#: "Back to full rate": the first second after the fault that acknowledges this much of the
#: rate seen before it.
FULL_RATE = 0.8
#: The slow consumer: for this long its database is write-locked by another connection
#: ``HOLD_S`` of every ``HOLD_S + GAP_S`` while the devices produce back to back.
SLOW_S = 20.0
HOLD_S = 4.0
GAP_S = 0.05


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _latencies(fleet: Fleet) -> str:
    stats = fleet.stats
    return (
        f"p50 {_ms(stats.percentile(50))}  p95 {_ms(stats.percentile(95))}  "
        f"p99 {_ms(stats.percentile(99))}"
    )


def _backlog_drain(fleet: Fleet, sessions: int) -> tuple[int, float]:
    """Queue ``sessions`` per device while offline, connect all, time until all are acked."""
    fleet.disconnect_all()
    before = sum(len(d.produced) for d in fleet.devices)
    fleet.produce(sessions)
    count = sum(len(d.produced) for d in fleet.devices) - before
    fleet.stats.reset()
    for device in fleet.devices:
        device.restart_latency_clock()  # latency from the moment the backlog may go
    start = time.perf_counter()
    fleet.connect_all()
    if not fleet.drain(TIMEOUT_S):
        raise RuntimeError(f"{fleet.pending} messages unacknowledged after {TIMEOUT_S:.0f} s")
    return count, time.perf_counter() - start


def _recovery(fleet: Fleet, fault: Callable[[], None]) -> tuple[float, float]:
    """Under continuous production: (ack rate before, seconds after ``fault`` until a 1-s window
    acknowledges ``FULL_RATE`` of it)."""
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            fleet.produce(1)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        time.sleep(3.0)  # reach a steady state
        first = fleet.stats.acked_count
        time.sleep(5.0)
        before = (fleet.stats.acked_count - first) / 5.0
        start = time.perf_counter()
        fault()
        samples: list[tuple[float, int]] = [(time.perf_counter(), fleet.stats.acked_count)]
        while time.perf_counter() - start < TIMEOUT_S:
            time.sleep(0.25)
            now = (time.perf_counter(), fleet.stats.acked_count)
            samples.append(now)
            window = [s for s in samples if s[0] >= now[0] - 1.0]
            if len(window) >= 4 and (now[1] - window[0][1]) / (now[0] - window[0][0]) >= (
                FULL_RATE * before
            ):
                return before, now[0] - start
        return before, float("inf")
    finally:
        stop.set()
        producer.join()
        fleet.drain(TIMEOUT_S)


def _restart_consumers(stack: LocalStack) -> None:
    count = len(stack.consumers)
    stack.kill_consumers()
    for _ in range(count):
        stack.start_consumer()


def _use_consumers(stack: LocalStack, count: int) -> None:
    stack.stop_consumers()
    for _ in range(count):
        stack.start_consumer()


def _scaling(stack: LocalStack, fleet: Fleet, engine: str) -> None:
    """Backlog drain rate with 1, 2 and 4 consumers on the shared subscription."""
    rates: list[float] = []
    for consumers in (1, 2, 4):
        _use_consumers(stack, consumers)
        count, seconds = _backlog_drain(fleet, max(1, SESSIONS // 4))
        rates.append(count / seconds)
        print(
            f"  {consumers} consumer(s) → {engine:<10} drain {count / seconds:8.0f} msg/s "
            f"({count / seconds / rates[0]:.2f}x of 1; {count} messages)"
        )


def _exactly_once(stack: LocalStack, fleet: Fleet, engine: str, before: set[str]) -> None:
    """What the fleet produced since ``before`` against what ``stack``'s database holds."""
    ids = stack.stored_ids()
    produced = {m for d in fleet.devices for m in d.produced} - before
    stored = {m for _, m in ids}
    print(
        f"  exactly once ({engine}): {len(produced)} produced, {len(stored & produced)} stored, "
        f"{len(ids) - len(set(ids))} duplicates, {fleet.pending} unacknowledged"
    )


def _slow_consumer(stack: LocalStack, fleet: Fleet) -> None:
    _use_consumers(stack, 1)
    result = run_slow_consumer(
        stack, fleet, slow_s=SLOW_S, hold_s=HOLD_S, gap_s=GAP_S, sample_s=1.0, metrics_every=10
    )
    mib = 1024 * 1024
    print(
        f"  slow consumer ({result.slow_s:.0f} s; database write-locked {HOLD_S:g} s of every "
        f"{HOLD_S + GAP_S:g} s): produced {result.produced_rate:.0f} msg/s, stored "
        f"{result.acked_rate:.0f} msg/s"
    )
    print(
        f"    broker RSS {result.broker_rss_before / mib:.1f} → peak "
        f"{result.peak_broker_rss / mib:.1f} MiB; held at most {result.peak_broker_held} "
        f"messages; dropped {result.broker_dropped}"
    )
    print(
        f"    outboxes: peak {result.peak_pending} unacknowledged in all, largest "
        f"{result.peak_outbox} ({result.peak_outbox_bytes / 1024:.0f} KiB); "
        f"{result.thinned} metrics thinned"
    )
    print(
        f"    drain after the slowdown ends   {result.drain_s:8.1f} s"
        + ("" if result.drained else " (NOT drained)")
    )


def _postgres(stack: LocalStack, fleet: Fleet, postgres: Postgres) -> None:
    """The same fleet, broker and consumers on PostgreSQL: a restart, then 1, 2, 4 consumers."""
    postgres.execute("CREATE DATABASE fleet_bench")
    before = {m for d in fleet.devices for m in d.produced}
    stack.use_database(postgres.url("fleet_bench"), [d.identity for d in fleet.devices])
    stack.start_consumer()
    rate, back = _recovery(fleet, postgres.restart)
    print(
        f"  PostgreSQL restart: back to full rate {back:5.1f} s (≥{FULL_RATE:.0%} of {rate:.0f} "
        "msg/s)"
    )
    _scaling(stack, fleet, "PostgreSQL")
    _exactly_once(stack, fleet, "PostgreSQL", before)
    stack.stop_consumers()


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    print(f"fleet: {DEVICES} simulated devices, {SESSIONS} sessions each (+ safety events and")
    print("  metrics), real device store/outbox/sync, mutual TLS, SQLite with acks")
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        base = Path(tmp)
        messages = _payloads()
        with run_mosquitto(base / "plain") as broker:
            raw = raw_rate(broker.port, messages)
            server = ingest_rate(broker.port, f"sqlite:///{base / 'server-only.db'}", messages)
        print(f"  raw paho → mosquitto → paho       {raw.per_s:8.0f} msg/s (baseline, same run)")
        print(
            f"  server ingest alone → SQLite      {server.per_s:8.0f} msg/s "
            f"({server.per_s / raw.per_s:.0%} of raw; {PUBLISHERS} publisher processes, 50 devices)"
        )
        with local_stack(base / "fleet", consumers=1) as stack:
            fleet = build_fleet(stack, DEVICES)
            try:
                start = time.perf_counter()
                held = fleet.connect_all()
                print(
                    f"  devices held                      {held:8d} (connected in "
                    f"{time.perf_counter() - start:.1f} s)"
                )
                count, seconds = _backlog_drain(fleet, SESSIONS)
                print(
                    f"  fleet backlog drain → SQLite      {count / seconds:8.0f} msg/s "
                    f"({count} messages in {seconds:.1f} s; {count / seconds / raw.per_s:.0%} "
                    "of raw)"
                )
                print(f"    ack latency (backlog, from connect) {_latencies(fleet)}")
                fleet.stats.reset()
                fleet.produce(2, interval_s=2.0)
                fleet.drain(TIMEOUT_S)
                print(f"    ack latency (steady, light)     {_latencies(fleet)}")
                before, back = _recovery(fleet, stack.restart_broker)
                print(
                    f"  broker restart: back to full rate {back:8.1f} s "
                    f"(≥{FULL_RATE:.0%} of {before:.0f} msg/s)"
                )
                before, back = _recovery(fleet, lambda: _restart_consumers(stack))
                print(
                    f"  consumer killed + restarted:      {back:8.1f} s "
                    f"(≥{FULL_RATE:.0%} of {before:.0f} msg/s)"
                )
                _scaling(stack, fleet, "SQLite")
                _slow_consumer(stack, fleet)
                _exactly_once(stack, fleet, "SQLite", set())
                with ExitStack() as exits:
                    postgres = bench_postgres_server(exits, "  PostgreSQL")
                    if postgres is not None:
                        _postgres(stack, fleet, postgres)
            finally:
                fleet.close()


if __name__ == "__main__":
    main()
