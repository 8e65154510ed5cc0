"""IngestProcessor on a throwaway store (SQLite and PostgreSQL): no broker involved."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from factories import RECENT, event_body
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.server.db import make_engine
from resonera.server.ingest import IngestProcessor, Received, StoreError
from resonera.server.models import (
    QUARANTINE_PAYLOAD_MAX,
    MessageRow,
    QuarantineRow,
    SafetyEventRow,
    SessionRow,
)

MakeBody = Callable[..., dict[str, Any]]
MakeEnvelope = Callable[..., Envelope]
#: The processor's clock: the day after the sessions of ``session_body`` (at ``RECENT``).
NOW = RECENT + timedelta(days=1, hours=3)


@pytest.fixture(autouse=True)
def _devices(registered: Callable[..., str]) -> None:
    registered("dev-a")
    registered("dev-b")


@pytest.fixture
def make_envelope(make_envelope: MakeEnvelope) -> MakeEnvelope:
    """Envelopes stamped on this module's clock."""
    return functools.partial(make_envelope, time=NOW)


def _processor(engine: Engine) -> IngestProcessor:
    return IngestProcessor(engine, clock=lambda: NOW)


def _sessions(engine: Engine) -> list[SessionRow]:
    with Session(engine) as session:
        return list(session.exec(select(SessionRow)).all())


def _quarantine(engine: Engine) -> list[QuarantineRow]:
    with Session(engine) as session:
        return list(session.exec(select(QuarantineRow)).all())


def test_valid_session_is_stored_with_its_fields(
    engine: Engine, make_envelope: MakeEnvelope
) -> None:
    envelope = make_envelope("dev-a", seq=7)
    result = _processor(engine).process(
        [Received(topics.up("dev-a", "session"), envelope.to_bytes())]
    )
    assert result.committed == {"dev-a": [envelope.id]}
    assert (result.stored, result.duplicates, result.quarantined) == (1, 0, 0)
    (row,) = _sessions(engine)
    assert (row.device_id, row.message_id, row.seq) == ("dev-a", envelope.id, 7)
    assert row.session_id == envelope.body["session_id"]
    assert row.started_at == datetime.fromisoformat(envelope.body["started_at"])
    assert row.received_at == NOW
    assert row.simulation is True


def test_same_message_twice_is_stored_once_and_acked_both_times(
    engine: Engine, make_envelope: MakeEnvelope
) -> None:
    processor = _processor(engine)
    envelope = make_envelope("dev-a")
    message = Received(topics.up("dev-a", "session"), envelope.to_bytes())
    first = processor.process([message])
    second = processor.process([message])
    assert first.committed == second.committed == {"dev-a": [envelope.id]}
    assert (second.stored, second.duplicates) == (0, 1)
    assert len(_sessions(engine)) == 1
    assert processor.counters == {"received": 2, "stored": 1, "duplicates": 1, "quarantined": 0}


def test_duplicate_within_one_batch_is_acked_once(
    engine: Engine, make_envelope: MakeEnvelope
) -> None:
    envelope = make_envelope("dev-a")
    message = Received(topics.up("dev-a", "session"), envelope.to_bytes())
    result = _processor(engine).process([message, message])
    assert result.committed == {"dev-a": [envelope.id]}
    assert (result.stored, result.duplicates) == (1, 1)
    assert len(_sessions(engine)) == 1


def test_events_and_other_kinds_get_their_tables(
    engine: Engine, make_envelope: MakeEnvelope
) -> None:
    body = event_body(cause="dc offset")
    event = make_envelope("dev-b", kind="event", body=body)
    metric = make_envelope("dev-b", kind="metrics", body={"outbox_depth": 3}, seq=1)
    result = _processor(engine).process(
        [
            Received(topics.up("dev-b", "event"), event.to_bytes()),
            Received(topics.up("dev-b", "metrics"), metric.to_bytes()),
        ]
    )
    assert result.committed == {"dev-b": [event.id, metric.id]}
    with Session(engine) as session:
        (stored_event,) = session.exec(select(SafetyEventRow)).all()
        (row,) = session.exec(select(MessageRow)).all()
    assert (stored_event.event_type, stored_event.message_id) == ("fault", event.id)
    assert stored_event.body == body
    assert stored_event.sig_status == "unsigned"
    assert (row.kind, row.message_id) == ("metrics", metric.id)
    assert json.loads(row.body) == {"outbox_depth": 3}


def test_acks_are_grouped_per_device_in_arrival_order(
    engine: Engine, make_envelope: MakeEnvelope
) -> None:
    a1, b1, a2 = make_envelope("dev-a"), make_envelope("dev-b"), make_envelope("dev-a", seq=1)
    batch = [Received(topics.up(e.device, "session"), e.to_bytes()) for e in (a1, b1, a2)]
    result = _processor(engine).process(batch)
    assert result.committed == {"dev-a": [a1.id, a2.id], "dev-b": [b1.id]}


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("malformed json", "malformed envelope"),
        ("other device", "topic names device 'dev-a' but the envelope names 'dev-evil'"),
        ("other kind", "topic names kind 'event'"),
        ("bad topic", "is not a device up-topic"),
        ("bad body", "invalid session body: sample_rate"),
        ("extra body field", "invalid session body: volume"),
    ],
)
def test_bad_messages_are_quarantined_and_the_rest_stored(
    *,
    engine: Engine,
    make_envelope: MakeEnvelope,
    make_body: MakeBody,
    caplog: pytest.LogCaptureFixture,
    case: str,
    reason: str,
) -> None:
    topic = topics.up("dev-a", "session")
    payload = {
        "malformed json": (topic, b'{"v": 1, "id": '),
        "other device": (topic, make_envelope("dev-evil").to_bytes()),
        "other kind": (topics.up("dev-a", "event"), make_envelope("dev-a").to_bytes()),
        "bad topic": ("resonera/v1/dev/dev-a/down", make_envelope("dev-a").to_bytes()),
        "bad body": (topic, make_envelope("dev-a", body=make_body(sample_rate="48000")).to_bytes()),
        "extra body field": (topic, make_envelope("dev-a", body=make_body(volume=11)).to_bytes()),
    }[case]
    good_before, good_after = make_envelope("dev-a"), make_envelope("dev-a", seq=2)
    batch = [
        Received(topic, good_before.to_bytes()),
        Received(*payload),
        Received(topic, good_after.to_bytes()),
    ]
    with caplog.at_level(logging.WARNING, logger="resonera.server.ingest"):
        result = _processor(engine).process(batch)
    # A body the device's own schema refuses will never validate: acked so it is not resent.
    refused = [json.loads(payload[1])["id"]] if "body" in case else []
    assert result.committed == {"dev-a": [good_before.id, good_after.id, *refused]}
    assert result.quarantined == 1
    (quarantined,) = _quarantine(engine)
    assert reason in quarantined.reason
    assert "\n" not in quarantined.reason
    assert quarantined.topic == payload[0]
    assert quarantined.payload == payload[1]
    assert quarantined.received_at == NOW
    assert len(_sessions(engine)) == 2
    assert any(reason in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_huge_payload_is_quarantined_truncated(engine: Engine) -> None:
    payload = b"x" * (QUARANTINE_PAYLOAD_MAX * 5)
    result = _processor(engine).process([Received(topics.up("dev-a", "session"), payload)])
    assert result.committed == {}
    (row,) = _quarantine(engine)
    assert len(row.payload) == QUARANTINE_PAYLOAD_MAX
    assert "exceeds" in row.reason


def test_database_failure_raises_and_commits_nothing(make_envelope: MakeEnvelope) -> None:
    bare = make_engine("sqlite://")  # no tables: every query fails
    envelope = make_envelope("dev-a")
    processor = IngestProcessor(bare)
    with pytest.raises(StoreError, match="storing a batch failed"):
        processor.process([Received(topics.up("dev-a", "session"), envelope.to_bytes())])
    assert processor.counters["stored"] == 0


def test_stored_times_compare_with_query_times_to_the_microsecond(
    engine: Engine, make_envelope: MakeEnvelope, make_body: MakeBody
) -> None:
    start = RECENT  # a whole second: no microseconds to write
    envelope = make_envelope("dev-a", body=make_body(start=start))
    _processor(engine).process([Received(topics.up("dev-a", "session"), envelope.to_bytes())])
    with Session(engine) as session:
        found = session.exec(
            select(SessionRow.message_id).where(
                col(SessionRow.started_at) >= start, col(SessionRow.started_at) <= start
            )
        ).all()
    assert found == [envelope.id]
