"""Ingest does not take a device's word for its clock (issue 26, finding 4) nor for a message id
(finding 5, the id reused with other content).

Every device time in a message is bounded by the receive time (the processor's injected clock):
at most ``TimeBounds.skew`` later, at most ``max_age`` earlier; a record dated into an assignment
that had ended before it arrived is not written into that former patient's record. What fails is
quarantined with a reason naming the field, the time and the receive time, and acknowledged (the
device sent it so, and resending will not change it). A message id stored with one content and
sent again with another is quarantined and acknowledged; the same content again is a duplicate.
``IngestProcessor`` on SQLite and PostgreSQL, then signed sessions through a mutual-TLS mosquitto.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from factories import RECENT, WallClock, event_body
from fleet import PASSPHRASE, TlsBroker, run_tls_broker
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from support import wait_until

from resonera.common import topics
from resonera.common.envelope import Envelope, decode_ack
from resonera.common.ids import new_id
from resonera.common.mqtt_client import build_client, connect, stop_loop
from resonera.common.signing import sign_envelope
from resonera.server.ingest import BatchResult, IngestProcessor, Received
from resonera.server.ingest_checks import TimeBounds
from resonera.server.ingest_mqtt import IngestConsumer
from resonera.server.models import (
    AssignmentRow,
    CheckInRow,
    DeviceStateRow,
    DoseDailyRow,
    MessageRow,
    QuarantineRow,
    SafetyEventRow,
    SessionRow,
)
from resonera.server.settings import ServerSettings
from resonera.stack.fleet_sim import issue_device, register_devices

MakeEnvelope = Callable[..., Envelope]
MakeBody = Callable[..., dict[str, Any]]
#: The receive time of most batches here (the processor's clock starts there).
NOW = RECENT + timedelta(days=2)
SKEW = TimeBounds().skew
MAX_AGE = TimeBounds().max_age
FAR_FUTURE = datetime(2999, 1, 1, 9, 0, tzinfo=UTC)
FAR_PAST = datetime(1971, 1, 1, 9, 0, tzinfo=UTC)


def _iso(value: datetime) -> str:
    return value.isoformat()


def _process(processor: IngestProcessor, *envelopes: Envelope) -> BatchResult:
    return processor.process(
        [Received(topics.up(e.device, e.kind), e.to_bytes()) for e in envelopes]
    )


def _quarantine(engine: Engine) -> list[QuarantineRow]:
    with Session(engine) as session:
        return list(session.exec(select(QuarantineRow).order_by(QuarantineRow.id)).all())  # type: ignore[arg-type]


def _sessions(engine: Engine) -> dict[str, SessionRow]:
    with Session(engine) as session:
        return {row.message_id: row for row in session.exec(select(SessionRow))}


def _checkin(device: str, at: datetime) -> dict[str, Any]:
    return {
        "id": new_id(),
        "session_id": new_id(),
        "device_id": device,
        "question_id": "relax",
        "phase": "after",
        "value": 6,
        "answered_at": at.isoformat(),
    }


@pytest.fixture
def clock() -> WallClock:
    return WallClock(NOW)


@pytest.fixture
def processor(engine: Engine, clock: WallClock) -> IngestProcessor:
    return IngestProcessor(engine, clock=clock)


# -- the bounds --------------------------------------------------------------------------------

#: (kind, the field named in the reason, how to date the message there): every device time.
FIELDS: list[tuple[topics.UpKind, str]] = [
    ("metrics", "time"),
    ("session", "body.started_at"),
    ("event", "body.at"),
    ("checkin", "body.answered_at"),
]


def _dated(
    make_envelope: MakeEnvelope, make_body: MakeBody, kind: str, field: str, at: datetime
) -> Envelope:
    """A valid message of ``kind`` from dev-t whose ``field`` is ``at`` (the others now)."""
    if field == "time":
        return make_envelope("dev-t", kind=kind, body={"outbox_depth": 1}, time=at)
    body = {
        "session": lambda: make_body(start=at, minutes=0.5),
        "event": lambda: event_body(at=at.isoformat()),
        "checkin": lambda: _checkin("dev-t", at),
    }[kind]()
    return make_envelope("dev-t", kind=kind, body=body, time=NOW)


@pytest.mark.parametrize(("kind", "field"), FIELDS)
@pytest.mark.parametrize(
    ("at", "beyond"),
    [
        (FAR_FUTURE, "later than the receive time {now} plus 300 s"),
        (NOW + SKEW + timedelta(seconds=1), "later than the receive time {now} plus 300 s"),
        (FAR_PAST, "earlier than the receive time {now} minus 90 days"),
        (NOW - MAX_AGE - timedelta(seconds=1), "earlier than the receive time {now} minus 90 days"),
    ],
    ids=["2999", "just-ahead", "1971", "just-too-old"],
)
def test_a_device_time_beyond_the_bounds_is_quarantined_and_acknowledged(
    *,
    engine: Engine,
    processor: IngestProcessor,
    registered: Callable[..., str],
    make_envelope: MakeEnvelope,
    make_body: MakeBody,
    kind: str,
    field: str,
    at: datetime,
    beyond: str,
) -> None:
    registered("dev-t")
    good = make_envelope("dev-t", body=make_body(start=NOW - timedelta(hours=1)), time=NOW)
    bad = _dated(make_envelope, make_body, kind, field, at)

    result = _process(processor, good, bad)

    # Acknowledged: the device sent it so, and will never send it otherwise.
    assert result.committed == {"dev-t": [good.id, bad.id]}
    assert (result.stored, result.duplicates, result.quarantined) == (1, 0, 1)
    (row,) = _quarantine(engine)
    assert row.reason == f"device time {field} {_iso(at)} is {beyond.format(now=_iso(NOW))}"
    assert (row.device_id, row.payload, row.received_at) == ("dev-t", bad.to_bytes(), NOW)
    assert set(_sessions(engine)) == {good.id}
    with Session(engine) as session:
        assert session.exec(select(SafetyEventRow)).all() == []
        assert session.exec(select(CheckInRow)).all() == []
        assert session.exec(select(MessageRow)).all() == []


@pytest.mark.parametrize(("kind", "field"), FIELDS)
@pytest.mark.parametrize("at", [NOW + SKEW, NOW - MAX_AGE], ids=["skew-ahead", "max-age"])
def test_device_times_at_the_bounds_are_believed(
    *,
    engine: Engine,
    processor: IngestProcessor,
    registered: Callable[..., str],
    make_envelope: MakeEnvelope,
    make_body: MakeBody,
    kind: str,
    field: str,
    at: datetime,
) -> None:
    registered("dev-t")
    message = _dated(make_envelope, make_body, kind, field, at)
    if kind == "session" and at > NOW:  # its end too is at the bound
        message = make_envelope(
            "dev-t", body=make_body(start=at - timedelta(minutes=1), minutes=1), time=NOW
        )
    result = _process(processor, message)
    assert (result.stored, result.quarantined) == (1, 0)
    assert _quarantine(engine) == []


def test_a_session_ending_ahead_or_before_its_start_is_quarantined(
    engine: Engine,
    processor: IngestProcessor,
    registered: Callable[..., str],
    make_envelope: MakeEnvelope,
    make_body: MakeBody,
) -> None:
    registered("dev-t")
    start = NOW - timedelta(minutes=1)
    ahead = make_envelope("dev-t", body=make_body(start=start, minutes=10), time=NOW)
    body = make_body(start=start, minutes=-5, planned_s=0.0, played_s=0.0)
    backwards = make_envelope("dev-t", body=body, time=NOW, seq=1)
    result = _process(processor, ahead, backwards)
    assert result.committed == {"dev-t": [ahead.id, backwards.id]}
    assert [row.reason for row in _quarantine(engine)] == [
        f"device time body.ended_at {_iso(start + timedelta(minutes=10))} is later than the "
        f"receive time {_iso(NOW)} plus 300 s",
        f"device time body.ended_at {_iso(start - timedelta(minutes=5))} is before "
        f"body.started_at {_iso(start)}",
    ]


def test_the_bounds_are_server_settings(
    engine: Engine,
    clock: WallClock,
    registered: Callable[..., str],
    make_envelope: MakeEnvelope,
    make_body: MakeBody,
) -> None:
    registered("dev-t")
    settings = ServerSettings(device_time_skew_s=60, device_time_max_age_days=7)
    bounds = TimeBounds.from_settings(settings)
    assert bounds == TimeBounds(skew=timedelta(seconds=60), max_age=timedelta(days=7))
    assert TimeBounds.from_settings(ServerSettings()) == TimeBounds()
    strict = IngestProcessor(engine, clock=clock, bounds=bounds)
    ahead = make_envelope("dev-t", kind="metrics", body={}, time=NOW + timedelta(minutes=2))
    old = make_envelope("dev-t", body=make_body(start=NOW - timedelta(days=8)), time=NOW, seq=1)
    result = _process(strict, ahead, old)
    assert result.quarantined == 2
    assert [row.reason for row in _quarantine(engine)] == [
        f"device time time {_iso(ahead.time)} is later than the receive time {_iso(NOW)} plus 60 s",
        f"device time body.started_at {_iso(NOW - timedelta(days=8))} is earlier than the "
        f"receive time {_iso(NOW)} minus 7 days",
    ]
    # the default bounds believe both
    again = IngestProcessor(engine, clock=clock)
    assert _process(again, ahead, old).stored == 2


# -- the assignment period ---------------------------------------------------------------------


def _assign(
    engine: Engine, device: str, patient: str, start: datetime, end: datetime | None
) -> None:
    with Session(engine) as session:
        session.add(
            AssignmentRow(
                device_id=device,
                patient_id=patient,
                valid_from=start,
                valid_to=end,
                created_at=start,
            )
        )
        session.commit()


def _patients(engine: Engine) -> dict[str, str | None]:
    with Session(engine) as session:
        rows: dict[str, str | None] = {
            r.message_id: r.patient_id for r in session.exec(select(SessionRow))
        }
        rows |= {r.message_id: r.patient_id for r in session.exec(select(SafetyEventRow))}
        return rows


def test_a_reassigned_device_cannot_date_records_into_the_former_patients_period(
    *,
    engine: Engine,
    clock: WallClock,
    make_patient: Callable[..., str],
    registered: Callable[..., str],
    make_envelope: MakeEnvelope,
    make_body: MakeBody,
) -> None:
    """dev-r was the former patient's for 29 days, then the new patient's: what it sends after
    the change, dated into the former period, stays out of the former patient's record (their
    dose and adherence); what it sent while it was theirs is theirs."""
    former, new = make_patient(name="Former"), make_patient(name="New")
    registered("dev-r")
    handed_over = NOW - timedelta(days=1)
    _assign(engine, "dev-r", former, NOW - timedelta(days=30), handed_over)
    _assign(engine, "dev-r", new, handed_over, None)
    processor = IngestProcessor(engine, clock=clock)
    seq = iter(range(100))

    def session(start: datetime, minutes: float = 10) -> Envelope:
        body = make_body(start=start, minutes=minutes, dose_fraction=0.25)
        return make_envelope("dev-r", body=body, time=clock.now, seq=next(seq))

    # Two days ago the device was the former patient's: it syncs a session of theirs.
    clock.now = NOW - timedelta(days=2)
    in_time = session(NOW - timedelta(days=10))
    assert _process(processor, in_time).stored == 1
    # Four minutes after the handover (within the skew) a session still running then arrives.
    clock.now = handed_over + timedelta(minutes=4)
    spanning = session(handed_over - timedelta(minutes=10), minutes=18)
    first = _process(processor, spanning)
    # Now the new patient has it, and it sends records dated into the former patient's days.
    clock.now = NOW
    forged = session(NOW - timedelta(days=10, hours=-2))
    event = make_envelope(  # an event is attributed by its envelope time
        "dev-r",
        kind="event",
        body=event_body(at=(NOW - timedelta(days=9)).isoformat()),
        time=NOW - timedelta(days=9),
        seq=next(seq),
    )
    checkin = make_envelope(
        "dev-r",
        kind="checkin",
        body=_checkin("dev-r", NOW - timedelta(days=9)),
        time=NOW,
        seq=next(seq),
    )
    at_the_seam = session(handed_over - timedelta(minutes=2))
    new_ones = session(NOW - timedelta(hours=1))
    before_any = session(NOW - timedelta(days=40))
    result = _process(processor, forged, event, checkin, at_the_seam, new_ones, before_any)

    refused = [forged.id, event.id, checkin.id, at_the_seam.id]
    assert first.committed == {"dev-r": [spanning.id]} and first.quarantined == 1
    assert result.committed == {"dev-r": [new_ones.id, before_any.id, *refused]}
    assert (result.stored, result.quarantined) == (2, 4)
    assert _patients(engine) == {in_time.id: former, new_ones.id: new, before_any.id: None}
    with Session(engine) as db:
        assert db.exec(select(CheckInRow)).all() == []
        dose = {(d.patient_id, d.day): d.sessions for d in db.exec(select(DoseDailyRow))}
    assert dose == {
        (former, (NOW - timedelta(days=10)).date()): 1,
        (new, (NOW - timedelta(hours=1)).date()): 1,
    }
    ended = f"is in an assignment of the device that ended at {_iso(handed_over)}"
    former_record = (
        f"before the receive time {_iso(NOW)}: a device does not write into a former patient's "
        "record"
    )
    assert [row.reason for row in _quarantine(engine)] == [
        f"device time body.started_at {_iso(handed_over - timedelta(minutes=10))} {ended}, and it "
        f"runs on to {_iso(handed_over + timedelta(minutes=8))} (received "
        f"{_iso(handed_over + timedelta(minutes=4))})",
        f"device time body.started_at {_iso(NOW - timedelta(days=10, hours=-2))} {ended}, {former_record}",
        f"device time time {_iso(NOW - timedelta(days=9))} {ended}, {former_record}",
        f"device time body.answered_at {_iso(NOW - timedelta(days=9))} {ended}, {former_record}",
        f"device time body.started_at {_iso(handed_over - timedelta(minutes=2))} {ended}, {former_record}",
    ]


def test_a_first_assignment_takes_a_session_started_within_the_skew_before_it(
    *,
    engine: Engine,
    processor: IngestProcessor,
    make_patient: Callable[..., str],
    registered: Callable[..., str],
    make_envelope: MakeEnvelope,
    make_body: MakeBody,
) -> None:
    patient = make_patient()
    since = NOW - timedelta(days=1)
    registered("dev-f", patient_id=patient, since=since)
    slow_clock = make_envelope(
        "dev-f", body=make_body(start=since - timedelta(minutes=4)), time=NOW
    )
    before = make_envelope(
        "dev-f", body=make_body(start=since - timedelta(hours=1)), time=NOW, seq=1
    )
    assert _process(processor, slow_clock, before).stored == 2
    assert _patients(engine) == {slow_clock.id: patient, before.id: None}


# -- the device's clock on its state row ------------------------------------------------------


def _state(engine: Engine, device: str) -> DeviceStateRow:
    with Session(engine) as session:
        row = session.get(DeviceStateRow, device)
        assert row is not None
        return row


def test_the_clock_skew_of_a_batch_is_kept_on_the_device_state(
    engine: Engine,
    clock: WallClock,
    processor: IngestProcessor,
    registered: Callable[..., str],
    make_envelope: MakeEnvelope,
) -> None:
    registered("dev-k")
    waited = make_envelope("dev-k", kind="metrics", body={}, time=NOW - timedelta(hours=3))
    fresh = make_envelope("dev-k", kind="metrics", body={}, time=NOW - timedelta(seconds=90), seq=1)
    _process(processor, waited, fresh)
    state = _state(engine, "dev-k")
    assert (state.clock_skew_s, state.clock_skew_at) == (90.0, NOW)
    # A clock far ahead is measured even though what it dates is quarantined.
    clock.advance(minutes=1)
    ahead = make_envelope("dev-k", kind="metrics", body={}, time=FAR_FUTURE, seq=2)
    result = _process(processor, ahead)
    assert result.quarantined == 1 and result.committed == {"dev-k": [ahead.id]}
    state = _state(engine, "dev-k")
    assert state.clock_skew_s == (clock.now - FAR_FUTURE).total_seconds()
    assert state.clock_skew_at == clock.now
    assert state.last_seq == 1  # the quarantined message is not the device's latest


# -- a message id reused with other content ----------------------------------------------------


def test_a_message_id_reused_with_other_content_is_quarantined_and_acknowledged(
    engine: Engine,
    processor: IngestProcessor,
    registered: Callable[..., str],
    make_envelope: MakeEnvelope,
    make_body: MakeBody,
) -> None:
    registered("dev-m")
    first = make_envelope(
        "dev-m", body=make_body(start=NOW - timedelta(hours=2), dose_fraction=0.1), time=NOW
    )
    other = first.model_copy(update={"body": {**first.body, "dose_fraction": 0.9}})
    assert _process(processor, first).stored == 1

    result = _process(processor, other)

    assert result.committed == {"dev-m": [first.id]}
    assert (result.stored, result.duplicates, result.quarantined) == (0, 0, 1)
    (row,) = _quarantine(engine)
    assert row.reason == (
        f"message id {first.id} reused with different content (a session message with this id is stored)"
    )
    assert row.payload == other.to_bytes()
    assert _sessions(engine)[first.id].dose_fraction == 0.1
    # The same content again, its whitespace and time offset written otherwise, is a resend: a
    # duplicate, nothing new.
    data = json.loads(first.to_bytes())
    data["time"] = first.time.astimezone(timezone(timedelta(hours=2))).isoformat()
    rewritten = json.dumps(data, indent=1).encode()
    again = processor.process(
        [
            Received(topics.up("dev-m", "session"), first.to_bytes()),
            Received(topics.up("dev-m", "session"), rewritten),
        ]
    )
    assert again.committed == {"dev-m": [first.id]}
    assert (again.stored, again.duplicates, again.quarantined) == (0, 2, 0)
    assert len(_quarantine(engine)) == 1


def test_a_message_id_reused_within_one_batch_or_across_kinds(
    engine: Engine,
    processor: IngestProcessor,
    registered: Callable[..., str],
    make_envelope: MakeEnvelope,
    make_body: MakeBody,
) -> None:
    registered("dev-m")
    first = make_envelope("dev-m", body=make_body(start=NOW - timedelta(hours=2)), time=NOW)
    other = first.model_copy(update={"seq": 7})
    as_metrics = first.model_copy(update={"kind": "metrics", "body": {"outbox_depth": 1}})
    result = _process(processor, first, other, first)
    assert result.committed == {"dev-m": [first.id]}
    assert (result.stored, result.duplicates, result.quarantined) == (1, 1, 1)
    later = _process(processor, as_metrics)
    assert later.committed == {"dev-m": [first.id]} and later.quarantined == 1
    assert [row.reason for row in _quarantine(engine)] == [
        f"message id {first.id} reused with different content (a session message with this id "
        "is earlier in this batch)",
        f"message id {first.id} reused with different content (a session message with this id "
        "is stored)",
    ]
    with Session(engine) as session:
        assert session.exec(select(MessageRow)).all() == []
        assert _state(engine, "dev-m").last_seq == 0  # the reuse's seq 7 moved nothing


def test_a_resend_is_a_duplicate_even_after_its_times_went_out_of_bounds(
    *,
    engine: Engine,
    clock: WallClock,
    processor: IngestProcessor,
    registered: Callable[..., str],
    make_envelope: MakeEnvelope,
    make_body: MakeBody,
) -> None:
    """A device that never got the ack resends months later: acknowledged as stored, not
    quarantined for its age; rows stored before digests were kept count as the same content."""
    registered("dev-m")
    first = make_envelope("dev-m", body=make_body(start=NOW - timedelta(hours=2)), time=NOW)
    legacy = make_envelope("dev-m", body=make_body(start=NOW - timedelta(hours=1)), time=NOW, seq=1)
    _process(processor, first, legacy)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE session_record SET digest = NULL WHERE message_id = :m"), {"m": legacy.id}
        )
    clock.advance(days=200)
    result = _process(processor, first, legacy)
    assert result.committed == {"dev-m": [first.id, legacy.id]}
    assert (result.stored, result.duplicates, result.quarantined) == (0, 2, 0)


# -- through a mutual-TLS mosquitto -------------------------------------------------------------


class SignedDevice:
    """A device with its own certificate on the mutual-TLS broker, signing with its key, as the
    device's outbox does; collects the acks it gets."""

    def __init__(self, tls: TlsBroker, engine: Engine, device_id: str, workdir: Path) -> None:
        self.identity = issue_device(tls.ca, PASSPHRASE, device_id, workdir / device_id)
        register_devices(engine, [self.identity])
        settings = tls.settings(self.identity.key_file, self.identity.cert_file)
        self.acked: list[str] = []
        self._subscribed = threading.Event()
        self.client = build_client(settings, device_id)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_args: self._subscribed.set()
        connect(self.client, settings, clean_start=True, session_expiry_s=0)
        self.client.loop_start()
        self.client.subscribe(topics.ack(device_id), qos=1)
        wait_until(self._subscribed.is_set, what=f"{device_id} subscribed to its acks")

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        self.acked += decode_ack(bytes(msg.payload)).ids

    def send(self, envelope: Envelope) -> Envelope:
        signed = sign_envelope(envelope, self.identity.key)
        self.client.publish(topics.up(envelope.device, envelope.kind), signed.to_bytes(), qos=1)
        return signed

    def close(self) -> None:
        self.client.disconnect()
        stop_loop(self.client)


def test_signed_sessions_dated_2999_and_1971_through_mutual_tls_are_quarantined_and_acked(
    tmp_path: Path, sqlite_engine: Engine, make_body: MakeBody
) -> None:
    """Signed by the device's own certificate key, through the broker the fleet uses: the sessions
    dated 2999 and 1971 and a message id reused with other content are quarantined and
    acknowledged, the normal session stored; the device's clock is measured."""
    with run_tls_broker(tmp_path) as tls:
        consumer = IngestConsumer(ServerSettings(mqtt=tls.server()), sqlite_engine)
        device = SignedDevice(tls, sqlite_engine, "dev-tls", tmp_path)
        consumer.start()
        try:
            now = datetime.now(UTC)  # the real clock, which the consumer reads too

            def session(seq: int, start: datetime) -> Envelope:
                body = make_body(start=start, minutes=10)
                return Envelope.create(
                    device="dev-tls", seq=seq, kind="session", body=body, time=now
                )

            normal = device.send(session(1, now - timedelta(hours=1)))
            future = device.send(session(2, FAR_FUTURE))
            past = device.send(session(3, FAR_PAST))
            wait_until(
                lambda: {normal.id, future.id, past.id} <= set(device.acked), what="three acks"
            )
            reused = device.send(
                normal.model_copy(update={"body": {**normal.body, "played_s": 1.0}})
            )
            wait_until(lambda: device.acked.count(reused.id) == 2, what="the reused id's ack")
        finally:
            device.close()
            consumer.stop()
    (stored,) = _sessions(sqlite_engine).values()
    assert (stored.message_id, stored.sig_status, stored.played_s) == (normal.id, "verified", 600.0)
    rows = _quarantine(sqlite_engine)
    assert [row.reason for row in rows] == [
        f"device time body.started_at {_iso(FAR_FUTURE)} is later than the receive time "
        f"{_iso(rows[0].received_at)} plus 300 s",
        f"device time body.started_at {_iso(FAR_PAST)} is earlier than the receive time "
        f"{_iso(rows[1].received_at)} minus 90 days",
        f"message id {normal.id} reused with different content (a session message with this "
        "id is stored)",
    ]
    assert {row.payload for row in rows} == {future.to_bytes(), past.to_bytes(), reused.to_bytes()}
    state = _state(sqlite_engine, "dev-tls")
    assert state.clock_skew_s is not None and state.clock_skew_s >= 0
    assert consumer.counters["quarantined"] == 3
