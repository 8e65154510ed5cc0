"""Offline-first sync of the outbox over MQTT (paho-mqtt 2.x).

The device publishes queued envelopes at QoS 1 and deletes them only when the server's application ack
(on its ``ack`` topic) names them. After every (re)connect it subscribes again to the exact ``ack`` and
``desired`` topics, so the retained desired state is taken afresh even from a broker that lost the
session; each document goes to the ``DesiredStateApplier`` (verify, apply or defer, report). A broker
that is away is not an error for the device: records wait in the outbox and paho keeps reconnecting.
Callbacks from paho's thread only touch the store (its own short transactions) and the scheduler
under a lock; nothing here runs in the audio path.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from resonera.common import topics
from resonera.common.envelope import decode_ack
from resonera.common.errors import ProtocolError
from resonera.common.mqtt_client import (
    BrokerUnavailable,
    build_client,
    connect,
    connect_in_background,
)
from resonera.common.settings import MqttSettings
from resonera.device.desired_state import DesiredStateApplier
from resonera.device.outbox import OutboxScheduler
from resonera.device.settings import DeviceSettings
from resonera.device.store import DeviceStore

log = logging.getLogger(__name__)

#: With nothing in flight, the outbox is looked at this often (records queued by other processes).
IDLE_POLL_S = 5.0


class DeviceSync:
    """Owns the device's MQTT connection. ``start``, then ``drain`` or leave running; ``stop``."""

    def __init__(
        self,
        settings: DeviceSettings,
        store: DeviceStore,
        clock: Callable[[], float] = time.monotonic,
        *,
        desired: DesiredStateApplier | None = None,
    ) -> None:
        """``desired``: who takes desired-state documents; by default one that applies them at
        once (no session runs while only syncing)."""
        self.settings = settings
        self.store = store
        self.clock = clock
        self.device_id = settings.device_id
        self.last_error: str | None = None
        #: Wall-clock time of the last application ack (None: none since start).
        self.last_ack: float | None = None
        self.desired = desired or DesiredStateApplier(
            store, settings.device_id, settings.pinned_server_key(), settings.profile
        )
        self._scheduler = OutboxScheduler(
            resend_after_s=settings.sync.resend_after_s,
            max_messages_per_s=settings.sync.max_messages_per_s,
            burst=settings.sync.batch_size,
            max_resend_after_s=settings.sync.max_resend_after_s,
            reconnect_jitter_s=settings.sync.reconnect_jitter_s,
            rng=random.random,
        )
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._acked = threading.Condition()
        self._worker: threading.Thread | None = None
        #: Highest seq published since the last connect; reset (by the worker) after a reconnect.
        self._cursor = -1
        self._cursor_reset = False
        #: True while ``reconnect`` drops the connection on purpose.
        self._switching = False
        self._reconnecting = threading.Lock()
        self._client = self._new_client(settings.mqtt)

    def _new_client(self, mqtt: MqttSettings) -> paho.Client:
        client = build_client(
            mqtt, client_id=self.device_id, will=(topics.status(self.device_id), b"offline")
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.message_callback_add(topics.ack(self.device_id), self._on_ack)
        client.message_callback_add(topics.desired(self.device_id), self._on_desired)
        return client

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect if the broker is there; otherwise keep trying in the background."""
        self._connect()
        self._worker = threading.Thread(target=self._publish_loop, name="outbox", daemon=True)
        self._worker.start()

    def _connect(self) -> None:
        expiry = self.settings.sync.session_expiry_s
        try:
            connect(self._client, self.settings.mqtt, clean_start=False, session_expiry_s=expiry)
        except BrokerUnavailable as exc:
            self.last_error = str(exc)
            log.warning("%s; records wait in the outbox and sync when it is back", exc)
            connect_in_background(
                self._client, self.settings.mqtt, clean_start=False, session_expiry_s=expiry
            )
        self._client.loop_start()

    def reconnect(self, mqtt: MqttSettings) -> None:
        """Connect again with ``mqtt`` (a renewed certificate): a clean disconnect (no will, so
        the device is not shown offline), then a new client resuming the persistent session, so
        the broker keeps what it queued for us. What was published but not acknowledged stays in
        the outbox and is sent again; the server drops the duplicates by message id. Meant for
        a quiet moment (renewal waits for an empty outbox)."""
        with self._reconnecting:
            old = self._client
            self._connected.clear()
            self._switching = True
            try:
                old.disconnect()
                old.loop_stop()
            finally:
                self._switching = False
            self.settings = self.settings.model_copy(update={"mqtt": mqtt})
            self._client = self._new_client(mqtt)
            self._connect()
        log.info("reconnecting to the MQTT broker with the renewed certificate")

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=5)
        if self._connected.is_set():
            info = self._client.publish(
                topics.status(self.device_id), b"offline", qos=1, retain=True
            )
            info.wait_for_publish(timeout=2)
        with self._reconnecting:
            self._client.disconnect()
            self._client.loop_stop()

    def __enter__(self) -> DeviceSync:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def drain(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty (every message acknowledged); False on timeout."""
        deadline = self.clock() + timeout_s
        self._wake.set()
        with self._acked:
            while self.store.outbox_depth() > 0:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    return False
                self._acked.wait(timeout=min(remaining, 0.25))
        return True

    # --- paho callbacks (network thread) ---------------------------------------------------------

    def _on_connect(
        self, client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            log.error("%s", self.last_error)
            return
        self.last_error = None
        # Subscribing again on every connect is harmless and covers a broker that lost our session.
        # The exact desired topic (never a wildcard), every time: the broker then sends its
        # retained copy again, so the device never relies on having seen every change.
        client.subscribe([(topics.ack(self.device_id), 1), (topics.desired(self.device_id), 1)])
        client.publish(topics.status(self.device_id), b"online", qos=1, retain=True)
        with self._lock:
            self._scheduler.connection_lost(self.clock())
            self._cursor_reset = True
        self._connected.set()
        self._wake.set()
        log.info("connected to MQTT broker %s:%s", self.settings.mqtt.host, self.settings.mqtt.port)

    def _on_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        self._connected.clear()
        if not self._stopping.is_set() and not self._switching:
            log.warning("disconnected from MQTT broker (%s); will reconnect", reason)

    def _on_connect_fail(self, _client: paho.Client, _userdata: Any) -> None:
        if self.last_error is None:  # keep the more precise reason from the first attempt
            mqtt = self.settings.mqtt
            self.last_error = f"cannot reach MQTT broker at {mqtt.host}:{mqtt.port}"

    def _on_ack(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            ack = decode_ack(bytes(message.payload))
        except ProtocolError as exc:
            log.warning("ignoring ack on %s: %s", message.topic, exc)
            return
        deleted = self.store.acknowledge(ack.ids)
        self.last_ack = time.time()
        with self._lock:
            self._scheduler.acknowledged(ack.ids)
        log.debug("server committed %d message(s), %d deleted from outbox", len(ack.ids), deleted)
        with self._acked:
            self._acked.notify_all()
        self._wake.set()

    def _on_desired(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        payload = bytes(message.payload)
        if not payload:
            return  # a cleared retained message: nothing to take
        try:
            result = self.desired.handle(payload)
        except Exception:  # never let a document kill the network thread
            log.exception("handling the desired state failed")
            return
        log.info("desired state %s: %s %s", result.version, result.outcome, result.reason)
        self._wake.set()  # the report waits in the outbox

    # --- publishing (worker thread) --------------------------------------------------------------

    def kick(self) -> None:
        """Something was queued: look at the outbox now rather than at the next poll."""
        self._wake.set()

    def _publish_loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                next_due = self._scheduler.next_due_in(self.clock())
            # Idle, the loop sleeps until a resend is due, something is queued (kick), an ack
            # or a connection arrives, or the poll comes round (records queued by another process).
            timeout = IDLE_POLL_S if next_due is None else min(max(next_due, 0.02), IDLE_POLL_S)
            self._wake.wait(timeout=timeout)
            self._wake.clear()
            if self._stopping.is_set() or not self._connected.is_set():
                continue
            try:
                self._publish_due()
            except Exception:  # the loop must survive anything; the outbox keeps the records
                log.exception("outbox publishing failed; will retry")
                self._stopping.wait(1.0)

    def _publish_due(self) -> None:
        """One batch: overdue resends first, then messages not sent since the connect (by seq)."""
        now = self.clock()
        batch = self.settings.sync.batch_size
        with self._lock:
            if self._cursor_reset:
                self._cursor, self._cursor_reset = -1, False
            overdue = self._scheduler.overdue(now, limit=batch)
        fresh = self.store.pending(limit=batch, after_seq=self._cursor)
        with self._lock:
            due = self._scheduler.due(overdue + [m.message_id for m in fresh], now)
        if not due:
            return
        chosen = set(due)
        messages = [m for m in fresh if m.message_id in chosen]
        known = {m.message_id for m in messages}
        resend = [i for i in due if i not in known]
        if resend:
            found = self.store.messages(resend)
            gone = set(resend) - {m.message_id for m in found}
            if gone:  # acked meanwhile, or thinned: forget them
                with self._lock:
                    self._scheduler.acknowledged(gone)
            messages.extend(found)
        for message in sorted(messages, key=lambda m: m.seq):
            self._client.publish(message.topic, message.payload, qos=1)
        if fresh:
            self._cursor = max(self._cursor, *(m.seq for m in fresh if m.message_id in chosen))
        self._wake.set()  # more may be due once the rate limiter refills
        self._stopping.wait(len(due) / self.settings.sync.max_messages_per_s)
