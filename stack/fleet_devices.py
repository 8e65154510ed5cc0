"""The simulated fleet: ``SimDevice`` (the real store, outbox and a driven ``DeviceSync``) and
``Fleet`` (N of them on one ``MqttLoop``, one pump thread and one worker pool).
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Final

import paho.mqtt.client as paho

from resonera.common.ids import new_id
from resonera.common.mqtt_client import BrokerUnavailable, build_client
from resonera.common.records import SafetyEventRecord, SessionRecord
from resonera.common.settings import MqttSettings
from resonera.device.settings import DeviceSettings, OutboxLimits, SyncSettings
from resonera.device.store import DeviceStore
from resonera.device.sync import DeviceSync
from resonera.stack.fleet_identity import DeviceIdentity
from resonera.stack.fleet_loop import MqttLoop

log = logging.getLogger(__name__)

RECONNECT_MIN_S: Final = 1.0
RECONNECT_MAX_S: Final = 30.0
#: How often the fleet looks for devices to pump: woken (``on_wake``) or due (``pump``'s delay).
PUMP_EVERY_S: Final = 0.02
#: Simulated devices drain faster than the 50/s a real one is bounded to: the point is the fleet.
SIM_SYNC: Final = SyncSettings(
    resend_after_s=15.0, max_messages_per_s=2000.0, batch_size=50, reconnect_jitter_s=1.0
)


class SimDevice:
    """One device: its own store (sealed, signed outbox), ``DeviceSync`` and MQTT connection.

    The sync is driven (``DeviceSync.pump``): its paho client comes from ``_client_on_loop``,
    attached to the fleet's ``MqttLoop``; it says when it would wake (``Fleet.mark``), when its
    connection is lost (a reconnect is scheduled here, with backoff), and which ids an ack
    deleted (their latency); its acks and desired states are handled on the fleet's pool."""

    def __init__(
        self,
        identity: DeviceIdentity,
        mqtt: MqttSettings,
        data_dir: Path,
        fleet: Fleet,
        sync: SyncSettings = SIM_SYNC,
        *,
        outbox: OutboxLimits | None = None,
    ) -> None:
        self.device_id = identity.device_id
        self.identity = identity
        self.settings = DeviceSettings(
            device_id=identity.device_id,
            data_dir=data_dir,
            mqtt=mqtt,
            sync=sync,
            key_file=identity.key_file,
            simulation=True,
            outbox=outbox or OutboxLimits(),
        )
        self.store: DeviceStore = self.settings.open_store()
        self.fleet = fleet
        self.produced: list[str] = []
        #: The ``metrics`` among ``produced``: the only kind the outbox bound may thin.
        self.produced_metrics: set[str] = set()
        self._queued_at: dict[str, float] = {}
        #: A ``pump`` is queued or running on the pool (the fleet's pump thread sets it).
        self.busy = False
        #: When the sync wants ``pump`` again at the latest (monotonic; None: when it wakes).
        self.due_at: float | None = None
        self._backoff = RECONNECT_MIN_S
        self.stopping = False
        #: The sync's paho client (ours: made by ``_client_on_loop``), for cuts and disconnects.
        self.client: paho.Client
        self.sync = DeviceSync(
            self.settings,
            self.store,
            client_factory=self._client_on_loop,
            on_wake=partial(fleet.mark, self),
            on_acked=self._acked,
            on_connection_lost=self._schedule_reconnect,
            # Acks are handled off the network thread (the store write would stall every device).
            dispatch=fleet.submit,
        )

    def _client_on_loop(
        self, settings: MqttSettings, client_id: str, *, will: tuple[str, bytes] | None = None
    ) -> paho.Client:
        """The sync's client, driven by the fleet's epoll loop instead of paho's own thread."""
        self.client = build_client(settings, client_id, will=will)
        self.fleet.loop.attach(self.client)
        return self.client

    # connection

    def connect(self) -> None:
        """One attempt (blocking TCP/TLS); on failure the next is scheduled with backoff."""
        if self.stopping:
            return
        try:
            self.sync.connect()
            self._backoff = RECONNECT_MIN_S
        except BrokerUnavailable:  # the sync keeps the reason in ``last_error``
            self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if self.stopping:
            return
        delay = self._backoff * (0.5 + random.random())
        self._backoff = min(self._backoff * 2, RECONNECT_MAX_S)
        self.fleet.loop.call_later(delay, self._submit_connect)

    def _submit_connect(self) -> None:
        self.fleet.submit(self.connect)

    def drop(self) -> None:
        """Lose the connection abruptly (no DISCONNECT): what a network cut looks like."""
        sock = self.client.socket()
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]

    # records

    def produce(self, index: int, events_every: int, metrics_every: int) -> None:
        """Record session ``index`` (and on schedule a safety event, a metrics message)."""
        start = datetime.now(UTC) - timedelta(seconds=3)
        record = SessionRecord(
            session_id=new_id(),
            program_name="fleet-sim",
            program_digest="0" * 64,
            started_at=start,
            ended_at=start + timedelta(seconds=3),
            planned_s=3.0,
            played_s=3.0,
            outcome="completed",
            sink="null",
            sample_rate=48000,
            peak_dbfs=-12.0,
            rms_dbfs=-15.0,
            simulation=True,
        )
        self._queued(self.store.record_session(self.device_id, record).id)
        if events_every and index % events_every == events_every - 1:
            event = SafetyEventRecord(
                event_id=new_id(),
                at=datetime.now(UTC),
                type="warning",
                cause="fleet-sim: simulated amplifier temperature warning",
                simulation=True,
            )
            self._queued(self.store.record_event(self.device_id, event).id)
        if metrics_every and index % metrics_every == metrics_every - 1:
            body = {"outbox_depth": len(self._queued_at), "sessions": index + 1}
            message_id = self.store.queue_message(self.device_id, "metrics", body).id
            self.produced_metrics.add(message_id)
            self._queued(message_id)
        self.sync.kick()

    def _queued(self, message_id: str) -> None:
        self.produced.append(message_id)
        self._queued_at[message_id] = time.monotonic()

    def _acked(self, ids: Sequence[str]) -> None:
        """The sync's ``on_acked`` (on the pool): the store has deleted ``ids``."""
        now = time.monotonic()
        latencies = [now - t for t in (self._queued_at.pop(i, None) for i in ids) if t is not None]
        self.fleet.stats.acked(latencies)

    # publishing, as the device's worker thread would

    def pump(self) -> None:
        """One ``DeviceSync.pump`` step; called from the pool, never twice at once (``busy``)."""
        try:
            delay = None if self.stopping else self.sync.pump()
            self.due_at = None if delay is None else time.monotonic() + delay
        finally:
            self.busy = False

    def forget_thinned(self) -> None:
        """Stop waiting for acks of ``metrics`` the outbox bound thinned before they went out
        (the outbox no longer holds them; nothing will ever acknowledge them)."""
        waiting = [i for i in self._queued_at if i in self.produced_metrics]
        if waiting:
            held = {m.message_id for m in self.store.messages(waiting)}
            for message_id in set(waiting) - held:
                self._queued_at.pop(message_id, None)

    def restart_latency_clock(self) -> None:
        """Count latency of what is queued from now (a backlog from the moment it may go)."""
        now = time.monotonic()
        self._queued_at = dict.fromkeys(self._queued_at, now)

    @property
    def pending(self) -> int:
        """Messages produced and not yet acknowledged (the outbox depth, without a query)."""
        return len(self._queued_at)

    def close(self) -> None:
        """Stop the sync (a clean DISCONNECT, not a lost connection; no ``offline`` status: a
        thousand devices closing need not each wait for the broker to take it), then the store."""
        self.stopping = True
        try:
            self.sync.close(goodbye=False)
        finally:
            self.store.close()


# --- the fleet -------------------------------------------------------------------------------


@dataclass
class Stats:
    """Acks and their latency (queued in the outbox → application ack back at the device)."""

    latencies: list[float] = field(default_factory=list)
    acked_count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def acked(self, latencies: Sequence[float]) -> None:
        with self._lock:
            self.latencies.extend(latencies)
            self.acked_count += len(latencies)

    def percentile(self, q: float) -> float:
        with self._lock:
            ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

    def reset(self) -> None:
        with self._lock:
            self.latencies.clear()
            self.acked_count = 0


class Fleet:
    """N ``SimDevice`` on one ``MqttLoop`` and one worker pool."""

    def __init__(self, workers: int = 16) -> None:
        self.loop = MqttLoop()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fleet")
        # Recording runs on its own pool: a burst of records must not queue acks behind it.
        self.recorders = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fleet-record")
        self.devices: list[SimDevice] = []
        self.stats = Stats()
        self._dirty: set[SimDevice] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._pump_thread = threading.Thread(target=self._pump, name="fleet-pump", daemon=True)
        self.loop.start()
        self._pump_thread.start()

    def submit(self, action: Callable[[], None]) -> Future[None]:
        return self.pool.submit(action)

    def mark(self, device: SimDevice) -> None:
        with self._lock:
            self._dirty.add(device)

    def add(self, device: SimDevice) -> None:
        self.devices.append(device)

    def connect_all(self, timeout_s: float = 120.0) -> int:
        """Connect every device (TLS handshakes on the pool); return how many are connected."""
        for future in [self.submit(d.connect) for d in self.devices]:
            future.result()
        self.wait(lambda: self.connected == len(self.devices), timeout_s)
        return self.connected

    @property
    def connected(self) -> int:
        return sum(1 for d in self.devices if d.sync.connected)

    @property
    def pending(self) -> int:
        return sum(d.pending for d in self.devices)

    def produced(self) -> dict[str, list[str]]:
        return {d.device_id: list(d.produced) for d in self.devices}

    def metrics_thinned(self) -> int:
        """``metrics`` the devices' outbox bounds dropped (each store counts its own)."""
        return sum(d.store.counter("metrics_thinned") for d in self.devices)

    def outbox_depths(self) -> tuple[int, int]:
        """(total, largest) outbox depth, as the stores count them."""
        depths = [d.store.outbox_depth() for d in self.devices]
        return sum(depths), max(depths, default=0)

    def produce(
        self,
        sessions: int,
        *,
        events_every: int = 5,
        metrics_every: int = 10,
        interval_s: float = 0,
        until: threading.Event | None = None,
    ) -> None:
        """Each device records ``sessions`` sessions, one every ``interval_s`` (0: back to back),
        with a safety event and a metrics message on schedule; returns when all are queued, or
        after the round in which ``until`` is set."""
        for index in range(sessions):
            if until is not None and until.is_set():
                return
            started = time.monotonic()
            futures = [
                self.recorders.submit(partial(d.produce, index, events_every, metrics_every))
                for d in self.devices
            ]
            for future in futures:
                future.result()
            rest = interval_s - (time.monotonic() - started)
            if rest > 0:
                time.sleep(rest)

    def wait(
        self, done: Callable[[], bool], timeout_s: float, tick: Callable[[], None] | None = None
    ) -> bool:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                return False
            if tick is not None:
                tick()
            time.sleep(0.1)
        return True

    def drain(self, timeout_s: float, tick: Callable[[], None] | None = None) -> bool:
        """Wait until every produced message is acknowledged."""
        return self.wait(lambda: self.pending == 0, timeout_s, tick)

    def disconnect_all(self, timeout_s: float = 30.0) -> None:
        """Take every device offline cleanly (records then wait in the outboxes);
        ``connect_all`` brings them back."""
        for device in self.devices:
            device.stopping = True
            if device.client.is_connected():
                device.client.disconnect()
        self.wait(lambda: self.connected == 0, timeout_s)
        time.sleep(0.5)  # the last disconnect callbacks see ``stopping`` and schedule nothing
        for device in self.devices:
            device.stopping = False

    def drop_all(self) -> None:
        """Every device loses its connection at once (then reconnects with backoff)."""
        for device in self.devices:
            device.drop()

    def _pump(self) -> None:
        while not self._stopping.wait(PUMP_EVERY_S):
            with self._lock:
                dirty, self._dirty = self._dirty, set()
            now = time.monotonic()
            dirty.update(d for d in self.devices if d.due_at is not None and d.due_at <= now)
            busy = set()
            for device in dirty:
                if device.busy:
                    busy.add(device)  # woken while publishing: look again next round
                    continue
                device.due_at = None  # the pump says when next; connecting wakes it anyway
                if device.sync.connected:
                    device.busy = True
                    self.pool.submit(device.pump)
            if busy:
                with self._lock:
                    self._dirty |= busy

    def close(self) -> None:
        self._stopping.set()
        self._pump_thread.join(timeout=5)
        for device in self.devices:
            device.stopping = True
        for future in [self.submit(d.close) for d in self.devices]:
            try:
                future.result(timeout=10)
            except Exception:  # closing the rest matters more
                log.exception("closing a simulated device failed")
        self.loop.stop()
        self.recorders.shutdown(wait=True)
        self.pool.shutdown(wait=True)
