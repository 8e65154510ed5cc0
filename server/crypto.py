"""Keys and signatures: patient fields encrypted at rest, the desired state signed, device messages
verified.

- ``FieldCipher``: AES-256-GCM per field. Stored text is ``<key id>:<base64(nonce ‖ ciphertext)>``;
  the key id travels with the ciphertext so keys can rotate (new writes use the newest key, old rows
  stay readable while their key is listed). The associated data binds a ciphertext to its patient and
  field, so one row's name cannot be pasted into another row. Keys come from a file or an environment
  variable, never from the database.
- ``DesiredStateSigner``: what signs the desired state; ``Ed25519Signer`` (server key file, the device
  pins the public key at provisioning) and ``HmacSigner`` (a shared secret, for tests and labs).
- ``verify_device_signature``: the device's signature (ECDSA P-256, as devices sign, or Ed25519) over
  ``envelope_signing_bytes`` with the key registered for it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from resonera.common.canonical import canonical_json
from resonera.common.envelope import Envelope
from resonera.common.errors import ConfigError, ResoneraError
from resonera.common.signing import (
    SignatureError,
    envelope_signing_bytes,
    verify_envelope,
)

log = logging.getLogger(__name__)

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class DecryptionError(ResoneraError):
    """A stored ciphertext cannot be read: unknown key id, or tampered data."""


def new_key_line(key_id: str = "k1") -> str:
    """A fresh ``<key id> <base64 key>`` line for a patient key file."""
    return f"{key_id} {base64.b64encode(os.urandom(KEY_BYTES)).decode()}"


def parse_keys(text: str, source: str) -> tuple[dict[str, bytes], str]:
    """Keys by id and the id of the newest (last) one; ``ConfigError`` naming ``source``."""
    keys: dict[str, bytes] = {}
    current = ""
    for number, raw in enumerate(text.replace(";", "\n").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(":", " ", 1).split()
        if len(parts) != 2 or not _KEY_ID_RE.match(parts[0]):
            raise ConfigError(f"{source} line {number}: expected '<key id> <base64 key>'")
        try:
            key = base64.b64decode(parts[1], validate=True)
        except binascii.Error:
            raise ConfigError(f"{source} line {number}: the key is not base64") from None
        if len(key) != KEY_BYTES:
            raise ConfigError(
                f"{source} line {number}: the key has {len(key)} bytes, {KEY_BYTES} are needed"
            )
        keys[parts[0]] = key
        current = parts[0]
    if not keys:
        raise ConfigError(f"{source} holds no key")
    return keys, current


class FieldCipher:
    """Encrypts and decrypts patient fields; thread-safe (no state changes after construction)."""

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if current not in keys:
            raise ConfigError(f"the current patient key {current!r} is not among the keys")
        self._aead = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self.current = current

    @classmethod
    def from_settings(
        cls, key_file: Path | None, keys_text: str | None, *, demo: bool
    ) -> FieldCipher:
        """From ``patient_key_file`` or ``patient_keys``; in demo mode a throwaway key if neither."""
        if key_file is not None:
            try:
                text = key_file.read_text()
            except OSError as exc:
                raise ConfigError(
                    f"patient_key_file {key_file} cannot be read: {exc.strerror}"
                ) from None
            return cls(*parse_keys(text, f"patient_key_file {key_file}"))
        if keys_text is not None:
            return cls(*parse_keys(keys_text, "patient_keys"))
        if demo:
            log.warning("demo mode: patient data is encrypted with a throwaway key")
            return cls(*parse_keys(new_key_line("demo"), "demo key"))
        raise ConfigError(
            "patient data needs a key: set patient_key_file (or RESONERA_SERVER_PATIENT_KEYS) to "
            "'<key id> <base64 of 32 random bytes>' lines; make one with: resonera-server new-key"
        )

    def encrypt(self, plaintext: str, *, patient_id: str, field: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[self.current].encrypt(
            nonce, plaintext.encode(), _aad(patient_id, field)
        )
        return f"{self.current}:{base64.b64encode(nonce + sealed).decode()}"

    def decrypt(self, stored: str, *, patient_id: str, field: str) -> str:
        key_id, _, blob = stored.partition(":")
        aead = self._aead.get(key_id)
        if aead is None:
            raise DecryptionError(f"patient data was encrypted with unknown key {key_id!r}")
        try:
            raw = base64.b64decode(blob, validate=True)
            return aead.decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(patient_id, field)
            ).decode()
        except (binascii.Error, InvalidTag, UnicodeDecodeError):
            raise DecryptionError(
                f"patient {patient_id} field {field} cannot be decrypted"
            ) from None

    def reencrypt(self, stored: str, *, patient_id: str, field: str) -> str | None:
        """``stored`` under the current key; None when it already is (``DecryptionError``)."""
        if key_id_of(stored) == self.current:
            return None
        plaintext = self.decrypt(stored, patient_id=patient_id, field=field)
        return self.encrypt(plaintext, patient_id=patient_id, field=field)


def key_id_of(stored: str) -> str:
    """The id of the key a stored field was encrypted with."""
    return stored.partition(":")[0]


def _aad(patient_id: str, field: str) -> bytes:
    return f"resonera/patient/{patient_id}/{field}".encode()


# -- the desired state -----------------------------------------------------------------------


class DesiredStateSigner(Protocol):
    """Signs desired-state documents. ``algorithm`` and ``key_id`` travel with the signature."""

    @property
    def algorithm(self) -> str: ...

    @property
    def key_id(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True)
class Ed25519Signer:
    private_key: Ed25519PrivateKey
    key_id: str
    algorithm: str = "ed25519"

    @classmethod
    def from_file(cls, path: Path) -> Ed25519Signer:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as exc:
            raise ConfigError(f"desired_signing_key_file {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise ConfigError(f"desired_signing_key_file {path} is not a PEM key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"desired_signing_key_file {path} is not an Ed25519 key")
        return cls.of(key)

    @classmethod
    def of(cls, key: Ed25519PrivateKey) -> Ed25519Signer:
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(key, hashlib.sha256(raw).hexdigest()[:16])

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)


@dataclass(frozen=True)
class HmacSigner:
    secret: bytes
    key_id: str = "hmac"
    algorithm: str = "hmac-sha256"

    def sign(self, message: bytes) -> bytes:
        return hmac.new(self.secret, message, hashlib.sha256).digest()


def load_signer(key_file: Path | None, *, demo: bool) -> DesiredStateSigner:
    if key_file is not None:
        return Ed25519Signer.from_file(key_file)
    if demo:
        return Ed25519Signer.of(Ed25519PrivateKey.generate())
    raise ConfigError(
        "desired_signing_key_file must be set outside demo mode (an Ed25519 PEM key; make one "
        "with: resonera-server new-signing-key FILE)"
    )


def write_signing_key(path: Path) -> str:
    """Write a new Ed25519 private key (PEM, mode 0600); return the public key as base64."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def sign_document(signer: DesiredStateSigner, document: dict[str, Any]) -> dict[str, Any]:
    """``document`` plus ``sig`` = {alg, key_id, value (base64)} over its canonical JSON."""
    value = base64.b64encode(signer.sign(canonical_json(document))).decode()
    return {**document, "sig": {"alg": signer.algorithm, "key_id": signer.key_id, "value": value}}


# -- device messages -------------------------------------------------------------------------


#: The registry's ``device.public_key`` column; a P-256 SubjectPublicKeyInfo is 124 characters.
DEVICE_KEY_MAX: Final = 128
#: Longer text is refused before it is decoded (an RSA-4096 key is about 740 characters).
_DEVICE_KEY_TEXT_MAX: Final = 4096


def check_device_public_key(value: str) -> str:
    """``value`` if ``verify_device_signature`` can check messages with it: canonical base64 (with
    its ``=`` padding) of the DER SubjectPublicKeyInfo of an ECDSA P-256 key, what devices sign
    with, or of a raw 32-byte Ed25519 key. Otherwise ``ValueError`` saying what it is instead."""
    if len(value) > _DEVICE_KEY_TEXT_MAX:
        raise ValueError(f"is {len(value)} characters, longer than any device key")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "is not base64 (A-Z, a-z, 0-9, + and /, padded with = to a multiple of 4 characters)"
        ) from None
    if base64.b64encode(raw).decode() != value:
        raise ValueError("is not canonical base64 (encoding its bytes again gives other text)")
    if len(raw) == 32:
        Ed25519PublicKey.from_public_bytes(raw)
        return value
    try:
        key = serialization.load_der_public_key(raw)
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(
            f"is {len(raw)} bytes that are neither a raw 32-byte Ed25519 key nor the DER "
            "SubjectPublicKeyInfo of a public key"
        ) from None
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        if len(value) > DEVICE_KEY_MAX:  # no P-256 key is this long; kept for the column's sake
            raise ValueError(f"is longer than {DEVICE_KEY_MAX} characters")
        return value
    if isinstance(key, ec.EllipticCurvePublicKey):
        kind = f"an ECDSA {key.curve.name} key"
    elif isinstance(key, rsa.RSAPublicKey):
        kind = f"an RSA-{key.key_size} key"
    elif isinstance(key, Ed25519PublicKey):
        kind = "an Ed25519 key as SubjectPublicKeyInfo (give the raw 32 bytes instead)"
    else:
        kind = f"a {type(key).__name__.lstrip('_')}"
    raise ValueError(
        f"is {kind}; devices sign with ECDSA P-256 (base64 DER SubjectPublicKeyInfo) or Ed25519 "
        "(base64 of the raw 32-byte key)"
    )


def verify_device_signature(envelope: Envelope, public_key_b64: str) -> str | None:
    """None if ``envelope.sig`` verifies with the device's registered key; else the reason.

    The key is base64: of the DER SubjectPublicKeyInfo of the device certificate's ECDSA P-256 key
    (what devices sign with, ``common.signing``), or of a raw 32-byte Ed25519 key. Both sign the
    canonical JSON of the envelope without ``sig``."""
    if envelope.sig is None:
        return "unsigned message from a device with a registered key"
    try:
        raw = base64.b64decode(public_key_b64, validate=True)
        if len(raw) == 32:
            Ed25519PublicKey.from_public_bytes(raw).verify(
                base64.b64decode(envelope.sig, validate=True), envelope_signing_bytes(envelope)
            )
            return None
        key = serialization.load_der_public_key(raw)
    except (binascii.Error, ValueError):
        return "signature or registered key is not valid base64 of the expected kind"
    except InvalidSignature:
        return "signature does not verify with the device's registered key"
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return "the registered key is neither ECDSA P-256 nor Ed25519"
    try:
        verify_envelope(envelope, key)
    except SignatureError:
        return "signature does not verify with the device's registered key"
    return None
