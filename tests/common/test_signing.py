from __future__ import annotations

import pytest

from resonera.common.envelope import Envelope, decode_envelope
from resonera.common.identity import generate_key
from resonera.common.signing import SignatureError, sign_envelope, verify_envelope


def test_a_device_signed_envelope_survives_the_wire_and_verifies() -> None:
    key = generate_key()
    envelope = Envelope.create(device="dev-1", seq=3, kind="event", body={"x": 1.25, "why": "é"})
    signed = sign_envelope(envelope, key)
    received = decode_envelope(signed.to_bytes())
    verify_envelope(received, key.public_key())


def test_a_changed_body_or_another_key_fails() -> None:
    key = generate_key()
    signed = sign_envelope(Envelope.create(device="d", seq=0, kind="event", body={"a": 1}), key)
    tampered = signed.model_copy(update={"body": {"a": 2}})
    with pytest.raises(SignatureError, match="does not verify"):
        verify_envelope(tampered, key.public_key())
    with pytest.raises(SignatureError, match="does not verify"):
        verify_envelope(signed, generate_key().public_key())
    with pytest.raises(SignatureError, match="not signed"):
        verify_envelope(signed.model_copy(update={"sig": None}), key.public_key())
