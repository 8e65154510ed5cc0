"""Enrollment's requests and answers without a server (``enroll_protocol.py``), and the renewal's
pending key in the identity folder (``Identity.renewal_key``). The whole path, with a server and
the broker, is in ``tests/provisioning``."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resonera.common.enrollment import renewal_payload
from resonera.common.identity import generate_key, make_csr, write_private_key
from resonera.device.enroll_protocol import (
    api_url,
    checked_answer,
    enrollment_request,
    renewal_request,
)
from resonera.device.identity import EnrollError, Identity
from resonera.server.fleet_ca import FleetCA

PASSPHRASE = b"a passphrase long enough"
WHEN = "2026-01-02T03:04:05+00:00"


def server_key_b64() -> str:
    raw = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return base64.b64encode(raw).decode()


def answer_for(ca: FleetCA, key: ec.EllipticCurvePrivateKey, device_id: str) -> dict[str, Any]:
    """What the server answers a CSR of ``key`` for ``device_id`` with."""
    cert = ca.sign_device_csr(make_csr(key, device_id, "SN-1"), PASSPHRASE)
    return {
        "certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "chain": ca.cert.public_bytes(serialization.Encoding.PEM).decode(),
        "server_public_key": server_key_b64(),
        "broker_host": "broker.example",
        "broker_port": 8883,
    }


def test_the_api_url_is_https_and_ends_in_the_api_root() -> None:
    assert api_url("https://srv.example:8443/") == "https://srv.example:8443/api/v1"
    assert api_url("https://srv.example/api/v1") == "https://srv.example/api/v1"
    with pytest.raises(EnrollError, match="must start with https://"):
        api_url("http://srv.example")


def test_the_requests_carry_what_the_server_checks() -> None:
    current, new = generate_key(), generate_key()
    csr = make_csr(new, "dev-1", "SN-1")
    assert enrollment_request("CODE", "SN-1", csr, WHEN) == {
        "serial": "SN-1",
        "code": "CODE",
        "csr": csr.decode(),
        "time": WHEN,
    }
    cert_pem = b"-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"
    body = renewal_request(current, cert_pem, csr, WHEN)
    assert (body["certificate"], body["csr"], body["time"]) == (
        cert_pem.decode(),
        csr.decode(),
        WHEN,
    )
    current.public_key().verify(  # signed with the key in force, over what the server rebuilds
        base64.b64decode(body["signature"]),
        renewal_payload(cert_pem, csr, WHEN),
        ec.ECDSA(hashes.SHA256()),
    )


def test_an_answer_is_taken_only_for_this_key_and_device_from_its_own_ca(tmp_path: Path) -> None:
    ca = FleetCA.init(tmp_path / "ca", PASSPHRASE)
    key = generate_key()
    answer = answer_for(ca, key, "dev-1")
    cert_pem, chain_pem, info = checked_answer(answer, key, "dev-1")
    assert (cert_pem.decode(), chain_pem.decode()) == (answer["certificate"], answer["chain"])
    assert info == {
        "server_public_key": answer["server_public_key"],
        "update_public_keys": [],  # a server with no update keys: the device takes no update
        "broker_host": "broker.example",
        "broker_port": 8883,
        "desired_version": 0,
    }
    with_keys = checked_answer(
        answer | {"update_public_keys": [answer["server_public_key"]]}, key, "dev-1"
    )
    assert with_keys[2]["update_public_keys"] == [answer["server_public_key"]]
    with pytest.raises(EnrollError, match="not for this device's key"):
        checked_answer(answer, generate_key(), "dev-1")
    with pytest.raises(EnrollError, match="the certificate names 'dev-1', not 'dev-2'"):
        checked_answer(answer, key, "dev-2")
    other = FleetCA.init(tmp_path / "other", PASSPHRASE)
    foreign_chain = answer | {"chain": answer_for(other, key, "dev-1")["chain"]}
    with pytest.raises(EnrollError):
        checked_answer(foreign_chain, key, "dev-1")
    bad_key = answer | {"update_public_keys": ["not a key"]}
    with pytest.raises(EnrollError, match="the server's answer is not usable"):
        checked_answer(bad_key, key, "dev-1")
    without_broker = {k: v for k, v in answer.items() if k != "broker_host"}
    with pytest.raises(EnrollError, match="the server's answer is not usable"):
        checked_answer(without_broker, key, "dev-1")


def test_a_renewal_asks_again_with_the_key_it_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    identity = Identity.of(tmp_path)
    identity.folder.mkdir()
    current = generate_key()
    first = identity.renewal_key(current)
    assert identity.renewal_key(current).public_key() == first.public_key()  # a lost answer
    write_private_key(current, identity.pending_key_path)  # installed, not yet cleaned up
    assert identity.renewal_key(current).public_key() != current.public_key()
    identity.pending_key_path.write_text("not a key")
    assert identity.renewal_key(current).public_key() != current.public_key()
    assert "discarding the unreadable pending renewal key" in caplog.text
