"""Offline-first sync of the outbox over MQTT (paho-mqtt 2.x).

The device publishes queued envelopes at QoS 1 and deletes them only when the server's application ack
(on its ``ack`` topic) names them. A broker that is away is not an error for the device: records wait
in the outbox and paho keeps reconnecting. Callbacks from paho's thread only touch the store (its own
short transactions) and the scheduler under a lock; nothing here runs in the audio path.
"""

from __future__ import annotations

import logging
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
from resonera.device.outbox import OutboxScheduler
from resonera.device.settings import DeviceSettings
from resonera.device.store import DeviceStore

log = logging.getLogger(__name__)


class DeviceSync:
    """Owns the device's MQTT connection. ``start``, then ``drain`` or leave running; ``stop``."""

    def __init__(
        self,
        settings: DeviceSettings,
        store: DeviceStore,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.device_id = settings.device_id
        self.last_error: str | None = None
        self._scheduler = OutboxScheduler(
            resend_after_s=settings.sync.resend_after_s,
            max_messages_per_s=settings.sync.max_messages_per_s,
            burst=settings.sync.batch_size,
        )
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._acked = threading.Condition()
        self._worker: threading.Thread | None = None
        self._client = build_client(
            settings.mqtt,
            client_id=self.device_id,
            will=(topics.status(self.device_id), b"offline"),
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.message_callback_add(topics.ack(self.device_id), self._on_ack)

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect if the broker is there; otherwise keep trying in the background."""
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
        self._worker = threading.Thread(target=self._publish_loop, name="outbox", daemon=True)
        self._worker.start()

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
        client.subscribe(topics.ack(self.device_id), qos=1)
        client.publish(topics.status(self.device_id), b"online", qos=1, retain=True)
        with self._lock:
            self._scheduler.connection_lost()
        self._connected.set()
        self._wake.set()
        log.info("connected to MQTT broker %s:%s", self.settings.mqtt.host, self.settings.mqtt.port)

    def _on_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        self._connected.clear()
        if not self._stopping.is_set():
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
        with self._lock:
            self._scheduler.acknowledged(ack.ids)
        log.debug("server committed %d message(s), %d deleted from outbox", len(ack.ids), deleted)
        with self._acked:
            self._acked.notify_all()
        self._wake.set()

    # --- publishing (worker thread) --------------------------------------------------------------

    def _publish_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(timeout=0.2)
            self._wake.clear()
            if self._stopping.is_set() or not self._connected.is_set():
                continue
            try:
                self._publish_due()
            except Exception:  # the loop must survive anything; the outbox keeps the records
                log.exception("outbox publishing failed; will retry")
                time.sleep(1.0)

    def _publish_due(self) -> None:
        pending = self.store.pending(limit=self.settings.sync.batch_size * 4)
        by_id = {entry.message_id: entry for entry in pending}
        with self._lock:
            due = self._scheduler.due([entry.message_id for entry in pending], self.clock())
        for message_id in due:
            entry = by_id[message_id]
            self._client.publish(entry.topic, entry.payload, qos=1)
        if due:
            self._wake.set()  # more may be due once the rate limiter refills
            time.sleep(1.0 / self.settings.sync.max_messages_per_s)
