"""Ingest through a real mosquitto, with application acks, into SQLite and into PostgreSQL, beside
the raw rate of the same broker and client library measured in the same run.

The publisher runs in a child process (as devices are other processes), the receiving side in this
one, so the two do not share one interpreter lock.

- raw: a paho publisher → mosquitto → a paho subscriber (QoS 1), counting arrivals;
- ingest: the same publisher, as many devices, → mosquitto → ``IngestConsumer`` (validate, store,
  one transaction per batch, application ack per device) → the acks back at the publisher; the
  clock stops when every message has been acknowledged, i.e. is committed.

Beside each rate, the CPU time the receiving process spent per message (all its threads): on a
shared machine the rates follow the load of other processes, the CPU cost per message much less.

``RESONERA_BENCH_INGEST_N`` sets the number of messages (default 20,000). PostgreSQL is measured
when it is installed (the same throwaway server the tests use).
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from factories import make_record
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.engine import Engine
from sqlmodel import Session
from support import bench_postgres, run_mosquitto

from resonera.common import topics
from resonera.common.envelope import Envelope, decode_ack
from resonera.common.settings import MqttSettings
from resonera.server.db import make_engine, migrate
from resonera.server.ingest_mqtt import IngestConsumer
from resonera.server.models import DeviceRow
from resonera.server.settings import ServerSettings

N = int(os.environ.get("RESONERA_BENCH_INGEST_N", "20000"))
DEVICES = 50
TIMEOUT_S = 300.0


def _client(port: int, name: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def _payloads() -> list[tuple[str, bytes]]:
    out = []
    for i in range(N):
        device = f"bench-{i % DEVICES}"
        body = make_record().model_dump(mode="json")
        envelope = Envelope.create(device=device, seq=i // DEVICES, kind="session", body=body)
        out.append((topics.up(device, "session"), envelope.to_bytes()))
    return out


def _publish(port: int, messages: list[tuple[str, bytes]], prefix: str) -> None:
    client = _client(port, f"bench-pub-{os.getpid()}")
    info = None
    for topic, payload in messages:
        info = client.publish(prefix + topic, payload, qos=1)
    if info is not None:
        info.wait_for_publish(timeout=TIMEOUT_S)
    client.disconnect()
    client.loop_stop()


def _publisher(port: int, messages: list[tuple[str, bytes]], prefix: str = "") -> Any:
    process = multiprocessing.get_context("spawn").Process(
        target=_publish, args=(port, messages, prefix), daemon=True
    )
    process.start()
    return process


def _wait(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not finish within {TIMEOUT_S:.0f} s")
        time.sleep(0.005)


@dataclass(frozen=True)
class Rate:
    per_s: float
    #: CPU time of this (the receiving) process per message, in microseconds.
    cpu_us: float

    def show(self, raw: Rate | None = None) -> str:
        text = f"{self.per_s:9.0f} msg/s  CPU {self.cpu_us:4.0f} µs/msg"
        if raw is not None:
            text += (
                f"  ({self.per_s / raw.per_s:.0%} of raw rate, {self.cpu_us / raw.cpu_us:.1f}x CPU)"
            )
        return text


def _measured(count: int, run: Callable[[], None]) -> Rate:
    cpu, start = time.process_time(), time.perf_counter()
    run()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Rate(count / elapsed, cpu / count * 1e6)


def raw_rate(port: int, messages: list[tuple[str, bytes]]) -> Rate:
    received = [0]
    subscribed = threading.Event()
    subscriber = _client(port, "bench-raw-sub")

    def on_message(*_args: Any) -> None:
        received[0] += 1

    subscriber.on_message = on_message
    subscriber.on_subscribe = lambda *_args: subscribed.set()
    subscriber.subscribe("bench-raw/#", qos=1)
    subscribed.wait(10)

    def run() -> None:
        publisher = _publisher(port, messages, "bench-raw/")
        _wait(lambda: received[0] >= len(messages), "raw delivery")
        publisher.join()

    rate = _measured(len(messages), run)
    subscriber.disconnect()
    subscriber.loop_stop()
    return rate


def ingest_rate(port: int, engine: Engine, messages: list[tuple[str, bytes]]) -> Rate:
    with Session(engine) as session:
        for i in range(DEVICES):
            session.add(DeviceRow(id=f"bench-{i}", created_at=datetime.now(UTC)))
        session.commit()
    settings = ServerSettings(mqtt=MqttSettings(port=port))
    consumer = IngestConsumer(settings, engine)
    consumer.start()
    acked: set[str] = set()
    lock = threading.Lock()
    subscribed = threading.Event()
    device_side = _client(port, f"bench-devices-{time.monotonic_ns()}")

    def on_ack(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        ids = decode_ack(bytes(msg.payload)).ids
        with lock:
            acked.update(ids)

    device_side.on_message = on_ack
    device_side.on_subscribe = lambda *_args: subscribed.set()
    device_side.subscribe(f"{topics.PREFIX}/+/ack", qos=1)
    subscribed.wait(10)

    def run() -> None:
        publisher = _publisher(port, messages)
        _wait(lambda: len(acked) >= len(messages), "ingest with acks")
        publisher.join()

    rate = _measured(len(messages), run)
    stored = consumer.counters["stored"]
    consumer.stop()
    device_side.disconnect()
    device_side.loop_stop()
    if stored != len(messages):
        raise RuntimeError(f"stored {stored} of {len(messages)} messages")
    return rate


def main() -> None:
    messages = _payloads()
    size = sum(len(p) for _t, p in messages) / len(messages)
    print(f"server ingest through mosquitto: {N} session envelopes (~{size:.0f} bytes), QoS 1,")
    print(f"  {DEVICES} devices, stored and acknowledged (RESONERA_BENCH_INGEST_N to change)")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        broker = stack.enter_context(run_mosquitto(Path(tmp) / "broker"))
        raw = raw_rate(broker.port, messages)
        print(f"  raw paho → mosquitto → paho   {raw.show()} (baseline, same run)")
        sqlite = make_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        migrate(sqlite)
        rate = ingest_rate(broker.port, sqlite, messages)
        sqlite.dispose()
        print(f"  ingest → SQLite, acked        {rate.show(raw)}")
        url = bench_postgres(stack, "bench", "  ingest → PostgreSQL          ")
        if url is None:
            return
        pg = make_engine(url)
        migrate(pg)
        rate = ingest_rate(broker.port, pg, messages)
        pg.dispose()
        print(f"  ingest → PostgreSQL, acked    {rate.show(raw)}")


if __name__ == "__main__":
    main()
