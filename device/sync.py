"""Offline-first sync of the outbox over MQTT (paho-mqtt 2.x).

The device publishes queued envelopes at QoS 1 and deletes them only when the server's application ack
(on its ``ack`` topic) names them. After every (re)connect it subscribes again to the exact ``ack`` and
``desired`` topics, so the retained desired state is taken afresh even from a broker that lost the
session; each document goes to the ``DesiredStateApplier`` (verify, apply or defer, report). A broker
that is away is not an error for the device: records wait in the outbox and paho keeps reconnecting.
Callbacks from paho's thread only touch the store (its own short transactions) and the scheduler
under a lock; nothing here runs in the audio path.

Two ways to run it, with the same callbacks, scheduler, resend and cursor logic:

- **Threaded** (the device agent): ``start`` connects, runs paho's network thread (which
  reconnects on its own) and a worker thread that publishes what is due; ``stop`` ends both.
- **Driven** (a host running many devices on one loop, ``resonera fleet-sim``): the paho client
  comes from ``client_factory``, and the host drives its network (paho's external-loop API) and
  its reconnects (``connect``, told by ``on_connection_lost``). It calls ``pump`` when
  ``on_wake`` says the worker would wake, or when the delay ``pump`` returned has passed, never
  twice at once; ``dispatch`` moves the store work of acks and desired states off its network
  thread; ``close`` ends it.

Shut out (``shut_out``, ``docs/shut-out.md``): the broker's TLS alert (a revoked or expired
certificate; paho only logs it, so ``on_log`` catches it), the device's own certificate past its end
(checked at start and before each attempt), or the server's signed notice on the desired-state topic
(``common.desired.verify_notice``) sets it, says it once in words, and keeps it in the store's meta
across restarts. Meanwhile the outbox is kept and nothing is sent blindly: a refused connection is
not retried by paho but tried again once every ``shut_out.RETRY_S`` (and at once with a new
certificate, ``reconnect``); connected, one message is sent as often (the server acknowledging it
lets the device back in, and publishing resumes). Driven, the host is told of a lost connection as
before, and ``connect`` refuses (``BrokerUnavailable``) until ``retry_in`` has passed.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from resonera.common import mqtt_client, topics
from resonera.common.desired import NoticeRejected, is_notice, verify_notice
from resonera.common.envelope import decode_ack
from resonera.common.errors import ProtocolError
from resonera.common.mqtt_client import BrokerUnavailable, build_client, stop_loop
from resonera.common.settings import MqttSettings
from resonera.device import shut_out as shut_outs
from resonera.device.desired_state import DesiredStateApplier
from resonera.device.outbox import OutboxScheduler
from resonera.device.settings import DeviceSettings
from resonera.device.shut_out import ShutOut
from resonera.device.store import DeviceStore

__all__ = ["ClientFactory", "DeviceSync", "ShutOut"]

log = logging.getLogger(__name__)

#: With nothing in flight, the outbox is looked at this often (records queued by other processes).
IDLE_POLL_S = 5.0
#: The shortest wait before the outbox is looked at again (a resend just due, a hold-off ending).
MIN_WAIT_S = 0.02
#: How paho logs a failed read (the TLS alert of a refused certificate among them).
_READ_FAILED = "failed to receive on socket: "
#: MQTT's reason code "Unspecified error", paho's for a connection lost without one.
_UNSPECIFIED = 0x80


class ClientFactory(Protocol):
    """Makes the paho client a ``DeviceSync`` talks through: configured, not connected
    (``build_client``, the default, has the signature). The sync registers its own callbacks on
    it (connect, disconnect, ack, desired); a host that drives clients on its own loop attaches
    the client there (its socket callbacks) before returning it."""

    def __call__(
        self, settings: MqttSettings, client_id: str, *, will: tuple[str, bytes] | None = None
    ) -> paho.Client: ...


class DeviceSync:
    """Owns the device's MQTT connection. Threaded: ``start``, then ``drain`` or leave running;
    ``stop``. Driven: ``connect``, ``pump``, ``close`` (see the module's docstring)."""

    def __init__(
        self,
        settings: DeviceSettings,
        store: DeviceStore,
        clock: Callable[[], float] = time.monotonic,
        *,
        desired: DesiredStateApplier | None = None,
        client_factory: ClientFactory = build_client,
        on_wake: Callable[[], None] | None = None,
        on_acked: Callable[[Sequence[str]], None] | None = None,
        on_connection_lost: Callable[[], None] | None = None,
        dispatch: Callable[[Callable[[], None]], object] | None = None,
        dispatch_desired: Callable[[Callable[[], None]], object] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``desired``: who takes desired-state documents; by default one that applies them at
        once (no session runs while only syncing).

        For a host that drives the sync (all optional; called from the network thread unless
        said otherwise): ``client_factory`` makes its paho clients (at construction and on
        ``reconnect``); ``on_wake``: the worker would wake now (something queued, an ack, a
        connection): call ``pump`` soon; it must not block. ``on_acked``: the ids of a server
        ack, once the store has deleted them (where ``dispatch`` runs it). ``on_connection_lost``:
        the connection dropped (not by ``close`` or ``reconnect``): connect again.
        ``dispatch``: runs the store work of an ack or a desired state (default: at once, on
        the network thread). ``dispatch_desired``: runs the taking of a desired state instead,
        in the order they come (the device service: a thread of its own, since fetching a
        prescribed program's background file may take longer than the broker's keepalive).
        ``wall_clock``: the time of day, for certificates, notices and ``ShutOut.since``
        (``clock`` spaces the retries)."""
        self.settings = settings
        self.store = store
        self.clock = clock
        self.device_id = settings.device_id
        self.last_error: str | None = None
        self.wall_clock = wall_clock
        #: Set when the device learns it is shut out (a signed notice, a TLS alert, its certificate
        #: past its end); None otherwise. Kept in the store across restarts.
        self.shut_out: ShutOut | None = shut_outs.load(store)
        #: CONNECT packets sent (the device's own attempts and paho's reconnects).
        self.connect_attempts = 0
        #: How often the worker looked at a connection held while shut out (tests wait on it).
        self.held_checks = 0
        #: Shut out: when (``clock``) the next attempt is due; the first comes at once.
        self._retry_at = 0.0
        #: Threaded, shut out by the broker: paho's loop is stopped and attempts are ours.
        self._held = False
        #: The shut-out paho's log named for the connection it is losing (the TLS alert).
        self._alert: str | None = None
        #: What paho's last failed read said (its disconnect says only "Unspecified error").
        self._read_error: str | None = None
        self._refused_notice: bytes | None = None
        #: Wall-clock time of the last application ack (None: none since start).
        self.last_ack: float | None = None
        self.desired = desired or DesiredStateApplier.for_settings(settings, store)
        self._client_factory = client_factory
        self._on_wake = on_wake
        self._on_acked = on_acked
        self._on_connection_lost = on_connection_lost
        self._dispatch = dispatch
        self._dispatch_desired = dispatch_desired or dispatch
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
        #: Held by a publishing step: one at a time, and none once ``close`` has it.
        self._pumping = threading.Lock()
        #: Driven: until then (``clock``) ``pump`` publishes nothing, as the worker sleeps after
        #: a batch (the rate limiter refills) or a failure.
        self._resting_until = 0.0
        #: True once ``start`` ran paho's network thread (threaded); False: the host drives it.
        self._threaded = False
        #: Highest seq published since the last connect; reset (by the publisher) after a reconnect.
        self._cursor = -1
        self._cursor_reset = False
        #: True while ``reconnect`` drops the connection on purpose.
        self._switching = False
        self._reconnecting = threading.Lock()
        self._client = self._new_client(settings.mqtt)
        self._check_certificate(at_start=True)

    def _new_client(self, mqtt: MqttSettings) -> paho.Client:
        client = self._client_factory(
            mqtt, self.device_id, will=(topics.status(self.device_id), b"offline")
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_log = self._on_log
        client.message_callback_add(topics.ack(self.device_id), self._on_ack)
        client.message_callback_add(topics.desired(self.device_id), self._on_desired)
        return client

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect if the broker is there; otherwise keep trying in the background."""
        self._threaded = True
        self._connect()
        self._worker = threading.Thread(target=self._publish_loop, name="outbox", daemon=True)
        self._worker.start()

    def _connect(self) -> None:
        if not self._threaded:
            self.connect()
            return
        if self._check_certificate():
            self._hold()  # no attempt with a certificate past its end: tried again later
            return
        expiry = self.settings.sync.session_expiry_s
        self._held = False
        try:
            mqtt_client.connect(
                self._client, self.settings.mqtt, clean_start=False, session_expiry_s=expiry
            )
        except BrokerUnavailable as exc:
            self.last_error = str(exc)
            kind = shut_outs.tls_alert_kind(str(exc))
            if kind is not None:  # the handshake itself failed (TLS 1.2): no retrying blindly
                self._learn_from_broker(kind)
                self._hold()
                return
            log.warning("%s; records wait in the outbox and sync when it is back", exc)
            mqtt_client.connect_in_background(
                self._client, self.settings.mqtt, clean_start=False, session_expiry_s=expiry
            )
        self._client.loop_start()

    def connect(self) -> None:
        """Driven: one connection attempt (blocking for TCP and TLS), resuming the persistent
        session. Raises ``BrokerUnavailable`` (``last_error`` says why); nothing retries on its
        own here: the host tries again later, and ``on_connection_lost`` tells it when an
        established connection is gone. (Threaded, ``start`` does this and paho retries.)
        Shut out by the broker, it makes no attempt before ``retry_in`` has passed (raises)."""
        if self._threaded:
            raise RuntimeError("connect() is for a driven sync; this one was started")
        if self._check_certificate():
            assert self.shut_out is not None
            self.last_error = self.shut_out.reason
            raise BrokerUnavailable(self.shut_out.reason)
        if self._held and self.shut_out is not None:
            wait = self.retry_in() or 0.0
            if wait > 0:
                raise BrokerUnavailable(
                    f"shut out ({self.shut_out.kind}): the next attempt is due in {wait:.0f} s"
                )
        self._held = False
        try:
            mqtt_client.connect(
                self._client,
                self.settings.mqtt,
                clean_start=False,
                session_expiry_s=self.settings.sync.session_expiry_s,
            )
        except BrokerUnavailable as exc:
            self.last_error = str(exc)
            kind = shut_outs.tls_alert_kind(str(exc))
            if kind is not None:
                self._learn_from_broker(kind)
                self._held = True
            raise

    def reconnect(self, mqtt: MqttSettings) -> None:
        """Connect again with ``mqtt`` (a renewed certificate): a clean disconnect (no will, so
        the device is not shown offline), then a new client resuming the persistent session, so
        the broker keeps what it queued for us. What was published but not acknowledged stays in
        the outbox and is sent again; the server drops the duplicates by message id. Meant for
        a renewal: what was queued before it verifies with the earlier key. Driven, the new client comes from
        ``client_factory`` and gets one attempt (``connect``: it may raise)."""
        with self._reconnecting:
            old = self._client
            self._connected.clear()
            self._switching = True
            try:
                old.disconnect()
                if self._threaded:
                    stop_loop(old)
            finally:
                self._switching = False
            self.settings = self.settings.model_copy(update={"mqtt": mqtt})
            self._new_certificate()
            self._client = self._new_client(mqtt)
            self._connect()
        log.info("reconnecting to the MQTT broker with the renewed certificate")

    def stop(self) -> None:
        """Stop (threaded or driven): ``close`` with the goodbye."""
        self.close(goodbye=True)

    def close(self, *, goodbye: bool = True) -> None:
        """Stop publishing and disconnect cleanly (no last will; a drop after this is not a lost
        connection to warn about). ``goodbye``: first say ``offline`` (retained, on ``status``,
        waiting up to 2 s for the broker to take it) if connected. Waits for a publishing step
        in progress; ``pump`` does nothing afterwards."""
        self._stopping.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=5)
        with self._pumping:
            if goodbye and self._connected.is_set():
                info = self._client.publish(
                    topics.status(self.device_id), b"offline", qos=1, retain=True
                )
                info.wait_for_publish(timeout=2)
            with self._reconnecting:
                self._client.disconnect()
                if self._threaded:
                    stop_loop(self._client)

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
        self._notify()
        with self._acked:
            while self.store.outbox_depth() > 0:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    return False
                self._acked.wait(timeout=min(remaining, 0.25))
        return True

    def _notify(self) -> None:
        """Wake the worker (threaded), or tell the host to pump (driven)."""
        self._wake.set()
        if self._on_wake is not None:
            self._on_wake()

    def _run(
        self,
        work: Callable[[], None],
        dispatch: Callable[[Callable[[], None]], object] | None,
    ) -> None:
        if dispatch is None:
            work()
        else:
            dispatch(work)

    # --- paho callbacks (network thread) ---------------------------------------------------------

    def _on_connect(
        self, client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            log.error("%s", self.last_error)
            return
        self.last_error = None
        self._alert = None
        # Subscribing again on every connect is harmless and covers a broker that lost our session.
        # The exact desired topic (never a wildcard), every time: the broker then sends its
        # retained copy again, so the device never relies on having seen every change.
        client.subscribe([(topics.ack(self.device_id), 1), (topics.desired(self.device_id), 1)])
        client.publish(topics.status(self.device_id), b"online", qos=1, retain=True)
        with self._lock:
            self._scheduler.connection_lost(self.clock())
            self._cursor_reset = True
        self._connected.set()
        self._notify()
        log.info("connected to MQTT broker %s:%s", self.settings.mqtt.host, self.settings.mqtt.port)

    def _on_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        self._connected.clear()
        alert, self._alert = self._alert, None
        read_error, self._read_error = self._read_error, None
        if alert is not None and not self._stopping.is_set():
            kind = shut_outs.tls_alert_kind(alert)
            assert kind is not None
            self.last_error = f"the broker refused this device's certificate: {alert}"
            self._learn_from_broker(kind)
            if self._threaded:
                # paho would retry within seconds, for ever: the worker stops its loop, and
                # tries again once per RETRY_S (``_retry``)
                _client.reconnect_delay_set(int(shut_outs.RETRY_S), int(shut_outs.RETRY_S))
                self._hold()
            else:
                self._held = True  # ``connect`` refuses until ``retry_in`` has passed
                if self._on_connection_lost is not None:
                    self._on_connection_lost()
            return
        if not self._stopping.is_set() and not self._switching:
            said = read_error if read_error and reason.value == _UNSPECIFIED else reason
            log.warning("disconnected from MQTT broker (%s); will reconnect", said)
            if self._on_connection_lost is not None:
                self._on_connection_lost()

    def _on_log(self, _client: paho.Client, _userdata: Any, level: int, text: str) -> None:
        # With TLS 1.3 the broker's alert on this device's certificate arrives after paho's
        # connect returned, as a read error paho logs; its disconnect says "Unspecified error".
        if text.startswith("Sending CONNECT"):
            self.connect_attempts += 1
        elif level == paho.MQTT_LOG_ERR and text.startswith(_READ_FAILED):
            error = text.removeprefix(_READ_FAILED)
            self._read_error = error
            if shut_outs.tls_alert_kind(error) is not None:
                self._alert = error

    def _on_connect_fail(self, _client: paho.Client, _userdata: Any) -> None:
        if self.last_error is None:  # keep the more precise reason from the first attempt
            mqtt = self.settings.mqtt
            self.last_error = f"cannot reach MQTT broker at {mqtt.host}:{mqtt.port}"

    def _on_ack(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        topic, payload = message.topic, bytes(message.payload)
        self._run(lambda: self._take_ack(topic, payload), self._dispatch)

    def _take_ack(self, topic: str, payload: bytes) -> None:
        try:
            ack = decode_ack(payload)
        except ProtocolError as exc:
            log.warning("ignoring ack on %s: %s", topic, exc)
            return
        deleted = self.store.acknowledge(ack.ids)
        self.last_ack = self.wall_clock()
        if self.shut_out is not None:
            self._let_back_in("the server acknowledges its messages again")
        with self._lock:
            self._scheduler.acknowledged(ack.ids)
        log.debug("server committed %d message(s), %d deleted from outbox", len(ack.ids), deleted)
        with self._acked:
            self._acked.notify_all()
        if self._on_acked is not None:
            self._on_acked(ack.ids)
        self._notify()

    def _on_desired(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        payload = bytes(message.payload)
        if not payload:
            return  # a cleared retained message: nothing to take
        if is_notice(payload):
            self._run(lambda: self._take_notice(payload), self._dispatch)
            return
        self._run(lambda: self._take_desired(payload), self._dispatch_desired)

    def _take_notice(self, payload: bytes) -> None:
        pinned = self.desired.pinned
        if pinned is None:
            log.warning("a notice from the server is not taken: no server key is pinned")
            return
        try:
            notice = verify_notice(
                payload,
                device_id=self.device_id,
                pinned=pinned,
                held=shut_outs.notice_held(self.store),
            )
        except NoticeRejected as exc:
            # the same retained copy comes back after every reconnect: say it once
            if payload != self._refused_notice:
                self._refused_notice = payload
                log.info("a notice on the desired-state topic is not taken: %s", exc)
            return
        shut_outs.hold_notices_until(self.store, notice.issued_at)
        self._learn(ShutOut(notice.notice, notice.reason, self.wall_clock(), self._certificate()))

    def _take_desired(self, payload: bytes) -> None:
        try:
            result = self.desired.handle(payload)
        except Exception:  # never let a document kill the network thread
            log.exception("handling the desired state failed")
            return
        log.info("desired state %s: %s %s", result.version, result.outcome, result.reason)
        self._notify()  # the report waits in the outbox

    # --- publishing (worker thread, or the host's pump) -----------------------------------------

    def kick(self) -> None:
        """Something was queued: look at the outbox now rather than at the next poll."""
        self._notify()

    def pump(self) -> float | None:
        """Driven: one publishing step, what the worker thread runs when it wakes: a batch of
        what is due (overdue resends first, then messages not sent since the connect). Returns
        the seconds after which to pump again at the latest (the rest after a batch, while the
        rate limiter refills, as the worker sleeps; a resend; the end of the reconnect
        hold-off), or None: nothing is scheduled, pump again on ``on_wake`` (a host whose
        devices' records are queued by other processes polls too, as the worker does every
        ``IDLE_POLL_S``). Woken during the rest, it publishes nothing and returns what is left
        of it. Never call it twice at once."""
        if self._threaded:
            raise RuntimeError("pump() is for a driven sync; this one runs its own worker")
        with self._pumping:
            self._wake.clear()
            if self._stopping.is_set() or not self._connected.is_set():
                return None  # connecting wakes the host again
            now = self.clock()
            if now < self._resting_until:
                # The worker would still be sleeping after its last batch (or failure), and take
                # what woke it afterwards: publishing now would find the rate limiter empty.
                return self._resting_until - now
            try:
                rest = self._publish_step() / self.settings.sync.max_messages_per_s
            except Exception:  # as the worker: the outbox keeps the records
                log.exception("outbox publishing failed; will retry")
                rest = 1.0
            if rest:
                self._resting_until = self.clock() + rest
                return rest
            next_due = self._next_due()
            return None if next_due is None else max(next_due, MIN_WAIT_S)

    def _next_due(self) -> float | None:
        """Seconds until something is due to publish (shut out: the next probe)."""
        if self.shut_out is not None:
            return self.retry_in()
        with self._lock:
            return self._scheduler.next_due_in(self.clock())

    def _publish_loop(self) -> None:
        while not self._stopping.is_set():
            next_due = self._next_due()
            # Idle, the loop sleeps until a resend is due, something is queued (kick), an ack
            # or a connection arrives, or the poll comes round (records queued by another process).
            timeout = (
                IDLE_POLL_S if next_due is None else min(max(next_due, MIN_WAIT_S), IDLE_POLL_S)
            )
            self._wake.wait(timeout=timeout)
            self._wake.clear()
            if self._stopping.is_set():
                continue
            if self._held:
                self._retry()
                continue
            if not self._connected.is_set():
                continue
            try:
                sent = self._publish_step()
                if sent:
                    self._wake.set()  # more may be due once the rate limiter refills
                    self._stopping.wait(sent / self.settings.sync.max_messages_per_s)
            except Exception:  # the loop must survive anything; the outbox keeps the records
                log.exception("outbox publishing failed; will retry")
                self._stopping.wait(1.0)

    def _publish_step(self) -> int:
        """One batch: overdue resends first, then messages not sent since the connect (by seq).
        Returns how many were published. Shut out, one message per ``RETRY_S`` (``_probe``)."""
        if self.shut_out is not None:
            return self._probe()
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
            return 0
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
        return len(due)

    # --- shut out -------------------------------------------------------------------------------

    def _certificate(self) -> str:
        return shut_outs.certificate_id(self.settings.mqtt.cert_file)

    def _check_certificate(self, *, at_start: bool = False) -> bool:
        """Before an attempt (and at start): True when the certificate is past its end (learnt
        as ``expired``). At start, a shut-out learnt with another certificate than the one
        installed now is over: the device tries as the new identity."""
        if at_start and self._learnt_with_another_certificate():
            self._let_back_in("a new certificate is installed")
        found = shut_outs.expired(self.settings.mqtt.cert_file, self.wall_clock())
        if found is None:
            return False
        self._learn(found)
        return True

    def _new_certificate(self) -> None:
        if self._learnt_with_another_certificate():
            self._let_back_in("a new certificate is installed")
        self._retry_at = 0.0

    def _learnt_with_another_certificate(self) -> bool:
        """Revoked or expired, learnt with a certificate that is no longer the one installed."""
        found = self.shut_out
        return (
            found is not None
            and found.kind != "quarantined"
            and bool(found.certificate)
            and found.certificate != self._certificate()
        )

    def _learn_from_broker(self, kind: shut_outs.ShutOutKind) -> None:
        reason = (
            shut_outs.REVOKED_BY_BROKER
            if kind == "revoked"
            else shut_outs.EXPIRED.format(date="its end date")
        )
        if kind == "expired":
            own = shut_outs.expired(self.settings.mqtt.cert_file, self.wall_clock())
            reason = own.reason if own is not None else reason
        self._learn(ShutOut(kind, reason, self.wall_clock(), self._certificate()))

    def _learn(self, found: ShutOut) -> None:
        """Shut out: kept, said once in words, and the next attempt an hour away."""
        with self._lock:
            self._retry_at = self.clock() + shut_outs.RETRY_S
            before = self.shut_out
            if before is not None and before.kind == found.kind:
                return  # known: said once already
            self.shut_out = found
        shut_outs.save(self.store, found)
        log.warning(
            "shut out (%s): %s Records stay in the outbox (%d waiting); trying again once an hour",
            found.kind,
            found.reason,
            self.store.outbox_depth(),
        )

    def _let_back_in(self, why: str) -> None:
        with self._lock:
            if self.shut_out is None:
                return
            self.shut_out = None
            self._retry_at = 0.0
        shut_outs.save(self.store, None)
        # a notice issued before now is stale: a retained one read again must not shut us out
        shut_outs.hold_notices_until(self.store, shut_outs.wall_datetime(self.wall_clock()))
        log.warning("no longer shut out: %s; the outbox syncs again", why)
        self._notify()

    def _hold(self) -> None:
        self._held = True
        self._notify()

    def retry_in(self) -> float | None:
        """Shut out: the seconds (``clock``) until the next attempt; None when not shut out."""
        if self.shut_out is None:
            return None
        return max(0.0, self._retry_at - self.clock())

    def _retry(self) -> None:
        """Threaded, held: stop paho's own reconnecting; when due, one attempt (a new client)."""
        with self._reconnecting:
            if self._stopping.is_set() or not self._held:
                return
            self._client.disconnect()
            stop_loop(self._client)
            self.held_checks += 1
            if self.clock() < self._retry_at:
                return
            self._retry_at = self.clock() + shut_outs.RETRY_S
            log.info("shut out: trying to connect again")
            self._client = self._new_client(self.settings.mqtt)
            self._connect()

    def _probe(self) -> int:
        """Connected while shut out: one message (the oldest) per ``RETRY_S``, no more: its ack
        lets the device back in; a refusal costs the server one quarantined copy an hour."""
        now = self.clock()
        with self._lock:
            if now < self._retry_at:
                return 0
            self._retry_at = now + shut_outs.RETRY_S
        oldest = self.store.pending(limit=1)
        for message in oldest:
            self._client.publish(message.topic, message.payload, qos=1)
        return len(oldest)
