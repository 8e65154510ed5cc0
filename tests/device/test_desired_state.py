from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resonera.common.canonical import canonical_json
from resonera.common.desired import DesiredStateRejected, verify_desired
from resonera.common.signing import sign_document_ed25519

SERVER_KEY = Ed25519PrivateKey.generate()
PINNED = SERVER_KEY.public_key()


def document(**changes: Any) -> dict[str, Any]:
    base = {"v": 1, "device": "dev-1", "version": 5, "profile": {"max_level_dba": 80}}
    base.update(changes)
    return sign_document_ed25519(SERVER_KEY, base)


def verify(doc: dict[str, Any] | bytes, applied: int = 4) -> Any:
    payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return verify_desired(payload, device_id="dev-1", pinned=PINNED, applied_version=applied)


def test_a_newer_signed_document_is_accepted() -> None:
    accepted = verify(document())
    assert accepted.version == 5
    assert accepted.profile == {"max_level_dba": 80}


def test_tampered_documents_are_refused() -> None:
    doc = document()
    doc["profile"] = {"max_level_dba": 110}
    with pytest.raises(DesiredStateRejected, match="does not verify"):
        verify(doc)


def test_replayed_and_rolled_back_documents_are_refused() -> None:
    with pytest.raises(DesiredStateRejected, match="not newer than the applied version 5"):
        verify(document(version=5), applied=5)
    with pytest.raises(DesiredStateRejected, match="not newer"):
        verify(document(version=3), applied=5)


def test_documents_signed_by_another_key_are_refused() -> None:
    other = sign_document_ed25519(Ed25519PrivateKey.generate(), {"device": "dev-1", "version": 9})
    with pytest.raises(DesiredStateRejected, match="unknown key"):
        verify(other)
    forged = dict(other)
    forged["sig"] = {**other["sig"], "key_id": document()["sig"]["key_id"]}
    with pytest.raises(DesiredStateRejected, match="does not verify"):
        verify(forged)


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (json.dumps({"device": "dev-1", "version": 9}).encode(), "no signature"),
    ],
)
def test_malformed_documents_are_refused(payload: bytes, complaint: str) -> None:
    with pytest.raises(DesiredStateRejected, match=complaint):
        verify(payload)


def test_a_document_for_another_device_is_refused() -> None:
    with pytest.raises(DesiredStateRejected, match="for device 'dev-2'"):
        verify(document(device="dev-2"))


def test_wrong_algorithm_is_refused() -> None:
    doc = document()
    doc["sig"]["alg"] = "none"
    with pytest.raises(DesiredStateRejected, match="not accepted"):
        verify(doc)


def test_canonical_form_ignores_key_order_and_spacing() -> None:
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'.encode()
