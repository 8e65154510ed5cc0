"""The device's outbox sync against a real mosquitto, with a minimal acking peer standing in for the
server's ingest (the real ingest is exercised in tests/e2e)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from factories import make_record
from paho.mqtt.enums import CallbackAPIVersion
from support import Mosquitto, wait_until

from resonera.common import topics
from resonera.common.envelope import Ack, decode_envelope
from resonera.common.mqtt_client import stop_loop
from resonera.common.settings import MqttSettings
from resonera.device.settings import DeviceSettings
from resonera.device.store import DeviceStore
from resonera.device.sync import DeviceSync

_ids = itertools.count()


class AckingPeer:
    """Acks every envelope it receives, like the server does after committing; records what came."""

    def __init__(self, broker: Mosquitto, *, ack: bool = True) -> None:
        self.received: list[str] = []
        self.ack = ack
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(topics.UP_WILDCARD, qos=1)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        envelope = decode_envelope(bytes(message.payload))
        self.received.append(envelope.id)
        if self.ack:
            client.publish(topics.ack(envelope.device), Ack.of([envelope.id]).to_bytes(), qos=1)

    def close(self) -> None:
        stop_loop(self.client)
        self.client.disconnect()


@pytest.fixture
def peer(mosquitto: Mosquitto) -> Iterator[AckingPeer]:
    p = AckingPeer(mosquitto)
    yield p
    p.close()


def settings_for(broker: Mosquitto, tmp_path: Path) -> DeviceSettings:
    return DeviceSettings(
        device_id=f"sync-test-{next(_ids)}-{tmp_path.name[-6:]}",
        data_dir=tmp_path,
        mqtt=MqttSettings(host=broker.host, port=broker.port),
        simulation=True,
    )


def test_outbox_drains_once_the_server_acks(
    mosquitto: Mosquitto, peer: AckingPeer, tmp_path: Path
) -> None:
    settings = settings_for(mosquitto, tmp_path)
    store = DeviceStore(settings.store_path)
    ids = [store.record_session(settings.device_id, make_record()).id for _ in range(5)]
    with DeviceSync(settings, store) as sync:
        assert sync.drain(timeout_s=20)
    assert store.outbox_depth() == 0
    assert set(ids) <= set(peer.received)


def test_without_an_ack_nothing_leaves_the_outbox(mosquitto: Mosquitto, tmp_path: Path) -> None:
    silent = AckingPeer(mosquitto, ack=False)
    try:
        settings = settings_for(mosquitto, tmp_path)
        store = DeviceStore(settings.store_path)
        envelope = store.record_session(settings.device_id, make_record())
        with DeviceSync(settings, store):
            wait_until(lambda: envelope.id in silent.received, what="the broker to deliver")
            # PUBACK from the broker is not enough: only the server's ack deletes a record.
            assert store.outbox_depth() == 1
    finally:
        silent.close()


def test_records_wait_while_the_broker_is_down_and_sync_when_it_is_back(
    private_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    private_mosquitto.stop()
    settings = settings_for(private_mosquitto, tmp_path)
    store = DeviceStore(settings.store_path)
    store.record_session(settings.device_id, make_record())
    with DeviceSync(settings, store) as sync:
        assert not sync.drain(timeout_s=0.5)
        assert sync.last_error is not None and "connection refused" in sync.last_error
        private_mosquitto.start()
        peer = AckingPeer(private_mosquitto)
        try:
            assert sync.drain(timeout_s=30)
        finally:
            peer.close()
    assert store.outbox_depth() == 0
