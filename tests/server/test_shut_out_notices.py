"""The server's notices to a device it shuts out (``server/notices.py``, ``docs/shut-out.md``):
ingest tells a revoked device, or one whose messages it quarantines for their sender, with a notice
the device verifies with its pinned key; at most once an hour per device; never for a message
refused for its content, nor for an unregistered sender. ``republish_all`` keeps a revoked device's
notice on its topic instead of its last document."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import RECENT
from sqlalchemy.engine import Engine
from sqlmodel import Session

from resonera.common import topics
from resonera.common.desired import Notice, is_notice, verify_notice
from resonera.common.envelope import Envelope
from resonera.common.signing import ed25519_public_key_from_b64
from resonera.server.crypto import Ed25519Signer, write_signing_key
from resonera.server.desired import DesiredService, MemoryPublisher
from resonera.server.ingest import IngestProcessor, Received
from resonera.server.ingest_checks import RegisteredDevice
from resonera.server.models import DeviceDesiredRow
from resonera.server.notices import ShutOutNotices, for_ingest
from resonera.server.settings import ServerSettings

NOW = RECENT + timedelta(days=1)
MakeEnvelope = Callable[..., Envelope]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


KEY = Ed25519PrivateKey.generate()
SIGNER = Ed25519Signer.of(KEY)


def _device_key_b64() -> str:
    """A registered device key (P-256 SPKI): the envelopes here are unsigned, so refused."""
    der = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(der).decode()


def _read(publisher: MemoryPublisher, device_id: str) -> Notice:
    payload = publisher.documents[device_id]
    assert is_notice(payload)
    return verify_notice(payload, device_id=device_id, pinned=KEY.public_key(), held=None)


def _setup(engine: Engine, clock: Clock) -> tuple[IngestProcessor, ShutOutNotices, MemoryPublisher]:
    publisher = MemoryPublisher()
    notices = ShutOutNotices(SIGNER, publisher.publish, clock=clock)
    processor = IngestProcessor(engine, clock=clock, on_sender_refused=notices.sender_refused)
    return processor, notices, publisher


def test_a_revoked_device_is_told_once_an_hour_and_its_messages_are_quarantined(
    engine: Engine, registered: Callable[..., str], make_envelope: MakeEnvelope
) -> None:
    registered("dev-rev", revoked=True)
    clock = Clock()
    processor, notices, publisher = _setup(engine, clock)

    def send(count: int) -> None:
        batch = [
            Received(
                topics.up("dev-rev", "session"), make_envelope("dev-rev", time=clock.now).to_bytes()
            )
            for _ in range(count)
        ]
        result = processor.process(batch)
        assert result.quarantined == count and not result.committed  # kept by the device

    send(3)
    assert notices.sent == 1
    notice = _read(publisher, "dev-rev")
    assert notice.notice == "revoked" and "revoked on the server" in notice.reason
    assert notice.issued_at == NOW
    clock.now += timedelta(minutes=59)
    send(2)
    assert notices.sent == 1  # rate-bounded
    clock.now += timedelta(minutes=1)
    send(1)
    assert notices.sent == 2
    assert _read(publisher, "dev-rev").issued_at == NOW + timedelta(hours=1)


def test_a_sender_whose_signature_fails_is_told_quarantined_but_content_refusals_tell_nothing(
    engine: Engine, registered: Callable[..., str], make_envelope: MakeEnvelope
) -> None:
    registered("dev-key", public_key=_device_key_b64())
    registered("dev-ok")
    clock = Clock()
    processor, notices, publisher = _setup(engine, clock)
    unsigned = make_envelope("dev-key", time=NOW)
    bad_body = make_envelope("dev-ok", body={"nonsense": True}, time=NOW)
    stranger = make_envelope("dev-unknown", time=NOW)
    result = processor.process(
        [
            Received(topics.up("dev-key", "session"), unsigned.to_bytes()),
            Received(topics.up("dev-ok", "session"), bad_body.to_bytes()),
            Received(topics.up("dev-unknown", "session"), stranger.to_bytes()),
        ]
    )
    assert result.quarantined == 3
    assert set(publisher.documents) == {"dev-key"}
    notice = _read(publisher, "dev-key")
    assert notice.notice == "quarantined"
    assert "sets this device's messages aside" in notice.reason
    assert notices.sent == 1


def test_republish_all_keeps_a_revoked_device_notice_on_its_topic(
    engine: Engine, registered: Callable[..., str]
) -> None:
    registered("dev-a")
    registered("dev-r", revoked=True)
    with Session(engine) as session:
        for device in ("dev-a", "dev-r"):
            session.add(
                DeviceDesiredRow(device_id=device, version=4, document='{"doc": 4}', updated_at=NOW)
            )
        session.commit()
    publisher = MemoryPublisher()
    assert DesiredService(SIGNER, publisher).republish_all(engine, NOW) == 2
    assert publisher.documents["dev-a"] == b'{"doc": 4}'
    notice = _read(publisher, "dev-r")
    assert notice.notice == "revoked" and notice.issued_at == NOW


def test_ingest_signs_with_the_desired_state_key_file_or_sends_nothing(tmp_path: Path) -> None:
    published: dict[str, bytes] = {}
    assert for_ingest(ServerSettings(demo=True), published.__setitem__) is None
    key_file = tmp_path / "signing.key"
    public = write_signing_key(key_file)
    notices = for_ingest(ServerSettings(desired_signing_key_file=key_file), published.__setitem__)
    assert notices is not None
    assert notices.sender_refused("dev-x", RegisteredDevice(revoked=True, public_key=None), "")
    pinned = ed25519_public_key_from_b64(public)
    notice = verify_notice(published["dev-x"], device_id="dev-x", pinned=pinned, held=None)
    assert notice.notice == "revoked"
