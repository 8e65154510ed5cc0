"""A slow consumer: another writer holds the server database's lock (``SlowDatabase``) while the
fleet keeps producing; the broker's own counters (``BrokerMonitor``) and the outboxes are sampled
(``run_slow_consumer``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy import text
from sqlalchemy.engine import make_url

from resonera.common.errors import ResoneraError
from resonera.common.ids import new_id
from resonera.common.mqtt_client import build_client, connect
from resonera.server.db import make_engine
from resonera.server.models import MessageRow, SafetyEventRow, SessionRow, table_of
from resonera.stack.fleet_devices import Fleet
from resonera.stack.fleet_loop import MqttLoop
from resonera.stack.fleet_target import MONITOR_IDENTITY, LocalStack

log = logging.getLogger(__name__)


class BrokerMonitor:
    """The broker's own counters from ``$SYS`` (the local stack's mosquitto publishes them every
    second, readable by ``MONITOR_IDENTITY`` only): the messages it holds (queued for consumers,
    in flight, retained) and the publishes it dropped. Driven by an ``MqttLoop`` of its own: in a
    process holding a fleet's sockets, paho's own ``select()`` loop could not watch its socket,
    and a fleet's busy loop must not delay the figures."""

    TOPICS: Final = {
        "$SYS/broker/store/messages/count": "held",
        "$SYS/broker/store/messages/bytes": "held_bytes",
        "$SYS/broker/publish/messages/dropped": "dropped",
    }

    def __init__(self, stack: LocalStack) -> None:
        self.latest: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        #: What the broker answered to our CONNECT (None: no answer yet).
        self.connack: str | None = None
        self._lock = threading.Lock()
        settings = stack.mqtt(stack.monitor_key, stack.monitor_cert)
        self._client = build_client(settings, f"{MONITOR_IDENTITY}-{os.getpid()}-{new_id()[-8:]}")
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._loop = MqttLoop()
        self._loop.attach(self._client)
        self._loop.start()
        try:
            connect(self._client, settings, clean_start=True, session_expiry_s=0)
        except BaseException:
            self._loop.stop()
            raise

    def _on_connect(
        self, client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        self.connack = str(reason)
        if not reason.is_failure:
            client.subscribe([(topic, 0) for topic in self.TOPICS])

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        name = self.TOPICS.get(msg.topic)
        with suppress(ValueError):
            value = int(float(msg.payload))
            if name is not None:
                with self._lock:
                    self.latest[name] = value
                    self.peak[name] = max(value, self.peak.get(name, value))

    def ready(self) -> bool:
        """The held-message counters arrived. The drop counter sometimes does not (seen at
        1,000 devices after a broker restart and faults; the cause is not known): a drop while we
        are subscribed changes it, and mosquitto publishes changes, so counting from 0 when it
        never came hides nothing (at worst it counts drops from before)."""
        with self._lock:
            return "held" in self.latest and "held_bytes" in self.latest

    def reset_peaks(self) -> None:
        with self._lock:
            self.peak = dict(self.latest)

    def close(self) -> None:
        with suppress(Exception):  # a broker already gone: nothing to say goodbye to
            self._client.disconnect()
        self._loop.stop()


class SlowDatabase:
    """Another writer holding the server database's write lock ``hold_s`` of every
    ``hold_s + gap_s``: ingest's commits wait on a real lock, as behind a slow disk or a long
    maintenance transaction. SQLite: its one writer lock (``BEGIN IMMEDIATE``); ``hold_s`` stays
    under the server's 5-s busy timeout, so ingest mostly waits; when it misses a gap its commit
    fails with "database is locked" and it retries, as it would on such a disk. PostgreSQL: the
    record tables locked ``IN EXCLUSIVE MODE`` (reads still pass, inserts wait)."""

    def __init__(self, database_url: str, *, hold_s: float = 4.0, gap_s: float = 0.05) -> None:
        self.database_url = database_url
        self.hold_s = hold_s
        self.gap_s = gap_s
        self.holds = 0
        self._stopping = threading.Event()
        self._held = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="slow-database", daemon=True)

    def __enter__(self) -> SlowDatabase:
        self._thread.start()
        self._held.wait(30.0)
        if self._error is not None:
            raise ResoneraError(f"could not lock the server database: {self._error}")
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stopping.set()
        self._thread.join(timeout=30.0)

    def _run(self) -> None:
        try:
            if make_url(self.database_url).get_backend_name() == "sqlite":
                self._hold_sqlite()
            else:
                self._hold_tables()
        except Exception as exc:  # reported by __enter__; ingest is the one under test
            self._error = exc
            self._held.set()
            log.exception("the slow-database lock holder failed")

    def _cycle(self, lock: Callable[[], object], unlock: Callable[[], object]) -> None:
        while not self._stopping.is_set():
            lock()
            self.holds += 1
            self._held.set()
            self._stopping.wait(self.hold_s)
            unlock()
            self._stopping.wait(self.gap_s)

    def _hold_sqlite(self) -> None:
        path = make_url(self.database_url).database
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=60.0)
        try:
            self._cycle(lambda: conn.execute("BEGIN IMMEDIATE"), conn.rollback)
        finally:
            conn.close()

    def _hold_tables(self) -> None:
        tables = ", ".join(table_of(m).name for m in (SessionRow, SafetyEventRow, MessageRow))
        engine = make_engine(self.database_url)
        try:
            with engine.connect() as conn:
                lock = text(f"LOCK TABLE {tables} IN EXCLUSIVE MODE")
                self._cycle(lambda: conn.execute(lock), conn.rollback)
        finally:
            engine.dispose()


def _broker_monitor(stack: LocalStack, fleet: Fleet, attempts: int = 3) -> BrokerMonitor:
    """A monitor that has the broker's counters; it does not reconnect on its own, so a fresh one
    is tried when they do not come."""
    problem = ""
    for attempt in range(1, attempts + 1):
        monitor = BrokerMonitor(stack)
        if fleet.wait(monitor.ready, 10.0):
            return monitor
        monitor.close()
        problem = f"connack {monitor.connack}, got {sorted(monitor.latest) or 'nothing'}"
        log.warning(
            "no $SYS counters within 10 s (attempt %d of %d; %s)", attempt, attempts, problem
        )
    raise ResoneraError(
        f"the broker's $SYS counters did not arrive ({attempts} attempts; {problem})"
    )


@dataclass(frozen=True)
class SlowConsumerResult:
    #: Messages produced while the database was slow, and the rates then (msg/s).
    produced: int
    slow_s: float
    produced_rate: float
    acked_rate: float
    #: Peaks: produced and not yet acknowledged (all devices); the largest outbox (messages,
    #: bytes) as its store counts it.
    peak_pending: int
    peak_outbox: int
    peak_outbox_bytes: int
    #: ``metrics`` dropped by the outbox bound (all devices; each store counts its own).
    thinned: int
    broker_rss_before: int
    peak_broker_rss: int
    #: Messages the broker held at most (its ``$SYS`` store count), and the publishes it dropped.
    peak_broker_held: int
    broker_dropped: int
    #: Slowdown over → every outbox empty.
    drain_s: float
    drained: bool


def run_slow_consumer(
    stack: LocalStack,
    fleet: Fleet,
    *,
    slow_s: float,
    interval_s: float = 0.0,
    events_every: int = 5,
    metrics_every: int = 1,
    hold_s: float = 4.0,
    gap_s: float = 0.05,
    sample_s: float = 0.5,
    drain_timeout_s: float = 120.0,
    enough: Callable[[], bool] | None = None,
) -> SlowConsumerResult:
    """The devices keep producing while the ingest consumer's database is slow (``SlowDatabase``)
    for ``slow_s``, or until ``enough`` says so; then production stops, the database is fast
    again and the outboxes drain.
    Peaks of the outboxes, the broker's resident memory and its held messages are sampled."""
    monitor = _broker_monitor(stack, fleet)
    try:
        monitor.reset_peaks()
        dropped_before = monitor.latest.get("dropped", 0)
        rss_before = stack.broker_rss()
        peaks = {"pending": 0, "outbox": 0, "bytes": 0, "rss": rss_before}

        def sample() -> int:
            """Update the peaks; the messages in all outboxes now."""
            stats = [d.store.outbox_stats() for d in fleet.devices]
            for name, value in (
                ("pending", fleet.pending),
                ("outbox", max((s.depth for s in stats), default=0)),
                ("bytes", max((s.bytes for s in stats), default=0)),
                ("rss", stack.broker_rss()),
            ):
                peaks[name] = max(peaks[name], value)
            return sum(s.depth for s in stats)

        thinned_before = fleet.metrics_thinned()
        produced_before = sum(len(d.produced) for d in fleet.devices)
        stop = threading.Event()
        producer = threading.Thread(
            target=fleet.produce,
            args=(sys.maxsize,),
            kwargs={
                "events_every": events_every,
                "metrics_every": metrics_every,
                "interval_s": interval_s,
                "until": stop,
            },
            daemon=True,
        )
        with SlowDatabase(stack.database_url, hold_s=hold_s, gap_s=gap_s):
            acked_before = fleet.stats.acked_count
            started = time.monotonic()
            producer.start()
            while time.monotonic() - started < slow_s and not (enough is not None and enough()):
                sample()
                time.sleep(sample_s)
            stop.set()
            producer.join()
            slow = time.monotonic() - started
            acked = fleet.stats.acked_count - acked_before
        released = time.monotonic()
        produced = sum(len(d.produced) for d in fleet.devices) - produced_before
        drained = False
        while time.monotonic() - released < drain_timeout_s:
            if sample() == 0:
                drained = True
                break
            time.sleep(sample_s / 5)
        drain_s = time.monotonic() - released
        for device in fleet.devices:
            device.forget_thinned()
        return SlowConsumerResult(
            produced=produced,
            slow_s=slow,
            produced_rate=produced / slow,
            acked_rate=acked / slow,
            peak_pending=peaks["pending"],
            peak_outbox=peaks["outbox"],
            peak_outbox_bytes=peaks["bytes"],
            thinned=fleet.metrics_thinned() - thinned_before,
            broker_rss_before=rss_before,
            peak_broker_rss=peaks["rss"],
            peak_broker_held=monitor.peak.get("held", 0),
            broker_dropped=monitor.latest.get("dropped", 0) - dropped_before,
            drain_s=drain_s,
            drained=drained,
        )
    finally:
        monitor.close()
