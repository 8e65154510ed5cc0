"""mosquitto with exactly the configuration ``provision_broker`` writes: mutual TLS, identity as
username, per-device ACL, CRL. Real TLS, real broker."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from fleet import PASSPHRASE, TlsBroker
from paho.mqtt.reasoncodes import ReasonCode
from support import wait_until

from resonera.common import topics
from resonera.common.errors import ProtocolError
from resonera.common.identity import IdentityError, generate_key, make_csr, write_private_key
from resonera.common.mqtt_client import BrokerUnavailable, build_client, connect, stop_loop
from resonera.common.settings import MqttSettings
from resonera.provisioning.broker import SERVER_IDENTITY
from resonera.server.fleet_ca import CAError, FleetCA


class Client:
    """A connected paho client that records what arrives and the PUBACK reason codes."""

    def __init__(self, settings: MqttSettings, client_id: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.pubacks: dict[int, ReasonCode] = {}
        self.connected = threading.Event()
        self.answered = threading.Event()  # connected, refused or dropped: no more waiting
        self.refused: str | None = None
        self.client = build_client(settings, client_id)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = lambda *_a: self.answered.set()
        connect(self.client, settings, clean_start=True, session_expiry_s=0)
        self.client.loop_start()

    def _on_connect(
        self, _c: object, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        if reason.is_failure:
            self.refused = str(reason)
        else:
            self.connected.set()
        self.answered.set()

    def _on_publish(self, _c: object, _u: object, mid: int, reason: ReasonCode, _p: object) -> None:
        self.pubacks[mid] = reason

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1)
        wait_until(lambda: info.mid in self.pubacks, what="PUBACK")
        return self.pubacks[info.mid]

    def close(self) -> None:
        stop_loop(self.client)
        self.client.disconnect()


def refused(settings: MqttSettings, client_id: str) -> bool:
    """True when the broker does not let this identity in (handshake or CONNACK refusal)."""
    try:
        client = Client(settings, client_id)
    except BrokerUnavailable:
        return True
    try:
        client.answered.wait(timeout=10)
        return not client.connected.is_set()
    finally:
        client.close()


def test_a_provisioned_device_reaches_the_server_over_mutual_tls(tls_broker: TlsBroker) -> None:
    server = Client(tls_broker.server(), "resonera-ingest-test")
    device = Client(tls_broker.device("dev-a"), "dev-a")
    try:
        assert server.connected.wait(5) and device.connected.wait(5)
        server.client.subscribe(topics.INGEST_SHARED_SUBSCRIPTION, qos=1)
        wait_until(lambda: server.client.want_write() is False, what="subscribe sent")
        reason = device.publish(topics.up("dev-a", "session"), b"{}")
        assert not reason.is_failure
        wait_until(lambda: len(server.messages) == 1, what="delivery to the server")
        assert server.messages[0][0] == "resonera/v1/dev/dev-a/up/session"
    finally:
        server.close()
        device.close()


def test_device_a_cannot_publish_or_read_on_device_b_topics(tls_broker: TlsBroker) -> None:
    a = Client(tls_broker.device("dev-a"), "dev-a")
    b = Client(tls_broker.device("dev-b"), "dev-b")
    server = Client(tls_broker.server(), "resonera-ingest-test")
    try:
        assert a.connected.wait(5) and b.connected.wait(5) and server.connected.wait(5)
        server.client.subscribe(topics.UP_WILDCARD, qos=1)
        a.client.subscribe(topics.ack("dev-b"), qos=1)
        b.client.subscribe(topics.ack("dev-b"), qos=1)
        reason = a.publish(topics.up("dev-b", "session"), b"{}")
        assert reason.is_failure and "authorized" in str(reason).lower()
        server.publish(topics.ack("dev-b"), b"ack for b")
        wait_until(lambda: len(b.messages) == 1, what="b's own ack")
        # a marker published after the refused message: once it arrives, the other would have too
        a.publish(topics.up("dev-a", "session"), b"marker")
        wait_until(lambda: any(p == b"marker" for _t, p in server.messages), what="marker")
        assert [t for t, _p in server.messages] == ["resonera/v1/dev/dev-a/up/session"]
        assert a.messages == []  # granted or not, nothing of b's reaches a
    finally:
        for c in (a, b, server):
            c.close()


def test_identities_the_fleet_ca_did_not_issue_are_refused(tls_broker: TlsBroker) -> None:
    # no client certificate at all
    anonymous = MqttSettings(host="127.0.0.1", port=tls_broker.broker.port)
    assert refused(anonymous, "nobody")
    # a certificate from another CA
    other = FleetCA.init(tls_broker.workdir / "other-ca", PASSPHRASE)
    key = generate_key()
    write_private_key(key, tls_broker.workdir / "rogue.key")
    cert = other.sign_device_csr(make_csr(key, "rogue", "SN-rogue"), PASSPHRASE)
    (tls_broker.workdir / "rogue.crt").write_bytes(cert.public_bytes(Encoding.PEM))
    rogue = tls_broker.settings(tls_broker.workdir / "rogue.key", tls_broker.workdir / "rogue.crt")
    assert refused(rogue, "rogue")


def test_an_expired_certificate_is_refused(tls_broker: TlsBroker) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=10)
    expired = tls_broker.device("dev-old", not_before=long_ago, days=2)
    assert refused(expired, "dev-old")


def test_a_revoked_device_is_refused_once_the_broker_reloads_the_crl(tls_broker: TlsBroker) -> None:
    settings = tls_broker.device("dev-r")
    assert not refused(settings, "dev-r")
    assert settings.cert_file is not None
    cert = x509.load_pem_x509_certificate(settings.cert_file.read_bytes())
    tls_broker.ca.revoke(cert, "dev-r", "device lost", PASSPHRASE)
    tls_broker.broker.reload()  # what `systemctl reload mosquitto` does
    wait_until(lambda: refused(settings, "dev-r"), what="the revoked device to be refused")
    assert not refused(tls_broker.device("dev-ok"), "dev-ok")


def test_a_device_named_like_the_server_gets_only_a_device_rights(tls_broker: TlsBroker) -> None:
    """A device certificate whose CN is the server's former name, 'resonera-server' (what an
    enrollment code once bought): it reads no other device's messages, acks nothing for them,
    joins no ingest share and replaces no desired state. The server's own identity does all that."""
    impostor = Client(tls_broker.device("resonera-server"), "impostor")
    b = Client(tls_broker.device("dev-b"), "dev-b")
    server = Client(tls_broker.server(), "resonera-ingest-test")
    try:
        assert impostor.connected.wait(5) and b.connected.wait(5) and server.connected.wait(5)
        for topic in (topics.UP_WILDCARD, topics.INGEST_SHARED_SUBSCRIPTION, topics.ack("dev-b")):
            impostor.client.subscribe(topic, qos=1)
        server.client.subscribe(topics.UP_WILDCARD, qos=1)
        b.client.subscribe(topics.ack("dev-b"), qos=1)
        b.client.subscribe(topics.desired("dev-b"), qos=1)
        for topic in (topics.ack("dev-b"), topics.desired("dev-b")):
            reason = impostor.publish(topic, b"forged")
            assert reason.is_failure and "authorized" in str(reason).lower()
        assert not b.publish(topics.up("dev-b", "session"), b"b's session").is_failure
        # the server's identity reaches b: once its ack arrives, a forged one would have too
        server.publish(topics.ack("dev-b"), b"real ack")
        wait_until(lambda: b"real ack" in [p for _t, p in b.messages], what="the server's ack")
        wait_until(lambda: len(server.messages) == 1, what="b's session at the server")
        assert [p for _t, p in b.messages] == [b"real ack"]
        assert impostor.messages == []
    finally:
        for c in (impostor, b, server):
            c.close()


def test_no_device_certificate_can_carry_a_service_name(tls_broker: TlsBroker) -> None:
    key = generate_key()
    with pytest.raises(ProtocolError, match="not valid"):
        make_csr(key, SERVER_IDENTITY, "SN-1")
    # a request built by hand, past make_csr's check, is refused by the CA
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, SERVER_IDENTITY),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN-1"),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    with pytest.raises(IdentityError, match="not valid"):
        tls_broker.ca.sign_device_csr(csr.public_bytes(serialization.Encoding.PEM), PASSPHRASE)
    assert SERVER_IDENTITY.startswith(topics.SERVICE_PREFIX)
    with pytest.raises(CAError, match="not valid"):
        tls_broker.ca.issue_service(
            "bad name", tls_broker.workdir / "x.key", tls_broker.workdir / "x.crt", PASSPHRASE
        )
