"""Signatures shared by the server and the device: what bytes are signed, and how they are checked.

- The desired state (server → device) is signed by the server's Ed25519 key, which the device pins at
  provisioning: ``{"sig": {"alg": "ed25519", "key_id": ..., "value": base64}}`` over the canonical JSON of
  the document without ``sig``.
- Device messages are signed by the device's own key (the ECDSA P-256 key of its certificate) over the
  canonical JSON of the envelope without ``sig``.

Canonical JSON: keys sorted, no spaces, UTF-8 (``ensure_ascii=False``). Both sides are Python, whose
float ``repr`` round-trips, so parsing and re-serialising a document yields the bytes that were signed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from resonera.common.canonical import canonical_json
from resonera.common.envelope import Envelope
from resonera.common.errors import ProtocolError


class SignatureError(ProtocolError):
    """A signature is missing, malformed, by an unknown key, or does not verify."""


def ed25519_key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def ed25519_public_key_from_b64(text: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        raise SignatureError("the pinned server key is not base64 of a raw Ed25519 key") from None


def sign_document_ed25519(key: Ed25519PrivateKey, document: dict[str, Any]) -> dict[str, Any]:
    """``document`` plus its ``sig`` block."""
    value = base64.b64encode(key.sign(canonical_json(document))).decode()
    key_id = ed25519_key_id(key.public_key())
    return {**document, "sig": {"alg": "ed25519", "key_id": key_id, "value": value}}


def verify_document_ed25519(document: dict[str, Any], pinned: Ed25519PublicKey) -> dict[str, Any]:
    """Check ``document['sig']`` against the pinned key; return the document without ``sig``."""
    sig = document.get("sig")
    if not isinstance(sig, dict):
        raise SignatureError("the document carries no signature")
    if sig.get("alg") != "ed25519":
        raise SignatureError(
            f"signature algorithm {sig.get('alg')!r} is not accepted (ed25519 only)"
        )
    if sig.get("key_id") != ed25519_key_id(pinned):
        raise SignatureError(
            f"signed by unknown key {sig.get('key_id')!r}, not the pinned server key"
        )
    unsigned = {k: v for k, v in document.items() if k != "sig"}
    try:
        pinned.verify(
            base64.b64decode(str(sig.get("value")), validate=True), canonical_json(unsigned)
        )
    except (binascii.Error, ValueError):
        raise SignatureError("the signature is not valid base64") from None
    except InvalidSignature:
        raise SignatureError("the signature does not verify with the pinned server key") from None
    return unsigned


def sign_ecdsa(key: ec.EllipticCurvePrivateKey, payload: dict[str, Any]) -> str:
    """Base64 DER ECDSA-SHA256 signature over the canonical JSON of ``payload``."""
    return base64.b64encode(key.sign(canonical_json(payload), ec.ECDSA(hashes.SHA256()))).decode()


def verify_ecdsa(public_key: ec.EllipticCurvePublicKey, payload: dict[str, Any], sig: str) -> None:
    try:
        public_key.verify(
            base64.b64decode(sig, validate=True), canonical_json(payload), ec.ECDSA(hashes.SHA256())
        )
    except (binascii.Error, ValueError):
        raise SignatureError("the signature is not valid base64") from None
    except InvalidSignature:
        raise SignatureError("the signature does not verify with the device's key") from None


def envelope_signing_payload(envelope: Envelope) -> dict[str, Any]:
    """What a device signs: the envelope without ``sig`` (``time`` in UTC, as serialised)."""
    payload: dict[str, Any] = envelope.model_dump(mode="json", exclude={"sig"})
    return payload


def envelope_signing_bytes(envelope: Envelope) -> bytes:
    """The exact bytes a device signs (any algorithm)."""
    return canonical_json(envelope_signing_payload(envelope))


def sign_envelope(envelope: Envelope, key: ec.EllipticCurvePrivateKey) -> Envelope:
    return envelope.model_copy(update={"sig": sign_ecdsa(key, envelope_signing_payload(envelope))})


def verify_envelope(envelope: Envelope, public_key: ec.EllipticCurvePublicKey) -> None:
    """Raise ``SignatureError`` unless ``envelope.sig`` is the device key's signature."""
    if envelope.sig is None:
        raise SignatureError("the message is not signed")
    verify_ecdsa(public_key, envelope_signing_payload(envelope), envelope.sig)
