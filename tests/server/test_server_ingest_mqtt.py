"""IngestConsumer against a real mosquitto (stores on SQLite and PostgreSQL): publish as a device
would, expect rows and acks; two consumers share the load, each message stored once."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from factories import event_body
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select
from support import Mosquitto, free_port, wait_until

from resonera.common import topics
from resonera.common.desired import verify_notice
from resonera.common.envelope import Envelope, decode_ack
from resonera.common.ids import new_id
from resonera.common.mqtt_client import BrokerUnavailable, build_client, connect, stop_loop
from resonera.common.settings import MqttSettings
from resonera.engine.capabilities import engine_capabilities
from resonera.server.db import init_db, make_engine
from resonera.server.ingest import Received
from resonera.server.ingest_mqtt import IngestConsumer, Item, take_batch
from resonera.server.models import (
    DeviceRow,
    DeviceStateRow,
    ProgramReportRow,
    QuarantineRow,
    SafetyEventRow,
    SessionRow,
)
from resonera.server.settings import ServerSettings

MakeEnvelope = Callable[..., Envelope]


class FakeDevice:
    """A paho client on the device's side: publishes up-messages, collects acks."""

    def __init__(self, mqtt: MqttSettings, device_id: str) -> None:
        self.device_id = device_id
        self.acked: list[list[str]] = []
        self._subscribed = threading.Event()
        self.client = build_client(mqtt, f"test-device-{device_id}-{new_id()[-8:]}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_args: self._subscribed.set()
        connect(self.client, mqtt, clean_start=True, session_expiry_s=0)
        self.client.loop_start()
        self.client.subscribe(topics.ack(device_id), qos=1)
        wait_until(self._subscribed.is_set, what=f"{device_id} subscribed to its ack topic")

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        self.acked.append(list(decode_ack(bytes(msg.payload)).ids))

    def publish(self, payload: bytes, kind: str = "session") -> None:
        info = self.client.publish(f"{topics.PREFIX}/{self.device_id}/up/{kind}", payload, qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published()

    def acked_ids(self) -> list[str]:
        return [i for ack in self.acked for i in ack]

    def close(self) -> None:
        self.client.disconnect()
        stop_loop(self.client)


@pytest.fixture(autouse=True)
def _devices(registered: Callable[..., str]) -> None:
    for device_id in ("dev-x", "dev-y", "dev-plain-5", "dev-plain-3.1.1"):
        registered(device_id)


def _register(engine: Engine, device_id: str) -> None:
    with Session(engine) as session:
        session.add(DeviceRow(id=device_id, created_at=datetime.now(UTC)))
        session.commit()


def _settings(broker: Mosquitto, **overrides: Any) -> ServerSettings:
    mqtt = MqttSettings(host=broker.host, port=broker.port, **overrides.pop("mqtt", {}))
    return ServerSettings(mqtt=mqtt, **overrides)


@pytest.fixture
def consumer(mosquitto: Mosquitto, engine: Engine) -> Iterator[IngestConsumer]:
    consumer = IngestConsumer(_settings(mosquitto), engine)
    consumer.start()
    yield consumer
    consumer.stop()


@pytest.fixture
def device(mosquitto: Mosquitto) -> Iterator[FakeDevice]:
    device = FakeDevice(MqttSettings(host=mosquitto.host, port=mosquitto.port), "dev-x")
    yield device
    device.close()


def _count(engine: Engine, model: type[SessionRow] | type[QuarantineRow]) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def test_session_is_stored_once_and_acked(
    consumer: IngestConsumer, device: FakeDevice, engine: Engine, make_envelope: MakeEnvelope
) -> None:
    envelope = make_envelope("dev-x")
    device.publish(envelope.to_bytes())
    wait_until(lambda: envelope.id in device.acked_ids(), what="the ack for the session")
    assert _count(engine, SessionRow) == 1
    # The device did not see the ack (say): it resends; stored once, acked again.
    device.publish(envelope.to_bytes())
    wait_until(lambda: device.acked_ids().count(envelope.id) == 2, what="the second ack")
    assert _count(engine, SessionRow) == 1
    assert consumer.counters["duplicates"] == 1


def test_malformed_payload_is_quarantined_and_ingest_goes_on(
    consumer: IngestConsumer, device: FakeDevice, engine: Engine, make_envelope: MakeEnvelope
) -> None:
    device.publish(b"\x00not json at all")
    wait_until(lambda: _count(engine, QuarantineRow) == 1, what="the quarantined message")
    envelope = make_envelope("dev-x")
    device.publish(envelope.to_bytes())
    wait_until(lambda: envelope.id in device.acked_ids(), what="the ack after a bad message")
    assert _count(engine, SessionRow) == 1
    assert consumer.counters["quarantined"] == 1
    assert device.acked_ids() == [envelope.id]


def test_many_messages_are_batched_and_all_acked(
    consumer: IngestConsumer, device: FakeDevice, engine: Engine, make_envelope: MakeEnvelope
) -> None:
    envelopes = [make_envelope("dev-x", seq=i) for i in range(300)]
    for envelope in envelopes:
        device.client.publish(topics.up("dev-x", "session"), envelope.to_bytes(), qos=1)
    wanted = {e.id for e in envelopes}
    wait_until(lambda: wanted <= set(device.acked_ids()), what="acks for 300 messages")
    assert _count(engine, SessionRow) == 300


def test_database_failure_is_retried_and_nothing_acked_before_commit(
    mosquitto: Mosquitto, device: FakeDevice, tmp_path: Path, make_envelope: MakeEnvelope
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'failing.db'}")
    init_db(engine)
    _register(engine, "dev-x")
    sessions = SessionRow.__tablename__
    # The table a session is stored in goes missing, then comes back in one statement: a retry
    # never sees a half-made database (one made table by table could take the message as an
    # unregistered device's before the device is in).
    with engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE {sessions} RENAME TO {sessions}_away")
    consumer = IngestConsumer(_settings(mosquitto), engine)
    consumer.start()
    try:
        envelope = make_envelope("dev-x")
        device.publish(envelope.to_bytes())
        wait_until(lambda: consumer.counters["store_errors"] >= 1, what="a failed store")
        assert device.acked == []
        with engine.begin() as conn:
            conn.exec_driver_sql(f"ALTER TABLE {sessions}_away RENAME TO {sessions}")
        # the consumer retries with a backoff of up to 5 s: allow a few rounds on a loaded machine
        wait_until(lambda: envelope.id in device.acked_ids(), 30, "the ack after recovery")
        assert _count(engine, SessionRow) == 1
    finally:
        consumer.stop()
        engine.dispose()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_plain_subscription_for_brokers_without_share(
    mosquitto: Mosquitto, engine: Engine, make_envelope: MakeEnvelope, protocol: str
) -> None:
    settings = _settings(mosquitto, shared_subscription=False, mqtt={"protocol": protocol})
    consumer = IngestConsumer(settings, engine)
    assert consumer.topic == topics.UP_WILDCARD
    consumer.start()
    device = FakeDevice(settings.mqtt, f"dev-plain-{protocol}")
    try:
        envelope = make_envelope(device.device_id)
        device.publish(envelope.to_bytes())
        wait_until(lambda: envelope.id in device.acked_ids(), what="the ack")
    finally:
        device.close()
        consumer.stop()


def test_two_consumers_share_the_load_and_store_each_message_once(
    mosquitto: Mosquitto, engine: Engine, make_envelope: MakeEnvelope
) -> None:
    consumers = [IngestConsumer(_settings(mosquitto), engine, batch_max=20) for _ in range(2)]
    devices = [
        FakeDevice(MqttSettings(host=mosquitto.host, port=mosquitto.port), d)
        for d in ("dev-x", "dev-y")
    ]
    try:
        for consumer in consumers:
            consumer.start()
        sent: dict[str, list[str]] = {d.device_id: [] for d in devices}
        for seq in range(200):
            for device in devices:
                envelope = make_envelope(device.device_id, seq=seq)
                device.client.publish(
                    topics.up(device.device_id, "session"), envelope.to_bytes(), qos=1
                )
                sent[device.device_id].append(envelope.id)
        for device in devices:
            wanted = set(sent[device.device_id])

            def all_acked(device: FakeDevice = device, wanted: set[str] = wanted) -> bool:
                return wanted <= set(device.acked_ids())

            wait_until(all_acked, timeout=30, what=f"acks for every message of {device.device_id}")
    finally:
        for device in devices:
            device.close()
        for consumer in consumers:
            consumer.stop()
    assert _count(engine, SessionRow) == 400
    counters = [c.counters for c in consumers]
    assert sum(c["stored"] for c in counters) == 400
    assert sum(c["duplicates"] for c in counters) == 0
    assert all(c["received"] > 0 for c in counters), counters  # the broker split the load
    for device in devices:
        assert sorted(device.acked_ids()) == sorted(sent[device.device_id])  # each acked once


def test_broker_down_is_one_clear_error(engine: Engine) -> None:
    settings = ServerSettings(mqtt=MqttSettings(port=free_port()))
    consumer = IngestConsumer(settings, engine)
    with pytest.raises(BrokerUnavailable, match=r"no MQTT broker at 127\.0\.0\.1"):
        consumer.start()


def test_stop_is_idempotent(consumer: IngestConsumer) -> None:
    consumer.stop()
    consumer.stop()
    assert not consumer.connected


def test_take_batch_stops_at_max_items_and_when_the_queue_is_empty() -> None:
    source: queue.Queue[Item] = queue.Queue()
    items = [Item(1, mid, 1, Received("t", b"")) for mid in range(5)]
    for item in items[1:]:
        source.put(item)
    assert take_batch(source, items[0], max_items=3, max_wait_s=0) == items[:3]
    assert take_batch(source, source.get(), max_items=10, max_wait_s=0) == items[3:]
    assert source.empty()


def test_invalid_safety_event_is_quarantined_acked_and_not_resent_forever(
    consumer: IngestConsumer, device: FakeDevice, engine: Engine, make_envelope: MakeEnvelope
) -> None:
    bad = make_envelope("dev-x", kind="event", body=event_body(type="meltdown"))
    good = make_envelope("dev-x", kind="event", body=event_body(), seq=1)
    device.publish(bad.to_bytes(), kind="event")
    device.publish(good.to_bytes(), kind="event")
    wait_until(lambda: {bad.id, good.id} <= set(device.acked_ids()), what="acks for both events")
    with Session(engine) as session:
        (row,) = session.exec(select(QuarantineRow)).all()
        stored = session.exec(select(SafetyEventRow.message_id)).all()
    assert row.device_id == "dev-x"
    assert "invalid event body: type:" in row.reason
    assert stored == [good.id]
    assert consumer.counters["quarantined"] == 1


def test_messages_larger_than_one_read_and_many_in_one_read_are_all_stored(
    consumer: IngestConsumer, device: FakeDevice, engine: Engine, make_envelope: MakeEnvelope
) -> None:
    # The consumer reads the socket in 64 KiB chunks: small messages arrive many to a read,
    # a 100 KB one spans reads, and a packet's header may be cut between two reads.
    large = [
        make_envelope("dev-x", kind="metrics", body={"samples": "x" * 100_000}, seq=i)
        for i in range(3)
    ]
    small = [make_envelope("dev-x", seq=10 + i) for i in range(300)]
    for envelope in small[:100] + large[:1] + small[100:200] + large[1:] + small[200:]:
        device.client.publish(topics.up("dev-x", envelope.kind), envelope.to_bytes(), qos=1)
    wanted = {e.id for e in small + large}
    wait_until(lambda: wanted <= set(device.acked_ids()), what="acks for every message")
    assert _count(engine, SessionRow) == 300
    assert consumer.counters["stored"] == 303
    assert consumer.counters["quarantined"] == 0


def test_ingest_goes_on_after_the_broker_restarts(
    private_mosquitto: Mosquitto, engine: Engine, make_envelope: MakeEnvelope
) -> None:
    consumer = IngestConsumer(_settings(private_mosquitto), engine)
    consumer.start()
    device = FakeDevice(
        MqttSettings(host=private_mosquitto.host, port=private_mosquitto.port), "dev-x"
    )
    try:
        before = make_envelope("dev-x")
        device.publish(before.to_bytes())
        wait_until(lambda: before.id in device.acked_ids(), what="the ack before the restart")
        private_mosquitto.stop()
        wait_until(lambda: not consumer.connected, what="the consumer to see the broker gone")
        private_mosquitto.start()
        wait_until(lambda: consumer.connected, timeout=30, what="the consumer to reconnect")
        wait_until(device.client.is_connected, timeout=30, what="the device to reconnect")
        after = make_envelope("dev-x", seq=1)

        def stored_after() -> bool:
            # Until the consumer's subscription is back, the broker has no one to give it to.
            # (This test device does not subscribe again to its acks: count stored rows.)
            device.client.publish(topics.up("dev-x", "session"), after.to_bytes(), qos=1)
            return _count(engine, SessionRow) == 2

        wait_until(stored_after, timeout=30, what="the message after the restart stored")
    finally:
        device.close()
        consumer.stop()
    assert consumer.counters["stored"] == 2
    assert consumer.counters["quarantined"] == 0


def test_a_report_brings_program_outcomes_and_capabilities(
    consumer: IngestConsumer, device: FakeDevice, engine: Engine, make_envelope: MakeEnvelope
) -> None:
    """A ``reported`` message through mosquitto: each program's outcome kept against the desired
    version, the engine's capabilities on the device, acknowledged after the commit."""
    capabilities = engine_capabilities().model_dump(mode="json")
    program = {"library_id": "lib-1", "version": 2, "sha256": "ef" * 32}
    body = {
        "desired_version": 4,
        "status": "applied",
        "programs": [{**program, "status": "refused", "reason": "needs a background"}],
        "capabilities": capabilities,
    }
    envelope = make_envelope("dev-x", kind="reported", body=body)
    device.publish(envelope.to_bytes(), kind="reported")
    wait_until(lambda: envelope.id in device.acked_ids(), what="the ack for the report")
    with Session(engine) as session:
        (row,) = session.exec(select(ProgramReportRow)).all()
        state = session.get(DeviceStateRow, "dev-x")
    assert (row.device_id, row.desired_version, row.library_id, row.program_version) == (
        "dev-x",
        4,
        "lib-1",
        2,
    )
    assert (row.status, row.reason) == ("refused", "needs a background")
    assert state is not None and state.capabilities == capabilities
    assert (state.report_version, state.report_status, state.reported_version) == (
        4,
        "applied",
        4,
    )


def test_a_revoked_device_sending_is_told_so_by_a_signed_notice_on_its_desired_topic(
    mosquitto: Mosquitto,
    engine: Engine,
    registered: Callable[..., str],
    make_envelope: MakeEnvelope,
    tmp_path: Path,
) -> None:
    device_id = f"dev-revoked-{new_id()[-8:]}"  # the broker is shared: a topic of its own
    registered(device_id, revoked=True)
    key_file = tmp_path / "desired.key"
    signer_key = Ed25519PrivateKey.generate()
    key_file.write_bytes(
        signer_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    key_file.chmod(0o600)
    notices: queue.Queue[bytes] = queue.Queue()
    watcher = build_client(
        MqttSettings(host=mosquitto.host, port=mosquitto.port), f"watcher-{new_id()[-8:]}"
    )
    watcher.on_message = lambda _c, _u, msg: notices.put(bytes(msg.payload))
    connect(
        watcher,
        MqttSettings(host=mosquitto.host, port=mosquitto.port),
        clean_start=True,
        session_expiry_s=0,
    )
    watcher.loop_start()
    watcher.subscribe(topics.desired(device_id), qos=1)
    consumer = IngestConsumer(_settings(mosquitto, desired_signing_key_file=key_file), engine)
    consumer.start()
    device = FakeDevice(MqttSettings(host=mosquitto.host, port=mosquitto.port), device_id)
    try:
        device.publish(make_envelope(device_id).to_bytes())
        device.publish(make_envelope(device_id).to_bytes())
        notice = verify_notice(
            notices.get(timeout=15),
            device_id=device_id,
            pinned=signer_key.public_key(),
            held=None,
        )
        assert notice.notice == "revoked" and "revoked on the server" in notice.reason
        wait_until(lambda: _count(engine, QuarantineRow) == 2, what="both messages set aside")
        assert notices.empty()  # one notice, not one per message
        assert device.acked_ids() == []  # kept on the device
    finally:
        device.close()
        consumer.stop()
        watcher.disconnect()
        stop_loop(watcher)
