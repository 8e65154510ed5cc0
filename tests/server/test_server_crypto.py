"""Patient fields encrypted at rest (AES-GCM, key ids, rotation) and desired-state signatures."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from resonera.common.canonical import canonical_json
from resonera.common.errors import ConfigError
from resonera.server.crypto import (
    DecryptionError,
    Ed25519Signer,
    FieldCipher,
    HmacSigner,
    load_signer,
    new_key_line,
    parse_keys,
    sign_document,
    write_signing_key,
)


def test_round_trip_and_ciphertext_names_its_key() -> None:
    cipher = FieldCipher(*parse_keys(new_key_line("k7"), "test"))
    stored = cipher.encrypt("Ada Lovelace", patient_id="p1", field="name")
    assert stored.startswith("k7:")
    assert "Ada" not in stored
    assert cipher.decrypt(stored, patient_id="p1", field="name") == "Ada Lovelace"
    assert cipher.encrypt("Ada Lovelace", patient_id="p1", field="name") != stored  # fresh nonce


def test_ciphertext_is_bound_to_patient_and_field() -> None:
    cipher = FieldCipher(*parse_keys(new_key_line(), "test"))
    stored = cipher.encrypt("secret", patient_id="p1", field="notes")
    with pytest.raises(DecryptionError):
        cipher.decrypt(stored, patient_id="p2", field="notes")
    with pytest.raises(DecryptionError):
        cipher.decrypt(stored, patient_id="p1", field="name")


def test_rotation_new_key_encrypts_old_keys_still_decrypt() -> None:
    old_line = new_key_line("old")
    old = FieldCipher(*parse_keys(old_line, "test"))
    stored = old.encrypt("x", patient_id="p", field="name")
    rotated = FieldCipher(*parse_keys(f"{old_line}\n{new_key_line('new')}\n", "test"))
    assert rotated.current == "new"
    assert rotated.decrypt(stored, patient_id="p", field="name") == "x"
    assert rotated.encrypt("y", patient_id="p", field="name").startswith("new:")
    with pytest.raises(DecryptionError, match="unknown key 'new'"):
        old.decrypt(
            rotated.encrypt("y", patient_id="p", field="name"), patient_id="p", field="name"
        )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no key"),
        ("k1", "expected '<key id> <base64 key>'"),
        ("k1 not-base64!", "not base64"),
        ("k1 " + base64.b64encode(b"short").decode(), "5 bytes, 32 are needed"),
    ],
)
def test_bad_key_text_is_a_clear_config_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_keys(text, "patient_key_file x")


def test_env_style_keys_with_colon_and_semicolon() -> None:
    a, b = new_key_line("a").replace(" ", ":"), new_key_line("b").replace(" ", ":")
    keys, current = parse_keys(f"{a};{b}", "patient_keys")
    assert sorted(keys) == ["a", "b"]
    assert current == "b"


def test_missing_key_outside_demo_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="patient data needs a key"):
        FieldCipher.from_settings(None, None, demo=False)
    with pytest.raises(ConfigError, match="cannot be read"):
        FieldCipher.from_settings(tmp_path / "missing", None, demo=False)
    assert FieldCipher.from_settings(None, None, demo=True).current == "demo"
    path = tmp_path / "keys"
    path.write_text(new_key_line("f1") + "\n")
    assert FieldCipher.from_settings(path, None, demo=False).current == "f1"


def test_ed25519_signed_document_verifies_with_the_public_key(tmp_path: Path) -> None:
    public = write_signing_key(tmp_path / "signing.pem")
    signer = Ed25519Signer.from_file(tmp_path / "signing.pem")
    document = sign_document(signer, {"device": "d", "version": 3, "limits": {"a": 1.5}})
    sig = document.pop("sig")
    assert sig["alg"] == "ed25519"
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public))
    key.verify(base64.b64decode(sig["value"]), canonical_json(document))  # raises if not


def test_signing_key_file_is_never_overwritten(tmp_path: Path) -> None:
    write_signing_key(tmp_path / "k.pem")
    with pytest.raises(FileExistsError):
        write_signing_key(tmp_path / "k.pem")


def test_signer_needed_outside_demo(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="desired_signing_key_file must be set"):
        load_signer(None, demo=False)
    (tmp_path / "bad.pem").write_text("nope")
    with pytest.raises(ConfigError, match="is not a PEM key"):
        load_signer(tmp_path / "bad.pem", demo=False)
    assert load_signer(None, demo=True).algorithm == "ed25519"


def test_hmac_signer_is_deterministic() -> None:
    signer = HmacSigner(b"k")
    one = sign_document(signer, {"b": 1, "a": [1, 2]})
    assert one == sign_document(signer, json.loads(json.dumps({"a": [1, 2], "b": 1})))
