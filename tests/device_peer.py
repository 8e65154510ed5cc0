"""The server's side of sync, as little as the device tests need: an acking peer that stores by message
id (like ingest), counts what came how often, and publishes signed desired states retained."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from support import Mosquitto, free_port, wait_until

from resonera.common import topics
from resonera.common.envelope import Ack, Envelope, decode_envelope
from resonera.common.mqtt_client import stop_loop
from resonera.common.settings import MqttSettings
from resonera.common.signing import sign_document_ed25519
from resonera.device.settings import DeviceSettings

if TYPE_CHECKING:
    from resonera.device.service import DeviceService
    from resonera.hardware.firmware.config import BoardConfig
    from resonera.hardware.sim import Simulator


class Peer:
    """Acks (when ``ack``) every envelope it receives; ``deliveries`` counts each id's arrivals,
    ``stored`` keeps one envelope per id (insert-or-ignore, as the server does)."""

    def __init__(self, broker: Mosquitto, *, ack: bool = True) -> None:
        self.ack = ack
        self.deliveries: Counter[str] = Counter()
        self.stored: dict[str, Envelope] = {}
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(topics.UP_WILDCARD, qos=1)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        envelope = decode_envelope(bytes(message.payload))
        with self._lock:
            self.deliveries[envelope.id] += 1
            self.stored.setdefault(envelope.id, envelope)
        if self.ack:
            client.publish(topics.ack(envelope.device), Ack.of([envelope.id]).to_bytes(), qos=1)

    def of_kind(self, kind: str) -> list[Envelope]:
        with self._lock:
            return sorted((e for e in self.stored.values() if e.kind == kind), key=lambda e: e.seq)

    def reports(self) -> list[dict[str, Any]]:
        return [e.body for e in self.of_kind("reported")]

    def report_of(self, version: int) -> dict[str, Any]:
        """The device's last report on desired-state ``version`` (waits up to 30 s for it)."""

        def found() -> list[dict[str, Any]]:
            return [r for r in self.reports() if r.get("desired_version") == version]

        wait_until(lambda: bool(found()), 30, f"the report of version {version}")
        return found()[-1]

    def publish_desired(self, device_id: str, payload: bytes) -> None:
        info = self.client.publish(topics.desired(device_id), payload, qos=1, retain=True)
        info.wait_for_publish(timeout=5)

    def close(self) -> None:
        stop_loop(self.client)
        self.client.disconnect()


class ServerKey:
    """The server's desired-state signing key; ``document`` builds a signed payload."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()

    @property
    def public_b64(self) -> str:
        import base64

        from cryptography.hazmat.primitives import serialization

        raw = self.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode()

    def document(self, device_id: str, version: int, **changes: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "v": 1,
            "device": device_id,
            "version": version,
            "issued_at": "2026-11-24T10:00:00Z",
            "patient_config_version": version,
            "profile": {"max_level_dba": 80.0},
            "limits": {"max_level_dba": 75.0, "max_session_minutes": 60},
            "programs": [],
            "sessions_per_week": 5,
        }
        base.update(changes)
        return sign_document_ed25519(self.key, base)

    def payload(self, device_id: str, version: int, **changes: Any) -> bytes:
        return json.dumps(self.document(device_id, version, **changes)).encode()


def device_settings(
    broker: Mosquitto | None, tmp_path: Path, device_id: str, **changes: Any
) -> DeviceSettings:
    from resonera.engine.audio.calibration import packaged_calibration

    values: dict[str, Any] = {
        "device_id": device_id,
        "data_dir": tmp_path / "data",
        "mqtt": MqttSettings(
            host="127.0.0.1", port=broker.port if broker is not None else free_port()
        ),
        "simulation": True,
        "sink": "null",
        "calibration_file": packaged_calibration(),
        "sync": {"reconnect_jitter_s": 0.0, "resend_after_s": 2.0},
    }
    values.update(changes)
    return DeviceSettings.model_validate(values)


def config_file(settings: DeviceSettings, path: Path) -> Path:
    """The settings as a TOML file, for the ``resonera-device`` command."""
    import tomli_w

    path.write_text(tomli_w.dumps(settings.model_dump(mode="json", exclude_none=True)))
    return path


@contextmanager
def service_on_mcu(
    broker: Mosquitto,
    tmp_path: Path,
    device_id: str,
    board: BoardConfig,
    *,
    prompt_keys: Sequence[str] = (),
    **changes: Any,
) -> Iterator[tuple[Simulator, DeviceSettings, DeviceService]]:
    """A started device service watched by the simulated safety MCU over its real pty, with the
    spoken prompts of ``prompt_keys`` built first; closed on leaving, and the simulator must have
    seen no protocol error."""
    from resonera.device.cli import resolve_program
    from resonera.device.prompts import build_prompts, prompts_dir
    from resonera.device.service import DeviceService
    from resonera.engine.audio.calibration import load_calibration_file, packaged_calibration
    from resonera.hardware.sim import Simulator

    with Simulator(board) as sim:
        settings = device_settings(
            broker, tmp_path, device_id, simulation=False, serial_url=sim.port_path, **changes
        )
        if prompt_keys:
            build_prompts(
                prompts_dir(settings.data_dir),
                load_calibration_file(packaged_calibration()),
                sample_rate=settings.sample_rate,
                keys=list(prompt_keys),
            )
        service = DeviceService(settings, resolve_program)
        service.start()
        try:
            yield sim, settings, service
        finally:
            service.close()
        assert sim.error is None
