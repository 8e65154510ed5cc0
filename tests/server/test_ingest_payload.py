"""Ingest validates a body straight from the payload's bytes (not from the envelope's parsed copy):
what it stores must be what the envelope, and so a signature, says, whatever the JSON looks like."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.common import topics
from resonera.common.envelope import Envelope, decode_envelope
from resonera.server.ingest import IngestProcessor, Received
from resonera.server.models import QuarantineRow, SessionRow

MakeEnvelope = Callable[..., Envelope]


def _store(engine: Engine, device: str, payload: bytes) -> tuple[list[SessionRow], list[str]]:
    result = IngestProcessor(engine).process([Received(topics.up(device, "session"), payload)])
    assert result.stored + result.quarantined == 1
    with Session(engine) as session:
        rows = list(session.exec(select(SessionRow)).all())
        reasons = [q.reason for q in session.exec(select(QuarantineRow)).all()]
    return rows, reasons


def test_a_repeated_body_key_stores_the_body_the_envelope_carries(
    engine: Engine,
    registered: Callable[..., str],
    make_envelope: MakeEnvelope,
    make_body: Callable[..., dict[str, Any]],
) -> None:
    registered("dev-dup")
    envelope = make_envelope("dev-dup", body=make_body(program_name="the-signed-one"))
    decoy = json.dumps(make_body(program_name="a-decoy"))
    text = envelope.to_bytes().decode()
    # The same key twice: JSON parsers keep the last; this one must agree with the envelope's.
    payload = text.replace('"body":', f'"body":{decoy},"body":', 1).encode()
    assert decode_envelope(payload).body["program_name"] == "the-signed-one"
    rows, reasons = _store(engine, "dev-dup", payload)
    assert reasons == []
    assert [r.program_name for r in rows] == ["the-signed-one"]


def test_an_invalid_body_is_refused_in_the_words_of_its_own_fields(
    engine: Engine,
    registered: Callable[..., str],
    make_envelope: MakeEnvelope,
    make_body: Callable[..., dict[str, Any]],
) -> None:
    registered("dev-bad")
    envelope = make_envelope("dev-bad", body=make_body(sample_rate="48000"))
    rows, reasons = _store(engine, "dev-bad", envelope.to_bytes())
    assert rows == []
    assert len(reasons) == 1
    assert reasons[0].startswith("invalid session body: sample_rate: ")
