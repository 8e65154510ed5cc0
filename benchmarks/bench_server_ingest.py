"""Ingest through a real mosquitto, with application acks, into SQLite and into PostgreSQL, beside
the raw rate of the same broker and client library measured in the same run.

Publishers run in child processes (as devices are other processes; ``PUBLISHERS`` of them, because
one Python publisher alone is slower than the broker), the receiving side in this one, so they do
not share one interpreter lock. Each publisher connects (and subscribes to its devices' acks)
before the clock starts: start-up is in neither rate.

- raw: paho publishers → mosquitto → a paho subscriber (QoS 1), counting arrivals;
- ingest: the same publishers, as 50 devices, → mosquitto → ``IngestConsumer`` (validate, store,
  one transaction per batch, application ack per device) → the acks back at the publishers; the
  clock stops when every message has been acknowledged, i.e. is committed. Then again with
  ``CONSUMERS`` ingest processes sharing the subscription, as ``resonera-server ingest`` scales.

Beside each rate, the CPU time the receiving side spent per message (all its threads and
processes) and that of the publishers: on a shared machine the rates follow the load of other
processes, the CPU cost per message much less.

``RESONERA_BENCH_INGEST_N`` sets the number of messages (default 20,000),
``RESONERA_BENCH_INGEST_PUBLISHERS`` and ``..._CONSUMERS`` the processes. PostgreSQL is measured
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
from sqlalchemy import text
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
#: Publisher processes, for the raw rate and for ingest alike (one Python publisher may not
#: keep up with the broker).
PUBLISHERS = int(os.environ.get("RESONERA_BENCH_INGEST_PUBLISHERS", "2"))
#: Ingest processes sharing the subscription, measured besides one (1: not measured).
CONSUMERS = int(os.environ.get("RESONERA_BENCH_INGEST_CONSUMERS", "2"))
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


def _wait(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not finish within {TIMEOUT_S:.0f} s")
        time.sleep(0.005)


@dataclass(frozen=True)
class _Start:
    """What a publisher process shares with this one."""

    ready: Any
    go: Any
    #: Set when every message is published (raw) or acknowledged by ingest (acks).
    done: Any
    cpu_s: Any


def _publish(
    port: int, messages: list[tuple[str, bytes]], prefix: str, acks: bool, start: _Start
) -> None:
    """Publish ``messages``; with ``acks``, as the devices do, wait for the application acks."""
    subscribed = threading.Event()
    acked: set[str] = set()
    lock = threading.Lock()

    def on_ack(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        ids = decode_ack(bytes(msg.payload)).ids
        with lock:
            acked.update(ids)
            if len(acked) >= len(messages):
                start.done.set()

    client = _client(port, f"bench-pub-{os.getpid()}")
    client.on_subscribe = lambda *_args: subscribed.set()
    client.on_message = on_ack
    _wait(client.is_connected, "a publisher's connection")
    if acks:
        devices = sorted({topics.parse_up(topic)[0] for topic, _payload in messages})
        client.subscribe([(topics.ack(device), 1) for device in devices])
        if not subscribed.wait(TIMEOUT_S):
            raise TimeoutError("a publisher's ack subscription was not granted")
    # Start-up (spawn, imports, connect, subscribe) is in neither rate: the clock starts at "go".
    start.ready.set()
    start.go.wait()
    cpu = time.process_time()
    info = None
    for topic, payload in messages:
        info = client.publish(prefix + topic, payload, qos=1)
    if info is not None:
        info.wait_for_publish(timeout=TIMEOUT_S)
    if acks:
        start.done.wait(TIMEOUT_S)
    else:
        start.done.set()
    start.cpu_s.value = time.process_time() - cpu
    client.disconnect()
    client.loop_stop()


@dataclass(frozen=True)
class Rate:
    per_s: float
    #: CPU time of this (the receiving) process per message, in microseconds.
    cpu_us: float
    #: CPU time of the publisher processes per message (all of them), in microseconds.
    publisher_cpu_us: float

    def show(self, raw: Rate | None = None) -> str:
        text = (
            f"{self.per_s:6.0f} msg/s  CPU {self.cpu_us:4.0f} µs/msg"
            f" (publishers {self.publisher_cpu_us:3.0f})"
        )
        if raw is not None:
            text += (
                f"  {self.per_s / raw.per_s:.0%} of raw rate, {self.cpu_us / raw.cpu_us:.1f}x CPU"
            )
        return text


def _measured(
    port: int, messages: list[tuple[str, bytes]], done: Callable[[], bool], *, acks: bool
) -> Rate:
    """Start ``PUBLISHERS`` processes on their shares of ``messages``; once all are connected,
    time from "go" until every publisher is done and ``done()``."""
    context = multiprocessing.get_context("spawn")
    starts = [
        _Start(context.Event(), context.Event(), context.Event(), context.Value("d", 0.0))
        for _ in range(PUBLISHERS)
    ]
    prefix = "" if acks else "bench-raw/"
    processes = [
        context.Process(
            target=_publish, args=(port, messages[n::PUBLISHERS], prefix, acks, s), daemon=True
        )
        for n, s in enumerate(starts)
    ]
    for process in processes:
        process.start()
    for start, process in zip(starts, processes, strict=True):
        while not start.ready.wait(0.1):
            if not process.is_alive():
                raise RuntimeError(f"a publisher process failed (exit code {process.exitcode})")
    cpu, begin = time.process_time(), time.perf_counter()
    for start in starts:
        start.go.set()
    _wait(lambda: all(s.done.is_set() for s in starts) and done(), "the run")
    elapsed, cpu = time.perf_counter() - begin, time.process_time() - cpu
    for process in processes:
        process.join(TIMEOUT_S)
    publisher_cpu = sum(s.cpu_s.value for s in starts)
    count = len(messages)
    return Rate(count / elapsed, cpu / count * 1e6, publisher_cpu / count * 1e6)


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
    rate = _measured(port, messages, lambda: received[0] >= len(messages), acks=False)
    subscriber.disconnect()
    subscriber.loop_stop()
    return rate


def _consume(  # noqa: PLR0917 (a process target: positional arguments only)
    url: str, port: int, ready: Any, stop: Any, stored: Any, cpu_s: Any
) -> None:
    """One more ingest process (``resonera-server ingest``): its share of the messages."""
    engine = make_engine(url)
    consumer = IngestConsumer(ServerSettings(mqtt=MqttSettings(port=port)), engine)
    consumer.start()
    cpu = time.process_time()
    ready.set()
    stop.wait()
    consumer.stop()
    stored.value = consumer.counters["stored"]
    cpu_s.value = time.process_time() - cpu
    engine.dispose()


def ingest_rate(port: int, url: str, messages: list[tuple[str, bytes]], consumers: int = 1) -> Rate:
    """Through one consumer in this process, or ``consumers`` processes sharing the subscription
    (their CPU time is the receiving side's)."""
    engine = make_engine(url)
    migrate(engine)
    with Session(engine) as session:
        for i in range(DEVICES):
            session.add(DeviceRow(id=f"bench-{i}", created_at=datetime.now(UTC)))
        session.commit()
    if consumers == 1:
        consumer = IngestConsumer(ServerSettings(mqtt=MqttSettings(port=port)), engine)
        consumer.start()
        rate = _measured(port, messages, lambda: True, acks=True)
        consumer.stop()
        stored, cpu_s = consumer.counters["stored"], 0.0
    else:
        context = multiprocessing.get_context("spawn")
        stop = context.Event()
        shared = [
            (context.Event(), context.Value("i", 0), context.Value("d", 0.0))
            for _ in range(consumers)
        ]
        processes = [
            context.Process(target=_consume, args=(url, port, ready, stop, n, cpu), daemon=True)
            for ready, n, cpu in shared
        ]
        for process in processes:
            process.start()
        for (ready, _n, _cpu), process in zip(shared, processes, strict=True):
            while not ready.wait(0.1):
                if not process.is_alive():
                    raise RuntimeError(f"a consumer process failed (exit code {process.exitcode})")
        rate = _measured(port, messages, lambda: True, acks=True)
        stop.set()
        for process in processes:
            process.join(TIMEOUT_S)
        stored = sum(n.value for _ready, n, _cpu in shared)
        cpu_s = sum(cpu.value for _ready, _n, cpu in shared)
    engine.dispose()
    if stored != len(messages):
        raise RuntimeError(f"stored {stored} of {len(messages)} messages")
    count = len(messages)
    return Rate(rate.per_s, rate.cpu_us + cpu_s / count * 1e6, rate.publisher_cpu_us)


def _another_database(url: str, name: str) -> str:
    """A new, empty database ``name`` on the PostgreSQL server of ``url``."""
    engine = make_engine(url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{url.rsplit('/', 1)[0]}/{name}"


def main() -> None:
    messages = _payloads()
    size = sum(len(p) for _t, p in messages) / len(messages)
    print(f"server ingest through mosquitto: {N} session envelopes (~{size:.0f} bytes), QoS 1,")
    print(f"  {DEVICES} devices, {PUBLISHERS} publisher processes, stored and acknowledged")
    print("  (RESONERA_BENCH_INGEST_N, _PUBLISHERS, _CONSUMERS to change); CPU: receiving side")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        broker = stack.enter_context(run_mosquitto(Path(tmp) / "broker"))
        first = raw_rate(broker.port, messages)
        targets = [("SQLite", f"sqlite:///{Path(tmp) / 'bench-1.db'}")]
        url = bench_postgres(stack, "bench", "  ingest → PostgreSQL          ")
        if url is not None:
            targets.append(("PostgreSQL", url))
        rates: list[tuple[str, Rate]] = []
        for name, target in targets:
            rates.append((f"{name}, acked", ingest_rate(broker.port, target, messages)))
            if CONSUMERS > 1:
                if name == "SQLite":
                    fresh = f"sqlite:///{Path(tmp) / 'bench-n.db'}"
                else:
                    fresh = _another_database(target, "bench_n")
                rate = ingest_rate(broker.port, fresh, messages, CONSUMERS)
                rates.append((f"{name}, {CONSUMERS} proc.", rate))
        # The raw rate before and after: on a shared machine one of them may catch a busy moment;
        # the better one is the baseline (the stricter comparison).
        last = raw_rate(broker.port, messages)
        raw = max(first, last, key=lambda rate: rate.per_s)
        print(f"  raw paho → mosquitto → paho  {raw.show()} (baseline, same run:")
        print(
            f"    the better of {first.per_s:.0f} before and {last.per_s:.0f} msg/s after ingest)"
        )
        for label, rate in rates:
            print(f"  ingest → {label:19s}{rate.show(raw)}")
            if label == "SQLite, acked":
                # What the CPU cost alone allows: the consumer's threads share one interpreter
                # lock, so one process is bound by about one core.
                print(f"    one consumer process, CPU-bound: ≤ {1e6 / rate.cpu_us:.0f} msg/s")


if __name__ == "__main__":
    main()
