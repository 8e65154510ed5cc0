from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resonera.common.envelope import (
    MAX_PAYLOAD_BYTES,
    Ack,
    Envelope,
    check_topic_matches,
    decode_ack,
    decode_envelope,
)
from resonera.common.errors import ProtocolError
from resonera.common.ids import is_time_ordered_id, new_id


def envelope(**changes: object) -> Envelope:
    base = Envelope.create(device="dev-1", seq=7, kind="session", body={"x": 1})
    return base.model_copy(update=changes)


def payload(**changes: object) -> bytes:
    data = json.loads(envelope().to_bytes())
    data.update(changes)
    return json.dumps(data).encode()


def test_round_trip() -> None:
    env = envelope()
    assert decode_envelope(env.to_bytes()) == env


def test_ids_are_time_ordered_and_unique() -> None:
    ids = [new_id() for _ in range(2000)]
    assert all(is_time_ordered_id(i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"v": 2}, "v:"),
        ({"id": "not-a-uuid"}, "id:"),
        ({"id": "6ba7b810-9dad-11d1-80b4-00c04fd430c8"}, "UUIDv7"),
        ({"device": "bad/device"}, "device:"),
        ({"seq": -1}, "seq:"),
        ({"seq": "7"}, "seq:"),
        ({"time": "2026-01-01T00:00:00"}, "time zone"),
        ({"kind": "gossip"}, "kind:"),
        ({"body": []}, "body:"),
        ({"extra": 1}, "extra:"),
    ],
)
def test_malformed_fields_are_named(changes: dict[str, object], complaint: str) -> None:
    with pytest.raises(ProtocolError, match="malformed envelope") as info:
        decode_envelope(payload(**changes))
    assert complaint in str(info.value)


def test_missing_id_is_refused_not_invented() -> None:
    data = json.loads(envelope().to_bytes())
    del data["id"]
    with pytest.raises(ProtocolError, match="id: Field required"):
        decode_envelope(json.dumps(data).encode())


def test_times_are_normalised_to_utc() -> None:
    local = datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    env = decode_envelope(payload(time=local.isoformat()))
    assert env.time == datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


def test_oversized_and_non_json_payloads() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_envelope(b" " * (MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(ProtocolError, match="malformed envelope"):
        decode_envelope(b"\xff\xfe not json")


@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_escape_as_anything_but_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_envelope(data)


def test_topic_must_name_the_envelopes_device_and_kind() -> None:
    env = envelope()
    check_topic_matches("resonera/v1/dev/dev-1/up/session", env)
    with pytest.raises(ProtocolError, match="names device 'dev-2'"):
        check_topic_matches("resonera/v1/dev/dev-2/up/session", env)
    with pytest.raises(ProtocolError, match="names kind 'event'"):
        check_topic_matches("resonera/v1/dev/dev-1/up/event", env)
    with pytest.raises(ProtocolError, match="not a device up-topic"):
        check_topic_matches("resonera/v1/dev/dev-1/desired", env)


def test_ack_round_trip_and_limits() -> None:
    ack = Ack.of([new_id(), new_id()])
    assert decode_ack(ack.to_bytes()) == ack
    with pytest.raises(ProtocolError, match="ids"):
        decode_ack(b'{"v": 1, "ids": []}')
    with pytest.raises(ProtocolError, match="ids"):
        decode_ack(b'{"v": 1, "ids": ["x"]}')
