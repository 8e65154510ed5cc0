"""``resonera fleet-sim``: many simulated devices in one process, each with the real device store,
outbox scheduler, signing and sync code, its own certificate and its own MQTT/TLS connection.

Why the devices are not run with ``DeviceSync.start()``: that starts paho's network thread, which
waits in ``select()``, and ``select()`` cannot watch a descriptor numbered 1024 or more. A process
holding a few hundred device stores and sockets passes that (seen: at 300 devices all but the first
two dozen connections dropped, mosquitto logging "protocol error"), and 2,000 threads for 1,000
devices cost more than the devices. So each device is a driven ``DeviceSync`` (its callbacks,
outbox scheduler, resend and cursor logic, untouched): its paho client, made by the client
factory the simulator gives it, is driven through paho's external-loop API by one epoll thread
(``MqttLoop``); its publishing step (``DeviceSync.pump``, what its own worker thread would run
when it wakes) and its ack handling run on a small worker pool.

Without ``--broker`` the simulator brings its own stack: a fleet CA made for the run, a mutual-TLS
mosquitto configured by ``provision_broker``, a migrated SQLite database with the devices
registered (their public keys: signatures are verified) and ``resonera-server ingest`` processes
(``--consumers``) on the shared subscription.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import logging
import os
import random
import selectors
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Final, TextIO

import paho.mqtt.client as paho
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy import func, select
from sqlalchemy.engine import Engine, make_url

from resonera.common import topics
from resonera.common.errors import ConfigError, ResoneraError
from resonera.common.identity import generate_key, make_csr, write_private_key
from resonera.common.ids import new_id
from resonera.common.mqtt_client import BrokerUnavailable, build_client, connect
from resonera.common.records import SafetyEventRecord, SessionRecord
from resonera.common.settings import MqttSettings
from resonera.device.settings import DeviceSettings, OutboxLimits, SyncSettings
from resonera.device.store import DeviceStore
from resonera.device.sync import DeviceSync
from resonera.provisioning.broker import SERVER_IDENTITY, provision_broker
from resonera.provisioning.ca import FleetCA
from resonera.stack.broker import find_mosquitto
from resonera.stack.processes import console_script, free_port, stop_process, wait_for_port

log = logging.getLogger(__name__)

PASSPHRASE_ENV: Final = "RESONERA_CA_PASSPHRASE"
#: The CA made for a self-contained run lives and dies with its work folder.
RUN_PASSPHRASE: Final = b"fleet-sim throwaway CA passphrase"
#: The local stack's identity that may read the broker's ``$SYS`` counters (and nothing else).
MONITOR_IDENTITY: Final = topics.service_identity("fleet-monitor")
RECONNECT_MIN_S: Final = 1.0
RECONNECT_MAX_S: Final = 30.0
MISC_EVERY_S: Final = 1.0
#: How often the fleet looks for devices to pump: woken (``on_wake``) or due (``pump``'s delay).
PUMP_EVERY_S: Final = 0.02
#: Simulated devices drain faster than the 50/s a real one is bounded to: the point is the fleet.
SIM_SYNC: Final = SyncSettings(
    resend_after_s=15.0, max_messages_per_s=2000.0, batch_size=50, reconnect_jitter_s=1.0
)


# --- identities ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceIdentity:
    """A device's key and certificate, made the way enrollment makes them."""

    device_id: str
    key: ec.EllipticCurvePrivateKey
    key_file: Path
    cert_file: Path

    def public_key_b64(self) -> str:
        """What the server registry holds to verify the device's signatures (DER SPKI, base64)."""
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()


def issue_device(
    ca: FleetCA, passphrase: bytes, device_id: str, folder: Path, **issue: Any
) -> DeviceIdentity:
    """Key made here (never leaves ``folder``), CSR signed by the fleet CA, as enrollment does."""
    key = generate_key()
    key_file = write_private_key(key, folder / "device.key")
    cert = ca.sign_device_csr(make_csr(key, device_id, f"SN-{device_id}"), passphrase, **issue)
    cert_file = folder / "device.crt"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return DeviceIdentity(device_id, key, key_file, cert_file)


def register_devices(engine: Engine, identities: Iterable[DeviceIdentity]) -> None:
    """Put devices in the server registry with their public keys (what provisioning does)."""
    from sqlmodel import Session

    from resonera.server.models import DeviceRow

    now = datetime.now(UTC)
    with Session(engine) as session:
        for identity in identities:
            if session.get(DeviceRow, identity.device_id) is None:
                session.add(
                    DeviceRow(
                        id=identity.device_id,
                        public_key=identity.public_key_b64(),
                        created_at=now,
                        note="fleet-sim",
                    )
                )
        session.commit()


# --- one epoll loop for every paho client ----------------------------------------------------


class MqttLoop:
    """Drives many paho clients through paho's external-loop API on one selector thread.

    paho calls the socket callbacks from whichever thread opens, writes or closes; selector
    registrations are thread-safe under epoll, and a packet queued while the loop was clearing
    its write interest is picked up by the periodic ``want_write`` sweep."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._clients: list[paho.Client] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name="fleet-mqtt", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)
        self._selector.close()

    def attach(self, client: paho.Client) -> None:
        client.on_socket_open = self._on_open
        client.on_socket_close = self._on_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        with self._lock:
            self._clients.append(client)

    def call_later(self, delay_s: float, action: Callable[[], None]) -> None:
        """Run ``action`` on the loop thread after ``delay_s`` (it must not block)."""
        with self._lock:
            heapq.heappush(
                self._timers, (time.monotonic() + delay_s, next(self._timer_ids), action)
            )

    # paho socket callbacks (any thread)

    def _on_open(self, client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._selector.register(sock, selectors.EVENT_READ, client)

    def _on_close(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        with suppress(KeyError, ValueError):  # never registered, or the selector is closed
            self._selector.unregister(sock)

    def _on_register_write(self, client: paho.Client, _userdata: Any, sock: Any) -> None:
        with suppress(KeyError, ValueError):  # closed meanwhile: the reconnect sends the queue
            self._selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _on_unregister_write(self, client: paho.Client, _userdata: Any, sock: Any) -> None:
        with suppress(KeyError, ValueError):
            self._selector.modify(sock, selectors.EVENT_READ, client)

    # the loop thread

    def _run(self) -> None:
        next_misc = time.monotonic() + MISC_EVERY_S
        while not self._stopping.is_set():
            try:
                events = self._selector.select(timeout=0.05)
            except (OSError, ValueError):
                events = []  # a socket closed under us; the next round has a clean set
            for key, mask in events:
                client: paho.Client = key.data
                if mask & selectors.EVENT_READ:
                    self._read(client)
                if mask & selectors.EVENT_WRITE:
                    client.loop_write()
            now = time.monotonic()
            self._run_timers(now)
            if now >= next_misc:
                next_misc = now + MISC_EVERY_S
                with self._lock:
                    clients = list(self._clients)
                for client in clients:
                    client.loop_misc()  # keepalive pings and timeouts
                    if client.want_write():
                        client.loop_write()

    @staticmethod
    def _read(client: paho.Client) -> None:
        # TLS decrypts whole records: bytes already taken off the socket make no epoll event, so
        # read until the TLS layer holds nothing more (paho's own loop checks ``pending()`` too).
        while client.loop_read(max_packets=10) == paho.MQTT_ERR_SUCCESS:
            sock = client.socket()
            if not isinstance(sock, ssl.SSLSocket) or sock.pending() == 0:
                return

    def _run_timers(self, now: float) -> None:
        due: list[Callable[[], None]] = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                due.append(heapq.heappop(self._timers)[2])
        for action in due:
            try:
                action()
            except Exception:  # one device's timer must not stop the fleet's loop
                log.exception("fleet loop timer failed")


# --- a simulated device ----------------------------------------------------------------------


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


# --- a local stack: fleet CA, TLS mosquitto, SQLite, ingest processes --------------------------


class FleetTarget:
    """Where a fleet connects and registers: a broker address, the fleet CA that issues the
    devices' certificates (the one the broker trusts), and the server's database."""

    def __init__(
        self,
        workdir: Path,
        ca: FleetCA,
        passphrase: bytes,
        *,
        host: str,
        port: int,
        database_url: str,
        migrate_db: bool = False,
    ) -> None:
        from resonera.server.db import make_engine, migrate

        self.workdir = workdir
        self.ca = ca
        self.passphrase = passphrase
        self.host = host
        self.port = port
        self.database_url = database_url
        self.engine = make_engine(database_url)
        if migrate_db:
            migrate(self.engine)

    def mqtt(self, key: Path, cert: Path) -> MqttSettings:
        return MqttSettings(
            host=self.host, port=self.port, ca_file=self.ca.chain_path, cert_file=cert, key_file=key
        )

    def close(self) -> None:
        self.engine.dispose()

    def stored(self, device_prefix: str = "") -> dict[str, int]:
        """Rows per table (session_record, safety_event, device_message) of matching devices."""
        from resonera.server.models import MessageRow, SafetyEventRow, SessionRow, table_of

        counts: dict[str, int] = {}
        with self.engine.connect() as conn:
            for model in (SessionRow, SafetyEventRow, MessageRow):
                table = table_of(model)
                query = select(func.count()).select_from(table)
                if device_prefix:
                    query = query.where(table.c.device_id.startswith(device_prefix))
                counts[table.name] = int(conn.execute(query).scalar_one())
        return counts

    def stored_ids(self, device_prefix: str = "") -> list[tuple[str, str]]:
        """(device id, message id) of every stored record of matching devices (with repeats,
        if there were any)."""
        from resonera.server.models import MessageRow, SafetyEventRow, SessionRow, table_of

        rows: list[tuple[str, str]] = []
        with self.engine.connect() as conn:
            for model in (SessionRow, SafetyEventRow, MessageRow):
                table = table_of(model)
                query = select(table.c.device_id, table.c.message_id)
                if device_prefix:
                    query = query.where(table.c.device_id.startswith(device_prefix))
                rows.extend((r.device_id, r.message_id) for r in conn.execute(query))
        return rows


class LocalStack(FleetTarget):
    """What a fleet talks to on one machine: a fleet CA made for the run, mosquitto with mutual
    TLS (``provision_broker``), a migrated SQLite database, ``resonera-server ingest`` processes."""

    def __init__(self, workdir: Path, *, database_url: str | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        ca = FleetCA.init(workdir / "ca", RUN_PASSPHRASE)
        super().__init__(
            workdir,
            ca,
            RUN_PASSPHRASE,
            host="127.0.0.1",
            port=free_port(),
            database_url=database_url or f"sqlite:///{workdir / 'server.db'}",
            migrate_db=True,
        )
        self.broker_config = provision_broker(
            self.ca, workdir / "broker", self.passphrase, port=self.port
        )
        self.broker: subprocess.Popen[bytes] | None = None
        server = workdir / "server"
        server.mkdir(exist_ok=True)
        self.ca.issue_service(
            SERVER_IDENTITY, server / "server.key", server / "server.crt", self.passphrase
        )
        self.server_key, self.server_cert = server / "server.key", server / "server.crt"
        # A read-only identity for the broker's own counters ($SYS), published every second:
        # what the slow-consumer scenario reads to show the broker's queue stays bounded.
        self.monitor_key, self.monitor_cert = server / "monitor.key", server / "monitor.crt"
        self.ca.issue_service(
            MONITOR_IDENTITY, self.monitor_key, self.monitor_cert, self.passphrase
        )
        with (self.broker_config.parent / "acl").open("a") as acl:
            acl.write(f"user {MONITOR_IDENTITY}\ntopic read $SYS/#\n")
        with self.broker_config.open("a") as config:
            config.write("sys_interval 1\n")
        self.consumers: list[subprocess.Popen[bytes]] = []
        self._consumer_ids = itertools.count(1)

    def start_broker(self) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise ConfigError("mosquitto is not installed (apt-get install mosquitto)")
        log_file = (self.workdir / "mosquitto.log").open("ab")
        self.broker = subprocess.Popen(
            [binary, "-c", str(self.broker_config)], stdout=log_file, stderr=log_file
        )
        broker = self.broker
        if not wait_for_port(self.port, 10.0, lambda: broker.poll() is None):
            raise ResoneraError(
                f"mosquitto did not start on 127.0.0.1:{self.port} "
                f"(log: {self.workdir / 'mosquitto.log'})"
            )

    def stop_broker(self) -> None:
        if self.broker is not None:
            stop_process(self.broker)

    def restart_broker(self) -> None:
        self.stop_broker()
        self.start_broker()

    def broker_rss(self) -> int:
        """The broker's resident memory in bytes (0 when it is not running)."""
        if self.broker is None or self.broker.poll() is not None:
            return 0
        with suppress(OSError):
            for line in Path(f"/proc/{self.broker.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def use_database(self, database_url: str, devices: Iterable[DeviceIdentity]) -> None:
        """Point the stack at another server database (migrated here, ``devices`` registered):
        the consumers are stopped; start the ones wanted. The broker and the fleet stay up."""
        from resonera.server.db import make_engine, migrate

        self.stop_consumers()
        self.engine.dispose()
        self.database_url = database_url
        self.engine = make_engine(database_url)
        migrate(self.engine)
        register_devices(self.engine, devices)

    def start_consumer(self) -> subprocess.Popen[bytes]:
        """One more ``resonera-server ingest`` on the shared subscription; returns once it is
        subscribed (it prints its topic then)."""
        number = next(self._consumer_ids)
        env = {
            **os.environ,
            "RESONERA_SERVER_DATABASE_URL": self.database_url,
            "RESONERA_SERVER_INGEST_CLIENT_ID": f"fleet-sim-ingest-{os.getpid()}-{number}",
            "RESONERA_SERVER_MQTT__HOST": "127.0.0.1",
            "RESONERA_SERVER_MQTT__PORT": str(self.port),
            "RESONERA_SERVER_MQTT__CA_FILE": str(self.ca.cert_path),
            "RESONERA_SERVER_MQTT__CERT_FILE": str(self.server_cert),
            "RESONERA_SERVER_MQTT__KEY_FILE": str(self.server_key),
        }
        log_path = self.workdir / f"ingest-{number}.log"
        process = subprocess.Popen(
            [console_script("resonera-server"), "ingest"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log_path.open("ab"),
        )
        assert process.stdout is not None
        line = process.stdout.readline()  # "resonera-server: ingest from ..." once subscribed
        if process.poll() is not None or b"ingest from" not in line:
            process.kill()
            raise ResoneraError(f"the ingest consumer did not start (log: {log_path})")
        self.consumers.append(process)
        return process

    def kill_consumers(self) -> None:
        """SIGKILL every consumer: a crash, nothing flushed."""
        for process in self.consumers:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
        self.consumers.clear()

    def stop_consumers(self) -> None:
        for process in self.consumers:
            stop_process(process, timeout_s=15)
        self.consumers.clear()

    def close(self) -> None:
        self.stop_consumers()
        self.stop_broker()
        super().close()


def build_fleet(
    stack: FleetTarget,
    count: int,
    *,
    prefix: str = "sim",
    workers: int = 16,
    outbox: OutboxLimits | None = None,
) -> Fleet:
    """``count`` devices with certificates from the stack's CA, registered on its server;
    ``outbox``: their outbox bounds (the device default otherwise)."""
    fleet = Fleet(workers=workers)
    identities = [
        issue_device(
            stack.ca,
            stack.passphrase,
            f"{prefix}-{n:05d}",
            stack.workdir / "devices" / f"{prefix}-{n:05d}" / "identity",
        )
        for n in range(count)
    ]
    register_devices(stack.engine, identities)
    for identity in identities:
        folder = stack.workdir / "devices" / identity.device_id
        mqtt = stack.mqtt(identity.key_file, identity.cert_file)
        fleet.add(SimDevice(identity, mqtt, folder, fleet, outbox=outbox))
    return fleet


@contextmanager
def local_stack(workdir: Path, consumers: int = 1) -> Iterator[LocalStack]:
    stack = LocalStack(workdir)
    try:
        stack.start_broker()
        for _ in range(consumers):
            stack.start_consumer()
        yield stack
    finally:
        stack.close()


# --- a slow consumer -------------------------------------------------------------------------


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
        from sqlalchemy import text

        from resonera.server.db import make_engine
        from resonera.server.models import MessageRow, SafetyEventRow, SessionRow, table_of

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


# --- the command -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetSimOptions:
    devices: int = 100
    sessions: int = 5
    consumers: int = 1
    interval_s: float = 0.0
    events_every: int = 5
    metrics_every: int = 10
    workdir: Path | None = None
    timeout_s: float = 600.0
    #: A running deployment instead of the local stack: broker host:port, its fleet CA folder
    #: (passphrase in $RESONERA_CA_PASSPHRASE) and the server database to register devices in.
    broker: str | None = None
    ca: Path | None = None
    database_url: str | None = None


@dataclass(frozen=True)
class FleetSimResult:
    devices: int
    connected: int
    produced: int
    acked: int
    stored: int
    duplicates: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    outbox_total: int
    outbox_max: int

    @property
    def rate(self) -> float:
        return self.acked / self.seconds if self.seconds > 0 else 0.0


class ProgressLine:
    """A redrawn line on a terminal, a plain line every few seconds otherwise (logs, CI)."""

    def __init__(self, out: TextIO, every_s: float = 5.0) -> None:
        self.out = out
        self.tty = out.isatty()
        self.every_s = 0.2 if self.tty else every_s
        self._last = 0.0

    def show(self, text: str, fraction: float) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        if self.tty:
            filled = round(max(0.0, min(1.0, fraction)) * 24)
            self.out.write(f"\r{'█' * filled}{'░' * (24 - filled)} {fraction:4.0%}  {text}\033[K")
        else:
            self.out.write(f"fleet-sim: {fraction:4.0%}  {text}\n")
        self.out.flush()

    def end(self) -> None:
        if self.tty:
            self.out.write("\n")


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def run_fleet_sim(options: FleetSimOptions, out: TextIO = sys.stdout) -> FleetSimResult:
    """Bring up the local stack and the fleet, produce, wait for every ack, report."""
    if options.devices < 1 or options.sessions < 1 or options.consumers < 1:
        raise ConfigError("--devices, --sessions and --consumers must be at least 1")
    _raise_fd_limit(options.devices)
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # a thousand devices each saying "connected" drown the figures; warnings still show
        logging.getLogger("resonera.device").setLevel(logging.WARNING)
    with ExitStack() as exits:
        if options.workdir is None:
            import tempfile

            workdir = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="fleet-sim-")))
        else:
            workdir = options.workdir
            if workdir.exists() and any(workdir.iterdir()):
                raise ConfigError(f"work folder {workdir} is not empty; give a new or empty one")
        started = time.monotonic()
        stack: FleetTarget
        if options.broker is None:
            stack = exits.enter_context(local_stack(workdir, options.consumers))
            prefix = "sim"
            out.write(
                f"fleet-sim: mosquitto (mutual TLS) on 127.0.0.1:{stack.port}, "
                f"{options.consumers} ingest consumer(s), SQLite in {workdir}\n"
            )
        else:
            stack = _external_target(options, workdir)
            exits.callback(stack.close)
            # a fresh prefix per run: ids registered by an earlier run carry other keys
            prefix = f"sim-{new_id()[-8:].lower()}"
            out.write(
                f"fleet-sim: broker {stack.host}:{stack.port}, devices {prefix}-*, "
                f"registered in {_where(stack.database_url)}\n"
            )
        fleet = build_fleet(stack, options.devices, prefix=prefix)
        exits.callback(fleet.close)
        out.write(
            f"fleet-sim: {options.devices} devices provisioned in "
            f"{time.monotonic() - started:.1f} s; connecting\n"
        )
        connected = fleet.connect_all()
        out.write(f"fleet-sim: {connected}/{options.devices} devices connected\n")
        expected = options.devices * sum(
            1
            + int(
                bool(options.events_every) and i % options.events_every == options.events_every - 1
            )
            + int(
                bool(options.metrics_every)
                and i % options.metrics_every == options.metrics_every - 1
            )
            for i in range(options.sessions)
        )
        progress = ProgressLine(out)
        begin = time.monotonic()

        def tick() -> None:
            acked = fleet.stats.acked_count
            elapsed = max(time.monotonic() - begin, 1e-9)
            progress.show(
                f"{acked} acked  {acked / elapsed:7.0f} msg/s  in outboxes {fleet.pending}  "
                f"connected {fleet.connected}",
                acked / expected,
            )

        producer = threading.Thread(
            target=fleet.produce,
            args=(options.sessions,),
            kwargs={
                "events_every": options.events_every,
                "metrics_every": options.metrics_every,
                "interval_s": options.interval_s,
            },
            daemon=True,
        )
        producer.start()
        while producer.is_alive():
            tick()
            producer.join(timeout=0.2)
        drained = fleet.drain(options.timeout_s, tick)
        seconds = time.monotonic() - begin
        progress.end()
        produced = sum(len(d.produced) for d in fleet.devices)
        ids = stack.stored_ids(f"{prefix}-")
        outbox_total, outbox_max = fleet.outbox_depths()
        result = FleetSimResult(
            devices=options.devices,
            connected=fleet.connected,
            produced=produced,
            acked=fleet.stats.acked_count,
            stored=len(set(ids)),
            duplicates=len(ids) - len(set(ids)),
            seconds=seconds,
            p50_ms=_ms(fleet.stats.percentile(50)),
            p95_ms=_ms(fleet.stats.percentile(95)),
            p99_ms=_ms(fleet.stats.percentile(99)),
            outbox_total=outbox_total,
            outbox_max=outbox_max,
        )
        _report(result, options.devices * options.sessions, out)
        if not drained:
            raise ResoneraError(
                f"{fleet.pending} message(s) still unacknowledged after {options.timeout_s:.0f} s"
            )
        return result


def _where(database_url: str) -> str:
    """The database URL without its password."""
    return make_url(database_url).render_as_string(hide_password=True)


def _external_target(options: FleetSimOptions, workdir: Path) -> FleetTarget:
    """The broker, CA and database of a running deployment (``--broker``)."""
    assert options.broker is not None
    host, _, port_text = options.broker.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"--broker {options.broker!r} is not host:port")
    if options.ca is None or options.database_url is None:
        raise ConfigError(
            "--broker needs --ca (the fleet CA folder the broker trusts) and --database-url "
            "(the server database the devices are registered in)"
        )
    passphrase = os.environ.get(PASSPHRASE_ENV)
    if not passphrase:
        raise ConfigError(f"--broker needs the CA passphrase in ${PASSPHRASE_ENV}")
    if not (options.ca / "ca.crt").is_file():
        raise ConfigError(f"--ca {options.ca}: no fleet CA there (ca.crt missing)")
    return FleetTarget(
        workdir,
        FleetCA(options.ca),
        passphrase.encode(),
        host=host,
        port=int(port_text),
        database_url=options.database_url,
    )


def _report(result: FleetSimResult, sessions: int, out: TextIO) -> None:
    out.write(
        f"fleet-sim: {result.devices} devices ({result.connected} connected), {sessions} sessions, "
        f"{result.produced} messages (sessions, safety events, metrics)\n"
        f"  throughput   {result.rate:8.0f} msg/s acknowledged ({result.acked} in "
        f"{result.seconds:.1f} s)\n"
        f"  ack latency  p50 {result.p50_ms:.0f} ms  p95 {result.p95_ms:.0f} ms  "
        f"p99 {result.p99_ms:.0f} ms (queued in the outbox → server's ack back)\n"
        f"  stored       {result.stored} records, {result.duplicates} duplicates\n"
        f"  outboxes     {result.outbox_total} left in all, largest {result.outbox_max}\n"
    )
    out.flush()


def _raise_fd_limit(devices: int) -> None:
    """Each device holds a socket, a socket pair and its store's files: lift the soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, devices * 12 + 256))
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if devices * 12 > wanted:
        raise ConfigError(
            f"{devices} devices need about {devices * 12} open files; the limit is {wanted} "
            "(raise it with ulimit -n)"
        )
