"""The MQTT side of ingest: subscribe, batch, commit, then acknowledge.

Why manual PUBACKs: paho normally sends PUBACK as soon as ``on_message`` returns, when the message
is only in our memory. With ``manual_ack_set(True)`` we send it after the batch is committed, so:
- the broker's in-flight window (``max_inflight_messages``) becomes our flow control: while the
  database is slow or down, the broker stops sending to us and keeps the rest queued, instead of us
  buffering without end or dropping;
- what the broker believes delivered is what we have stored.
The device still deletes a record only on our application ack (``resonera/v1/dev/{d}/ack``), which
names the ids we committed; whatever is lost in between (a consumer that dies mid-batch, a clean
start after a reconnect) is resent by the device, and storing it again is a no-op.

Threads: paho's network thread runs the callbacks, which only put messages on a bounded queue; one
worker thread takes batches (up to ``batch_max`` messages or ``batch_wait_s``), stores them with
``IngestProcessor`` and acknowledges. A PUBACK is only sent for messages received on the current
connection: after a reconnect (a clean start), packet ids of the old connection mean nothing and may
name other messages.

paho through its public API (``manual_ack_set``, ``ack``, ``publish``, ``loop_start``), except how
the client reads its socket: ``paho_adapter.read_ahead`` makes that 64 KiB at a time, and is the one
module that touches paho's internals (which ones and why: its docstring).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy.engine import Engine

from resonera.common import topics
from resonera.common.envelope import MAX_ACK_IDS, Ack
from resonera.common.mqtt_client import BrokerUnavailable, build_client, connect, stop_loop
from resonera.server import metrics
from resonera.server.crypto import Ed25519Signer
from resonera.server.desired import DesiredService
from resonera.server.ingest import BatchResult, IngestProcessor, Received, StoreError
from resonera.server.ingest_checks import TimeBounds
from resonera.server.notices import for_ingest
from resonera.server.paho_adapter import read_ahead
from resonera.server.settings import ServerSettings

log = logging.getLogger(__name__)

SESSION_EXPIRY_S: Final = 60
QUEUE_MAX: Final = 10_000
#: Larger batches spread a transaction's fixed cost (lookups, state upserts, commit) and the
#: per-device ack messages over more messages; 500 still commits within tens of milliseconds.
#: 1000 was slower (measured): at a quarter of RECEIVE_MAXIMUM, the broker has room to send on
#: while a batch is stored.
BATCH_MAX: Final = 500
#: At a few thousand messages a second, 0.1 s fills a batch where 0.05 s cut it at half: measured
#: (bench_server_ingest) about 6,000 against 4,500 stored messages/s, same CPU per message.
BATCH_WAIT_S: Final = 0.1
#: How often a batch still filling looks at the queue again.
BATCH_POLL_S: Final = 0.005
START_TIMEOUT_S: Final = 10.0
RETRY_MIN_S: Final = 0.2
RETRY_MAX_S: Final = 5.0
STATUS_WILDCARD: Final = f"{topics.PREFIX}/+/status"
#: Unacknowledged messages the broker may send us (MQTT 5): with PUBACK after commit, this is what
#: stops the broker from outrunning the database; it must not exceed the queue, or the queue
#: overflows under load (seen: 20,000 messages published fast filled a 10,000 queue).
RECEIVE_MAXIMUM: Final = 2000
#: How long the network thread waits for room in a full queue before dropping (unacknowledged).
QUEUE_WAIT_S: Final = 5.0


@dataclass(frozen=True)
class Item:
    """A received message with what its PUBACK needs (connection generation, packet id, QoS)."""

    generation: int
    mid: int
    qos: int
    message: Received


def take_batch(
    source: queue.Queue[Item], first: Item, *, max_items: int, max_wait_s: float
) -> list[Item]:
    """``first`` plus whatever arrives within ``max_wait_s``, at most ``max_items`` in all."""
    batch = [first]
    deadline = time.monotonic() + max_wait_s
    while len(batch) < max_items:
        try:
            batch.append(source.get_nowait())
            continue
        except queue.Empty:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        # Waiting on the queue would wake this thread for every message (and hand the
        # interpreter lock back and forth with the network thread each time): poll instead.
        time.sleep(min(remaining, BATCH_POLL_S))
    return batch


class IngestConsumer:
    """Reads every device's ``up`` messages from the broker into the store.

    Call ``start()`` once (it returns when the subscription is granted, or raises
    ``BrokerUnavailable``), then ``stop()``; ``stop()`` stores and acknowledges what was already
    received. Reconnects and re-subscribes by itself after a lost connection.
    """

    def __init__(
        self,
        settings: ServerSettings,
        engine: Engine,
        *,
        batch_max: int = BATCH_MAX,
        batch_wait_s: float = BATCH_WAIT_S,
        queue_max: int = QUEUE_MAX,
        desired: DesiredService | None = None,
    ) -> None:
        self._settings = settings
        self._client = self._build_client()
        # a device refused for who it is (revoked, its signature) is told so, signed, rate-bounded
        notices = for_ingest(settings, self._publish_notice)
        self._desired = desired if desired is not None else self._desired_service(settings)
        self._processor = IngestProcessor(
            engine,
            bounds=TimeBounds.from_settings(settings),
            on_sender_refused=notices.sender_refused if notices is not None else None,
            desired=self._desired,
        )
        self._batch_max = batch_max
        self._batch_wait_s = batch_wait_s
        self._queue: queue.Queue[Item] = queue.Queue(maxsize=queue_max)
        self._topic = (
            topics.INGEST_SHARED_SUBSCRIPTION
            if settings.shared_subscription
            else topics.UP_WILDCARD
        )
        self._lock = threading.Lock()
        self._generation = 0
        self._subscribed = threading.Event()
        self._refused: str | None = None
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._work, name="resonera-ingest", daemon=True)
        self._extra = {"overflow": 0, "store_errors": 0, "acks_sent": 0}

    # -- public -------------------------------------------------------------------------------

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def counters(self) -> dict[str, int]:
        """received, stored, duplicates, quarantined, overflow, store_errors, acks_sent."""
        return {**self._processor.counters, **self._extra}

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Connect, subscribe, start the worker; raise ``BrokerUnavailable`` with one clear line."""
        mqtt = self._settings.mqtt
        connect(
            self._client,
            mqtt,
            clean_start=True,
            session_expiry_s=SESSION_EXPIRY_S,
            receive_maximum=min(RECEIVE_MAXIMUM, self._queue.maxsize),
        )
        self._client.loop_start()
        if not self._subscribed.wait(timeout_s) or self._refused is not None:
            self._client.disconnect()
            stop_loop(self._client)
            raise BrokerUnavailable(
                self._refused
                or f"MQTT broker at {mqtt.host}:{mqtt.port} did not confirm the ingest "
                f"subscription within {timeout_s:.0f} s"
            )
        self._worker.start()
        log.info(
            "ingest consumer %s subscribed to %s", self._settings.ingest_client_id, self._topic
        )

    def stop(self) -> None:
        """Stop taking messages, store and acknowledge those already received, disconnect."""
        if self._stopping.is_set():
            return
        if self._client.is_connected():
            self._client.unsubscribe(self._topic)
        self._stopping.set()
        if self._worker.is_alive():
            self._worker.join()
        # DISCONNECT is queued behind the ack publishes, so the broker gets those first.
        self._client.disconnect()
        stop_loop(self._client)

    # -- paho callbacks (network thread: never block here) -----------------------------------

    def _desired_service(self, settings: ServerSettings) -> DesiredService | None:
        """Signs and publishes the documents agent-update reports re-issue (a rollout paused, a
        device that failed), with the desired state's key file; None without one (a demo
        server's throwaway key is its API process's own, which the runner passes as
        ``desired`` when both run in one process: devices would refuse another key)."""
        key_file = settings.desired_signing_key_file
        if key_file is None:
            return None
        return DesiredService(Ed25519Signer.from_file(key_file), _ConsumerPublisher(self))

    def _publish_notice(self, device_id: str, payload: bytes) -> None:
        """A notice in place of the device's retained desired state (``server/notices.py``)."""
        self._client.publish(topics.desired(device_id), payload, qos=1, retain=True)

    def _build_client(self) -> paho.Client:
        # A consumer must not leave a session queueing every device's messages after it is gone.
        client = build_client(
            self._settings.mqtt, self._settings.ingest_client_id, persistent_session=False
        )
        # The same client, configured as everywhere else, reading its socket 64 KiB at a time.
        client = read_ahead(client)
        client.manual_ack_set(True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _on_connect(
        self, client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure:
            self._refused = (
                f"MQTT broker at {self._settings.mqtt.host}:{self._settings.mqtt.port} "
                f"refused the connection: {reason}"
            )
            log.error("%s", self._refused)
            self._subscribed.set()
            return
        with self._lock:
            self._generation += 1
        # Presence is retained and not shared: every consumer keeps device_state.online current.
        if self._settings.mqtt.protocol == "5":
            client.subscribe([(t, SubscribeOptions(qos=1)) for t in (self._topic, STATUS_WILDCARD)])
        else:
            client.subscribe([(self._topic, 1), (STATUS_WILDCARD, 1)])
        log.info("connected to the MQTT broker; subscribing %s", self._topic)

    def _on_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if not self._stopping.is_set():
            log.warning("lost the MQTT broker (%s); reconnecting", reason)

    def _on_subscribe(
        self,
        _client: paho.Client,
        _userdata: Any,
        _mid: int,
        reasons: list[ReasonCode],
        _props: Any,
    ) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            hint = (
                " (a broker without shared subscriptions needs shared_subscription = false)"
                if self._settings.shared_subscription
                else ""
            )
            self._refused = (
                f"the MQTT broker refused the subscription {self._topic}: {failed[0]}{hint}"
            )
            log.error("%s", self._refused)
        self._subscribed.set()

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            generation = self._generation
        item = Item(generation, msg.mid, msg.qos, Received(msg.topic, bytes(msg.payload)))
        try:
            # Waiting here stops paho reading the socket: TCP pushes back on the broker. The
            # broker should never get that far ahead (receive maximum), but was seen to.
            self._queue.put(item, timeout=0 if self._stopping.is_set() else QUEUE_WAIT_S)
        except queue.Full:
            # Not acknowledged, so not lost: the device resends what we never ack.
            self._extra["overflow"] += 1
            log.warning(
                "ingest queue full (%d); dropped a message unacknowledged", self._queue.maxsize
            )

    # -- worker thread ------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            batch = take_batch(
                self._queue, first, max_items=self._batch_max, max_wait_s=self._batch_wait_s
            )
            try:
                self._handle(batch)
            except Exception:  # a bug must not stop ingest; the batch stays unacknowledged
                log.exception("ingest worker failed on a batch of %d messages", len(batch))

    def _handle(self, batch: list[Item]) -> None:
        result = self._store(batch)
        if result is None:
            return
        with self._lock:
            generation = self._generation
        # Subscribed at QoS 1: deliveries are QoS 0 (nothing to acknowledge) or 1.
        mids = [item.mid for item in batch if item.qos == 1 and item.generation == generation]
        # The application acks first, then the PUBACKs (paho writes its queue in order).
        self._send_acks(result)
        for mid in mids:
            self._client.ack(mid, 1)
        # Documents the batch re-issued (committed with it), retained: a lost one is published
        # again by the API's republish at its start.
        if self._desired is not None:
            self._desired.publish(result.outgoing)

    def _store(self, batch: list[Item]) -> BatchResult | None:
        """Commit ``batch``, retrying while the database fails; None if stopped meanwhile."""
        delay = RETRY_MIN_S
        while True:
            try:
                return self._processor.process(item.message for item in batch)
            except StoreError as exc:
                self._extra["store_errors"] += 1
                metrics.INGEST_STORE_ERRORS.inc()
                log.error("%s; retrying in %.1f s", exc, delay)
            if self._stopping.wait(delay):
                log.warning(
                    "stopping with %d messages not stored (devices will resend)", len(batch)
                )
                return None
            delay = min(delay * 2, RETRY_MAX_S)

    def _send_acks(self, result: BatchResult) -> None:
        for device_id, ids in result.committed.items():
            for start in range(0, len(ids), MAX_ACK_IDS):
                payload = Ack.of(ids[start : start + MAX_ACK_IDS]).to_bytes()
                self._client.publish(topics.ack(device_id), payload, qos=1)
                self._extra["acks_sent"] += 1


class _ConsumerPublisher:
    """``DesiredPublisher`` over the consumer's own connection, retained like every document."""

    def __init__(self, consumer: IngestConsumer) -> None:
        self._consumer = consumer

    def publish(self, device_id: str, payload: bytes) -> None:
        self._consumer._publish_notice(device_id, payload)

    def connected(self) -> bool:
        return self._consumer.connected

    def close(self) -> None:
        pass
