"""The server's notices are verified by the desired state's own checks (``common/desired.py``): the
pinned key, this device, a known notice with words for the person and a time zone, issued after
the last one held; a notice is never a desired state, nor a desired state a notice."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resonera.common.desired import (
    DesiredStateRejected,
    Notice,
    NoticeRejected,
    is_notice,
    verify_desired,
    verify_notice,
)
from resonera.common.signing import sign_document_ed25519

KEY = Ed25519PrivateKey.generate()
NOW = datetime.now(UTC)


def _payload(key: Ed25519PrivateKey = KEY, **changes: Any) -> bytes:
    content: dict[str, Any] = {
        "v": 1,
        "kind": "notice",
        "device": "dev-1",
        "notice": "revoked",
        "reason": "this device was revoked on the server",
        "issued_at": NOW.isoformat(),
        **changes,
    }
    return json.dumps(sign_document_ed25519(key, content)).encode()


def _verify(payload: bytes, held: datetime | None = None) -> Notice:
    return verify_notice(payload, device_id="dev-1", pinned=KEY.public_key(), held=held)


def test_a_genuine_notice_is_taken() -> None:
    payload = _payload()
    assert is_notice(payload)
    notice = _verify(payload, held=NOW - timedelta(seconds=1))
    assert notice == Notice("revoked", "this device was revoked on the server", NOW)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (_payload(Ed25519PrivateKey.generate()), "unknown key"),
        (_payload(device="dev-2"), "for device 'dev-2'"),
        (_payload(notice="welcome"), "not one this device knows"),
        (_payload(reason=""), "reason must be"),
        (_payload(reason="x" * 501), "reason must be"),
        (_payload(issued_at="yesterday"), "no valid issued_at"),
        (_payload(issued_at=NOW.replace(tzinfo=None).isoformat()), "no time zone"),
        (_payload(kind="other"), "not a notice"),
        (b"{not json", "not valid JSON"),
    ],
)
def test_a_bad_notice_is_refused_naming_why(payload: bytes, reason: str) -> None:
    with pytest.raises(NoticeRejected, match=reason):
        _verify(payload)


def test_a_notice_not_issued_after_the_one_held_is_a_replay() -> None:
    with pytest.raises(NoticeRejected, match="replay refused"):
        _verify(_payload(), held=NOW)
    with pytest.raises(NoticeRejected, match="replay refused"):
        _verify(_payload(issued_at=(NOW - timedelta(hours=1)).isoformat()), held=NOW)


def test_a_notice_is_never_a_desired_state() -> None:
    signed = _payload(version=9)
    with pytest.raises(DesiredStateRejected, match="'notice' is not a desired state"):
        verify_desired(signed, device_id="dev-1", pinned=KEY.public_key(), applied_version=0)
    document = json.dumps(
        sign_document_ed25519(KEY, {"device": "dev-1", "version": 3, "issued_at": NOW.isoformat()})
    ).encode()
    assert not is_notice(document)
    with pytest.raises(NoticeRejected, match="not a notice"):
        _verify(document)
