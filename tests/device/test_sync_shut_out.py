"""A device that is shut out learns it, keeps its outbox, tries again seldom, and says why
(``docs/shut-out.md``): through a real mosquitto with mutual TLS and a CRL (the TLS alert, its
certificate's end) and a plain one carrying the server's signed notices."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from device_peer import Peer, ServerKey, device_settings
from enrolled_fleet import broker_admits
from fleet import PASSPHRASE, TlsBroker, run_tls_broker
from support import Mosquitto, wait_until

from resonera.common import topics
from resonera.common.desired import NoticeName
from resonera.common.envelope import Ack, decode_envelope
from resonera.common.mqtt_client import build_client, connect, stop_loop
from resonera.common.settings import MqttSettings
from resonera.device import shut_out
from resonera.device.cli_records import sync_outbox
from resonera.device.settings import DeviceSettings
from resonera.device.store import DeviceStore
from resonera.device.sync import DeviceSync
from resonera.server.crypto import Ed25519Signer
from resonera.server.notices import REVOKED_REASON, notice_payload

_ids = itertools.count()


class Clock:
    """The test's one monotonic clock, moved by hand: it spaces the device's retries."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TlsServer:
    """The server's identity on the TLS broker: acks every envelope (as ingest does after its
    commit), records the ids that came."""

    def __init__(self, settings: MqttSettings) -> None:
        self.received: list[str] = []
        self._lock = threading.Lock()
        self.client = build_client(settings, f"server-{next(_ids)}")
        self.client.on_message = self._on_message
        connect(self.client, settings, clean_start=True, session_expiry_s=0)
        self.client.subscribe(topics.UP_WILDCARD, qos=1)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        envelope = decode_envelope(bytes(message.payload))
        with self._lock:
            self.received.append(envelope.id)
        client.publish(topics.ack(envelope.device), Ack.of([envelope.id]).to_bytes(), qos=1)

    def close(self) -> None:
        stop_loop(self.client)
        self.client.disconnect()


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    with run_tls_broker(tmp_path / "tls") as broker:
        yield broker


def _queue(store: DeviceStore, device_id: str, count: int) -> list[str]:
    return [
        store.queue_message(device_id, "reported", {"desired_version": 0, "status": "applied"}).id
        for _ in range(count)
    ]


def _tls_device(tls: TlsBroker, tmp_path: Path, device_id: str, **issue: object) -> DeviceSettings:
    return device_settings(
        None, tmp_path / device_id, device_id, mqtt=tls.device(device_id, **issue)
    )


def test_a_revoked_certificate_is_learnt_from_the_tls_alert_and_tried_again_once_an_hour(
    tls_broker: TlsBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    device = f"revoked-{next(_ids)}"
    settings = _tls_device(tls_broker, tmp_path, device)
    store = settings.open_store()
    queued = _queue(store, device, 3)
    assert settings.mqtt.cert_file is not None
    cert = x509.load_pem_x509_certificate(settings.mqtt.cert_file.read_bytes())
    tls_broker.ca.revoke(cert, device, "device lost", PASSPHRASE)
    tls_broker.broker.reload()  # what the server's broker_reload_command does
    wait_until(lambda: not broker_admits(settings.mqtt, "probe"), what="the broker to read the CRL")
    clock = Clock()
    caplog.set_level(logging.INFO, logger="resonera.device.sync")
    sync = DeviceSync(settings, store, clock)
    with sync:
        wait_until(lambda: sync.shut_out is not None, what="the TLS alert to be learnt")
        assert sync.shut_out is not None and sync.shut_out.kind == "revoked"
        assert "revoked" in sync.shut_out.reason and "kept on the device" in sync.shut_out.reason
        # paho does not reconnect on its own: the worker holds the connection
        wait_until(lambda: sync.held_checks >= 1, what="the worker to hold the connection")
        # one attempt, or a few when the broker closes a connection before its alert is read
        attempts = sync.connect_attempts
        checks = sync.held_checks
        clock.now += shut_out.RETRY_S - 1
        sync.kick()
        wait_until(lambda: sync.held_checks > checks, what="the worker to look again")
        assert sync.connect_attempts == attempts  # not due yet
        clock.now += 1
        sync.kick()
        wait_until(lambda: sync.connect_attempts > attempts, what="the hourly attempt")
        wait_until(lambda: sync.held_checks > checks + 1, what="the attempt to be refused")
        assert sync.retry_in() == pytest.approx(shut_out.RETRY_S)
    assert [m.message_id for m in store.pending(limit=10)] == queued  # the outbox is kept
    said = [r.getMessage() for r in caplog.records if "shut out (revoked)" in r.getMessage()]
    assert len(said) == 1  # said once, in words, not "Unspecified error"
    assert "3 waiting" in said[0]
    assert not any("Unspecified error" in r.getMessage() for r in caplog.records)
    # after a restart the device still knows, before any attempt
    again = DeviceSync(settings, settings.open_store(), clock)
    assert again.shut_out is not None and again.shut_out.kind == "revoked"
    assert again.shut_out.since == sync.shut_out.since


def test_an_expired_certificate_is_never_presented_and_a_renewed_one_lets_the_device_in(
    tls_broker: TlsBroker, tmp_path: Path
) -> None:
    device = f"expired-{next(_ids)}"
    long_ago = datetime.now(UTC) - timedelta(days=10)
    settings = _tls_device(tls_broker, tmp_path, device, not_before=long_ago, days=2)
    store = settings.open_store()
    queued = _queue(store, device, 2)
    server = TlsServer(tls_broker.server())
    clock = Clock()
    try:
        sync = DeviceSync(settings, store, clock)
        assert sync.shut_out is not None and sync.shut_out.kind == "expired"
        assert "expired on" in sync.shut_out.reason
        with sync:
            wait_until(lambda: sync.held_checks >= 1, what="the worker to hold off")
            clock.now += shut_out.RETRY_S
            sync.kick()
            wait_until(lambda: sync.held_checks >= 2, what="the hourly look")
            assert sync.connect_attempts == 0  # an expired certificate is never presented
            assert store.outbox_depth() == 2
            renewed = tls_broker.device(device)  # a new certificate, as renewal installs it
            sync.reconnect(renewed)
            assert sync.shut_out is None
            assert sync.drain(timeout_s=15)
        assert sorted(server.received) == sorted(queued)
        assert shut_out.load(store) is None
    finally:
        server.close()


@pytest.fixture
def server_key() -> ServerKey:
    return ServerKey()


def _notice(
    key: Ed25519PrivateKey, device: str, notice: NoticeName = "quarantined", *, at: datetime
) -> bytes:
    reason = REVOKED_REASON if notice == "revoked" else "its signature does not verify"
    return notice_payload(Ed25519Signer.of(key), device, notice, reason, at)


def test_a_quarantine_notice_stops_publishing_keeps_the_outbox_and_an_ack_lets_it_back_in(
    mosquitto: Mosquitto, server_key: ServerKey, tmp_path: Path
) -> None:
    device = f"quarantined-{next(_ids)}"
    settings = device_settings(mosquitto, tmp_path, device, server_public_key=server_key.public_b64)
    store = settings.open_store()
    quarantine = Peer(mosquitto, ack=False)  # the server quarantines: nothing is acknowledged
    clock = Clock()
    now = datetime.now(UTC)
    try:
        with DeviceSync(settings, store, clock) as sync:
            first = _queue(store, device, 2)
            sync.kick()
            wait_until(lambda: set(first) <= set(quarantine.deliveries), what="the first records")
            quarantine.publish_desired(device, _notice(server_key.key, device, at=now))
            wait_until(lambda: sync.shut_out is not None, what="the notice to be taken")
            assert sync.shut_out is not None and sync.shut_out.kind == "quarantined"
            assert "signature does not verify" in sync.shut_out.reason
            later = _queue(store, device, 2)
            sync.kick()
            # an hour on, one message (the oldest) goes as a probe; nothing else is sent
            clock.now += shut_out.RETRY_S
            sync.kick()
            wait_until(lambda: quarantine.deliveries[first[0]] >= 2, what="the hourly probe")
            assert not set(later) & set(quarantine.deliveries)
            assert store.outbox_depth() == 4
            # the server takes the device's messages again: the probe's ack lets it back in
            quarantine.ack = True
            clock.now += shut_out.RETRY_S
            sync.kick()
            wait_until(lambda: sync.shut_out is None, what="the device to be let back in")
            assert sync.drain(timeout_s=15)
        assert set(first + later) <= set(quarantine.stored)
        assert shut_out.load(store) is None
        # the retained notice read again after being let back in is stale: refused
        with DeviceSync(settings, store, clock) as again:
            wait_until(lambda: again.connected, what="the connection")
            assert again.shut_out is None
    finally:
        quarantine.close()


def test_forged_replayed_or_foreign_notices_are_refused(
    mosquitto: Mosquitto, server_key: ServerKey, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    device = f"notice-{next(_ids)}"
    settings = device_settings(mosquitto, tmp_path, device, server_public_key=server_key.public_b64)
    store = settings.open_store()
    peer = Peer(mosquitto)
    caplog.set_level(logging.INFO, logger="resonera.device.sync")
    now = datetime.now(UTC)

    def refused(count: int) -> bool:
        return sum("is not taken" in r.getMessage() for r in caplog.records) >= count

    try:
        with DeviceSync(settings, store, Clock()) as sync:
            wait_until(lambda: sync.connected, what="the connection")
            cases = [
                (_notice(Ed25519PrivateKey.generate(), device, "revoked", at=now), "unknown key"),
                (_notice(server_key.key, "another-device", "revoked", at=now), "another-device"),
            ]
            for count, (payload, reason) in enumerate(cases, start=1):
                peer.publish_desired(device, payload)
                wait_until(partial(refused, count), what=f"refusal {count}")
                assert reason in caplog.records[-1].getMessage()
            assert sync.shut_out is None
            # a genuine one is taken; one issued before it is a replay
            peer.publish_desired(device, _notice(server_key.key, device, at=now))
            wait_until(lambda: sync.shut_out is not None, what="the genuine notice")
            older = _notice(server_key.key, device, "revoked", at=now - timedelta(minutes=1))
            peer.publish_desired(device, older)
            wait_until(lambda: refused(3), what="the replay's refusal")
            assert "replay refused" in caplog.records[-1].getMessage()
        assert sync.shut_out is not None and sync.shut_out.kind == "quarantined"
        assert store.applied_desired() is None  # a notice is never taken as a desired state
    finally:
        peer.close()


REVOKED_BY_THE_SERVER = "this device was revoked on the server"


def test_sync_now_of_a_shut_out_device_says_why_at_once_and_keeps_the_outbox(
    mosquitto: Mosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = device_settings(mosquitto, tmp_path / "dev-so", "dev-so")
    store = settings.open_store()
    try:
        queued = _queue(store, "dev-so", 2)
        shut_out.save(store, shut_out.ShutOut("revoked", REVOKED_BY_THE_SERVER, since=1.0))
        assert not sync_outbox(settings, store, timeout_s=30.0)  # not the 30 s drain wait
        assert capsys.readouterr().out.strip() == (
            f"not synced: {REVOKED_BY_THE_SERVER} (2 record(s) kept in the outbox)"
        )
        assert [m.message_id for m in store.messages(queued)] == queued
    finally:
        store.close()
