"""A staged rollout to 10 % of a 50-device fleet pauses on failures (issue 25, "Tests and
figures"), through a real mosquitto: the devices' telemetry and update reports go through the
broker to the ingest consumer, the API publishes the rollout's signed documents to the broker, and
a monitor reads every document the devices would read. The targeted devices (a stable bucket of
their ids) are asked; two of them fail; ingest pauses the rollout and the devices not yet switched
lose the target; no other device is ever asked."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from support import Mosquitto, wait_until

from resonera.common import topics
from resonera.common.desired import verify_desired
from resonera.common.envelope import Envelope
from resonera.common.ids import new_id
from resonera.common.mqtt_client import build_client, connect, stop_loop
from resonera.common.settings import MqttSettings
from resonera.common.signing import ed25519_public_key_from_b64
from resonera.server.app import create_app
from resonera.server.crypto import FieldCipher, write_signing_key
from resonera.server.desired import MqttPublisher
from resonera.server.enrollment import server_public_key
from resonera.server.ingest_mqtt import IngestConsumer
from resonera.server.models import DeviceRow, DeviceUpdateRow, RolloutRow
from resonera.server.settings import ServerSettings
from resonera.server.updates import bucket

API = "/api/v1"
OLD, NEW = "0.8.0", "0.9.0"
#: 50 simulated devices; sim-10, sim-37, sim-38 and sim-48 fall in the 10 % bucket.
DEVICES = [f"sim-{n:02d}" for n in range(50)]


def _bundle_maker() -> ModuleType:
    name = "resonera_update_bundles"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("update_bundles.py")
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class Fleet:
    """One MQTT connection speaking for every simulated device (the test broker has no ACL), and
    a monitor of every desired document published while it runs (retained ones from earlier
    tests on the shared broker left out)."""

    def __init__(self, mqtt: MqttSettings, signing: Ed25519PublicKey) -> None:
        self.signing = signing
        self.documents: dict[str, list[dict[str, Any]]] = {}
        self.seq: dict[str, int] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = build_client(mqtt, f"test-fleet-{new_id()[-8:]}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_args: self._subscribed.set()
        connect(self.client, mqtt, clean_start=True, session_expiry_s=0)
        self.client.loop_start()
        self.client.subscribe(f"{topics.PREFIX}/+/desired", qos=1)
        wait_until(self._subscribed.is_set, what="the monitor's subscription")

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        if msg.retain:
            return  # a document from before this test
        device = msg.topic.split("/")[-2]
        if device not in DEVICES:
            return
        document = verify_desired(
            bytes(msg.payload), device_id=device, pinned=self.signing, applied_version=0
        )
        with self._lock:
            self.documents.setdefault(device, []).append(document.content)

    def send(self, device: str, kind: topics.UpKind, body: dict[str, Any]) -> None:
        self.seq[device] = self.seq.get(device, 0) + 1
        envelope = Envelope.create(device=device, seq=self.seq[device], kind=kind, body=body)
        info = self.client.publish(topics.up(device, kind), envelope.to_bytes(), qos=1)
        info.wait_for_publish(timeout=10)

    def asked(self, device: str) -> bool:
        """Whether the device's latest document asks for an update."""
        with self._lock:
            latest = self.documents.get(device, [])
            return bool(latest) and "agent_update" in latest[-1]

    def ever_asked(self) -> set[str]:
        with self._lock:
            return {
                d for d, docs in self.documents.items() if any("agent_update" in c for c in docs)
            }

    def close(self) -> None:
        self.client.disconnect()
        stop_loop(self.client)


@pytest.fixture(params=["key file", "one process"])
def stack(
    *,
    request: pytest.FixtureRequest,
    mosquitto: Mosquitto,
    engine: Engine,
    cipher: FieldCipher,
    tmp_path: Path,
    server_settings: ServerSettings,
) -> Iterator[tuple[TestClient, Fleet, Any]]:
    """Ingest as its own process signing with the desired state's key file, or in one process
    with the API (the demo: no key file, ingest signs with the API's own signer)."""
    update_key = _bundle_maker().UpdateKey.new()
    settings = server_settings.model_copy(
        update={
            "mqtt": MqttSettings(host=mosquitto.host, port=mosquitto.port),
            "update_public_keys": [update_key.public_b64],
        }
    )
    if request.param == "key file":
        key_file = tmp_path / "desired.pem"
        write_signing_key(key_file)
        settings = settings.model_copy(update={"desired_signing_key_file": key_file})
    else:  # as the demo runs: its throwaway key lives in the API's process alone
        settings = settings.model_copy(update={"demo": True})
    with Session(engine) as session:
        for device in DEVICES:
            session.add(DeviceRow(id=device, created_at=datetime.now(UTC)))
        session.commit()
    publisher = MqttPublisher(settings)
    app = create_app(settings, engine, cipher=cipher, publisher=publisher)
    desired = app.state.resonera.desired
    consumer = IngestConsumer(
        settings, engine, desired=desired if request.param == "one process" else None
    )
    consumer.start()
    signing = ed25519_public_key_from_b64(str(server_public_key(desired.signer)))
    fleet = Fleet(settings.mqtt, signing)
    try:
        wait_until(publisher.connected, what="the API's MQTT connection")
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client, fleet, update_key
    finally:
        fleet.close()
        publisher.close()
        consumer.stop()


def _rollout(engine: Engine) -> RolloutRow:
    with Session(engine) as session:
        return session.exec(select(RolloutRow)).one()


def test_a_ten_percent_rollout_to_fifty_devices_pauses_on_failures(
    stack: tuple[TestClient, Fleet, Any], engine: Engine, make_actor: Callable[[str], Any]
) -> None:
    client, fleet, update_key = stack
    targeted = [d for d in DEVICES if bucket(d) < 10]
    assert targeted == ["sim-10", "sim-37", "sim-38", "sim-48"]
    for device in DEVICES:
        fleet.send(device, "metrics", {"agent_version": OLD, "outbox_depth": 0})

    def known() -> int:
        with Session(engine) as session:
            rows = session.exec(select(DeviceUpdateRow)).all()
            return sum(1 for r in rows if r.agent_version == OLD)

    wait_until(lambda: known() == len(DEVICES), 30, "every device's agent version stored")
    bundle = _bundle_maker().bundle_bytes(update_key, NEW)
    headers = make_actor("admin").headers
    uploaded = client.post(
        f"{API}/updates/bundles",
        content=bundle,
        headers={**headers, "Content-Type": "application/x-tar"},
    )
    assert uploaded.status_code == 201, uploaded.text
    made = client.post(
        f"{API}/updates/rollouts",
        json={"version": NEW, "percentage": 10, "failure_threshold": 0.2, "min_failures": 2},
        headers=headers,
    )
    assert made.status_code == 201, made.text
    rollout = made.json()
    assert (rollout["targeted"], rollout["pending"]) == (4, 4)
    wait_until(lambda: all(fleet.asked(d) for d in targeted), 30, "the targeted devices' documents")

    # Each targeted device starts; two of them fail (one before switching, one after).
    for device in targeted:
        fleet.send(device, "update", _report("downloading", rollout["id"]))
    fleet.send("sim-10", "update", _report("failed", rollout["id"], "bundle signature refused"))
    wait_until(lambda: not fleet.asked("sim-10"), 30, "the failed device's target taken away")
    assert _rollout(engine).state == "active"  # one failure is below the minimum of two
    fleet.send("sim-37", "update", _report("rolled_back", rollout["id"], "health check: no MCU"))
    wait_until(lambda: _rollout(engine).state == "paused", 30, "the rollout paused")
    paused = _rollout(engine)
    assert paused.paused_reason is not None
    assert paused.paused_reason.startswith("2 of 4 targeted devices failed or rolled back")
    # The devices not yet switched lose their target; no other device was ever asked.
    wait_until(lambda: not any(fleet.asked(d) for d in targeted), 30, "every target taken away")
    assert fleet.ever_asked() == set(targeted)
    versions = client.get(f"{API}/updates/versions", headers=headers).json()
    line = next(v for v in versions if v["version"] == NEW)
    assert {(s["device_id"], s["reason"]) for s in line["failed"]} == {
        ("sim-10", "bundle signature refused"),
        ("sim-37", "health check: no MCU"),
    }
    assert {s["device_id"] for s in line["updating"]} == {"sim-38", "sim-48"}
    assert next(v for v in versions if v["version"] == OLD)["running"] == len(DEVICES)
    assert (
        json.loads(client.get(f"{API}/updates/rollouts", headers=headers).text)[0]["state"]
        == "paused"
    )


def _report(state: str, rollout: str, reason: str | None = None) -> dict[str, Any]:
    return {
        "state": state,
        "from_version": OLD,
        "to_version": NEW,
        "rollout": rollout,
        "reason": reason,
    }
