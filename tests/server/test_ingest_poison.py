"""Poison messages cannot stall ingest (issue 26, finding 2).

Whatever one message carries in any envelope or body field (times at the ends of the calendar,
lone surrogates, huge numbers, NaN, very long strings, wrong types, odd field names), the processor
stores or quarantines it, and the good messages of the same batch, from other devices and from the
same one, are stored and acknowledged: ``process`` never raises for a message. The property test
runs on ``IngestProcessor`` with a real database (many examples on SQLite, fewer on PostgreSQL);
one test publishes poison through a mutual-TLS mosquitto, more of it than the consumer's receive
window, interleaved with another device's good messages, and checks that ingest keeps going.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from factories import event_body
from fleet import TlsBroker, run_tls_broker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select
from support import wait_until

from resonera.common import topics
from resonera.common.envelope import Envelope, decode_ack, decode_envelope
from resonera.common.ids import new_id
from resonera.common.mqtt_client import build_client, connect, stop_loop
from resonera.common.signing import envelope_signing_payload, sign_ecdsa
from resonera.server.ingest import IngestProcessor, Received, StoreError
from resonera.server.ingest_mqtt import IngestConsumer
from resonera.server.models import (
    DeviceRow,
    MessageRow,
    QuarantineRow,
    SafetyEventRow,
    SessionRow,
)
from resonera.server.settings import ServerSettings

GOOD = "dev-good"
POISON = "dev-poison"
#: Registered with a key: its poison is signed by itself, so the body checks are reached.
KEYED = "dev-keyed"
KINDS: tuple[topics.UpKind, ...] = ("session", "event", "reported", "checkin", "metrics")
#: Where a field's value goes, before the poison's raw JSON replaces it.
MARK = "\u2603poison\u2603"

#: Times that parse but have no UTC equivalent, and their neighbours.
EXTREME_TIMES = [
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-23:00",
    "0001-01-01T00:00:00-23:59",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
    "10000-01-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-01-01T00:00:00+24:00",
    "2026-01-01T00:00:00",
    "",
]


def _key_pair() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, base64.b64encode(der).decode()


KEY, PUBLIC_KEY = _key_pair()


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()  # ASCII: a lone surrogate becomes the escape \ud800


def _text(draw_text: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    return draw_text.map(_json)


#: Text with what JSON can carry and a database may not: lone surrogates, NUL, line breaks.
NASTY_CHARS = st.one_of(
    st.characters(),
    st.sampled_from(["\ud800", "\udfff", "\udc00", "\x00", "\n", "\u2028", "\ufeff", "'", '"']),
)
#: Raw JSON (or not JSON at all) for one field's value.
POISON_VALUES: st.SearchStrategy[bytes] = st.one_of(
    st.sampled_from(EXTREME_TIMES).map(_json),
    st.sampled_from(EXTREME_TIMES).map(lambda t: _json(t.replace("T", " "))),
    st.sampled_from(
        [
            b'"\\ud800"',
            b'"a\\udfffb"',
            b'"\\udc00\\ud800"',
            b'"\xed\xa0\x80"',  # a surrogate encoded as UTF-8 bytes
            b'"\xff\xfe"',
            b'"a\\u0000b"',
            b"NaN",
            b"Infinity",
            b"-Infinity",
            b"1e999",
            b"-1e999",
            b"1e308",
            b"5e-324",
            b"-0.0",
            b"null",
            b"true",
            b"[]",
            b"{}",
            b'{"\\ud800": 1}',
            b'{"\\u0000": [1, {"a": null}]}',
            b"[" * 300 + b"]" * 300,
            b'"' + b"x" * 70_000 + b'"',
            b'"' + b"y" * 300_000 + b'"',
        ]
    ),
    st.sampled_from([2**31 - 1, 2**31, 2**53 + 1, 2**63, 2**64, -(2**63) - 1, 10**100]).map(_json),
    st.integers().map(_json),
    st.floats().map(lambda f: json.dumps(f).encode()),
    st.sampled_from([121, 201, 501, 5_000]).map(lambda n: _json("z" * n)),
    _text(st.text(NASTY_CHARS, max_size=20)),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(NASTY_CHARS, max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.text(NASTY_CHARS, max_size=5), inner, max_size=3)
        ),
        max_leaves=8,
    ).map(lambda v: json.dumps(v).encode()),
)


def _body(kind: topics.UpKind, device: str, now: datetime) -> dict[str, Any]:
    """A valid body of ``kind``, with every optional part filled in (so poison reaches it)."""
    if kind == "session":
        return {
            "session_id": new_id(),
            "program_name": "calm",
            "program_digest": "ab" * 32,
            "started_at": (now - timedelta(minutes=10)).isoformat(),
            "ended_at": now.isoformat(),
            "planned_s": 600.0,
            "played_s": 600.0,
            "outcome": "completed",
            "reason": "",
            "sink": "null",
            "sample_rate": 48000,
            "peak_dbfs": -6.0,
            "rms_dbfs": -20.0,
            "simulation": True,
            "hardware_board": "board-1",
            "dose_fraction": 0.01,
            "laeq_dba": 70.0,
            "max_mel_dba": 72.0,
            "underruns": 0,
        }
    if kind == "event":
        return event_body(
            at=now.isoformat(),
            code=3,
            readings={
                "amp_temp_c": 40.0,
                "supply_current_a": 0.1,
                "output_vrms": 0.5,
                "dc_offset_mv": 0.0,
                "ear_spl_db": 0.0,
                "clip": False,
                "headphones": True,
                "muted": False,
                "armed": True,
                "fault_code": 0,
            },
            limits={
                "max_output_vrms": 1.0,
                "max_amp_temp_c": 70.0,
                "max_supply_current_a": 1.0,
                "max_dc_offset_mv": 50.0,
                "max_ear_spl_db": 85.0,
            },
            from_state="idle",
            to_state="playing",
            session_id=new_id(),
            dose_reset={
                "reset_id": new_id(),
                "applied": True,
                "reason": "review",
                "requested_by": "dr@x.org",
                "removed_rows": 1,
                "corrupted_before": True,
                "week_pa2s_before": 1.0,
                "week_fraction_before": 1.0,
                "week_fraction_after": 0.5,
            },
        )
    if kind == "reported":
        return {
            "desired_version": 3,
            "status": "applied",
            "reason": None,
            "dose_ledger_reset": {"id": "r1", "status": "applied", "reason": "ok"},
        }
    if kind == "checkin":
        return {
            "id": new_id(),
            "session_id": new_id(),
            "device_id": device,
            "question_id": "relax",
            "phase": "before",
            "value": 5,
            "skipped": False,
            "answered_at": now.isoformat(),
            "better": "higher",
        }
    return {"outbox_depth": 3, "amp_temp_c": 41.5}


def _envelope(device: str, kind: topics.UpKind, seq: int, now: datetime) -> dict[str, Any]:
    envelope = Envelope.create(device=device, seq=seq, kind=kind, body=_body(kind, device, now))
    data: dict[str, Any] = json.loads(envelope.to_bytes())
    return data


def _signed(payload: bytes) -> bytes:
    """``payload`` with the keyed device's signature, when it parses as an envelope at all (a
    signature over what the server will check; the bytes themselves are kept)."""
    try:
        envelope = decode_envelope(payload)
    except Exception:  # unsignable: it goes unsigned
        return payload
    sig = sign_ecdsa(KEY, envelope_signing_payload(envelope))
    return b'{"sig":"' + sig.encode() + b'",' + payload.removeprefix(b"{")


@dataclass(frozen=True)
class Poison:
    """Where the poison goes in a message of ``kind``: ``path`` in the envelope (``body``, then
    the body's keys), or the whole payload; ``value`` is raw JSON."""

    device: str
    kind: topics.UpKind
    path: tuple[str, ...]
    value: bytes

    def payload(self, seq: int, now: datetime) -> bytes:
        data = _envelope(self.device, self.kind, seq, now)
        if self.path == ("<payload>",):
            return self.value
        parent = data
        for name in self.path[:-1]:
            parent = parent[name]
        parent[self.path[-1]] = MARK
        raw = _json(data).replace(_json(MARK), self.value, 1)
        return _signed(raw) if self.device == KEYED else raw


def _paths(kind: topics.UpKind) -> list[tuple[str, ...]]:
    body = _body(kind, GOOD, datetime.now(UTC))
    envelope = ("v", "id", "device", "seq", "time", "kind", "body", "sig")
    paths: list[tuple[str, ...]] = [(name,) for name in envelope]
    paths += [("extra",), ("\u0000",), ("<payload>",), ("body", "extra")]
    for name, value in body.items():
        paths.append(("body", name))
        if isinstance(value, dict):
            paths += [("body", name, inner) for inner in value]
    return paths


POISONS: st.SearchStrategy[Poison] = st.builds(
    lambda device, kind_and_path, value: Poison(device, kind_and_path[0], kind_and_path[1], value),
    st.sampled_from([POISON, KEYED, GOOD]),
    st.sampled_from([(kind, path) for kind in KINDS for path in _paths(kind)]),
    POISON_VALUES,
)
#: Topics no broker delivers, but the processor must take in its stride all the same.
ODD_TOPICS = st.sampled_from(
    [
        f"{topics.PREFIX}/{POISON}/up/nonsense",
        f"{topics.PREFIX}/dev-\u0000/up/session",
        f"{topics.PREFIX}/dev-\ud800/up/session",
        f"{topics.PREFIX}/{POISON}/status",
        f"{topics.PREFIX}/{POISON}/up/session/extra",
    ]
)


def _good(kind: topics.UpKind, seq: int, now: datetime) -> tuple[Received, str]:
    data = _envelope(GOOD, kind, seq, now)
    return Received(topics.up(GOOD, kind), _json(data)), data["id"]


def _stored_ids(engine: Engine, ids: list[str]) -> set[str]:
    found: set[str] = set()
    with Session(engine) as session:
        for model in (SessionRow, SafetyEventRow, MessageRow):
            query = select(model.message_id).where(col(model.message_id).in_(ids))
            found |= set(session.exec(query).all())
    return found


def _quarantined(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(QuarantineRow)).one()


@pytest.fixture
def poison_devices(registered: Callable[..., str]) -> None:
    registered(GOOD)
    registered(POISON)
    registered(KEYED, public_key=PUBLIC_KEY)


def _examples(engine: Engine) -> int:
    return 250 if engine.dialect.name == "sqlite" else 60


@pytest.mark.usefixtures("poison_devices")
def test_poison_in_any_field_never_holds_up_the_good_messages_of_its_batch(
    engine: Engine,
) -> None:
    processor = IngestProcessor(engine)

    @given(
        poisons=st.lists(POISONS, min_size=1, max_size=4),
        odd_topics=st.lists(st.tuples(ODD_TOPICS, POISON_VALUES), max_size=1),
        kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=5),
        order=st.randoms(use_true_random=False),
    )
    @settings(
        max_examples=_examples(engine),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(
        poisons: list[Poison],
        odd_topics: list[tuple[str, bytes]],
        kinds: list[topics.UpKind],
        order: Any,
    ) -> None:
        now = datetime.now(UTC)
        good = [_good(kind, seq, now) for seq, kind in enumerate(kinds)]
        bad = [
            Received(topics.up(p.device, p.kind), p.payload(100 + i, now))
            for i, p in enumerate(poisons)
        ]
        bad += [Received(topic, value) for topic, value in odd_topics]
        batch = [message for message, _ in good] + bad
        order.shuffle(batch)
        before = _quarantined(engine)

        result = processor.process(batch)  # never raises for a message

        good_ids = [i for _, i in good]
        assert set(good_ids) <= set(result.committed.get(GOOD, []))
        assert _stored_ids(engine, good_ids) == set(good_ids)
        presence = sum(1 for m in batch if m.topic.endswith("/status"))
        assert result.stored + result.duplicates + result.quarantined == len(batch) - presence
        assert _quarantined(engine) - before == result.quarantined

    run()


# -- the reported cases, on both databases ------------------------------------------------------


@pytest.mark.usefixtures("poison_devices")
@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_time_without_a_utc_equivalent_is_quarantined_naming_the_field(
    engine: Engine, when: str
) -> None:
    now = datetime.now(UTC)
    envelope_time = _envelope(POISON, "metrics", 1, now) | {"time": when}
    session = _envelope(POISON, "session", 2, now)
    session["body"]["started_at"] = when
    good = [_good(kind, seq, now) for seq, kind in enumerate(KINDS)]
    batch = [
        good[0][0],
        Received(topics.up(POISON, "metrics"), _json(envelope_time)),
        *(message for message, _ in good[1:3]),
        Received(topics.up(POISON, "session"), _json(session)),
        *(message for message, _ in good[3:]),
    ]

    result = IngestProcessor(engine).process(batch)

    good_ids = [i for _, i in good]
    assert result.committed == {GOOD: good_ids, POISON: [session["id"]]}
    assert _stored_ids(engine, good_ids) == set(good_ids)
    with Session(engine) as db:
        reasons = sorted(q.reason for q in db.exec(select(QuarantineRow)))
    assert reasons == [
        f"invalid session body: started_at: is out of range: {when} is outside the years 1 "
        "to 9999 in UTC",
        f"malformed envelope: time: is out of range: {when} is outside the years 1 to 9999 in UTC",
    ]


# PostgreSQL alone: a trigger that raises a data error is PostgreSQL's (CI never skips a test).
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.usefixtures("poison_devices")
def test_a_batch_that_fails_to_store_is_stored_one_message_at_a_time(engine: Engine) -> None:
    """A value the checks let through and the database refuses (here a trigger of the test's
    refuses one program name, as PostgreSQL refuses a value out of range): the rest of the batch
    is stored and acknowledged, that message is quarantined with why, and not acknowledged."""
    now = datetime.now(UTC)
    good = [_good(kind, seq, now) for seq, kind in enumerate(KINDS)]
    refused = _envelope(POISON, "session", 1, now)
    refused["body"]["program_name"] = "refused-by-the-database"
    batch = [message for message, _ in good]
    batch.insert(2, Received(topics.up(POISON, "session"), _json(refused)))
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION refuse_program() RETURNS trigger AS $$ BEGIN "
                "IF NEW.program_name = 'refused-by-the-database' THEN "
                "RAISE EXCEPTION 'program name out of range' USING ERRCODE = '22003'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER refuse_program BEFORE INSERT ON session_record "
                "FOR EACH ROW EXECUTE FUNCTION refuse_program()"
            )
        )
    processor = IngestProcessor(engine)
    try:
        result = processor.process(batch)
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER refuse_program ON session_record"))
            conn.execute(text("DROP FUNCTION refuse_program()"))

    good_ids = [i for _, i in good]
    assert result.committed == {GOOD: good_ids}
    assert (result.stored, result.duplicates, result.quarantined) == (len(good), 0, 1)
    assert _stored_ids(engine, good_ids) == set(good_ids)
    with Session(engine) as db:
        (row,) = db.exec(select(QuarantineRow)).all()
    assert row.device_id == POISON
    assert row.reason == (
        "storing it failed unexpectedly: NumericValueOutOfRange: program name out of range"
    )
    assert processor.counters == {
        "received": len(batch),
        "stored": len(good),
        "duplicates": 0,
        "quarantined": 1,
    }


def test_a_database_failure_still_stores_and_acknowledges_nothing(
    sqlite_engine: Engine,
) -> None:
    """The retry one at a time is for values, not for a database that fails: the batch raises
    ``StoreError`` as before (here the schema is gone) and the consumer retries it whole."""
    now = datetime.now(UTC)
    with Session(sqlite_engine) as db:
        db.add(DeviceRow(id=GOOD, created_at=now))
        db.commit()
    with sqlite_engine.begin() as conn:
        conn.execute(text("DROP TABLE quarantine"))
    message, message_id = _good("session", 0, now)
    batch = [message, Received(topics.up(POISON, "session"), b"{")]
    processor = IngestProcessor(sqlite_engine)
    with pytest.raises(StoreError, match=r"storing a batch failed: .*no such table: quarantine"):
        processor.process(batch)
    assert _stored_ids(sqlite_engine, [message_id]) == set()
    assert processor.counters == dict.fromkeys(processor.counters, 0)


# -- through a mutual-TLS mosquitto ------------------------------------------------------------

#: More poison than the broker lets the consumer hold unacknowledged (``max_inflight_messages``
#: of ``provision_broker``'s configuration: 100), from a device with a valid certificate.
POISON_BURST = 250


class TlsDevice:
    """A device on the mutual-TLS broker (its own certificate): publishes, collects acks."""

    def __init__(self, tls: TlsBroker, device_id: str) -> None:
        self.device_id = device_id
        self.acked: list[str] = []
        self._subscribed = threading.Event()
        self.client = build_client(tls.device(device_id), device_id)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_args: self._subscribed.set()
        connect(self.client, tls.device(device_id), clean_start=True, session_expiry_s=0)
        self.client.loop_start()
        self.client.subscribe(topics.ack(device_id), qos=1)
        wait_until(self._subscribed.is_set, what=f"{device_id} subscribed to its acks")
        self.sent: list[paho.MQTTMessageInfo] = []

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        self.acked += decode_ack(bytes(msg.payload)).ids

    def publish(self, kind: str, payload: bytes) -> None:
        topic = f"{topics.PREFIX}/{self.device_id}/up/{kind}"
        self.sent.append(self.client.publish(topic, payload, qos=1))

    def all_published(self) -> bool:
        return all(info.is_published() for info in self.sent)

    def close(self) -> None:
        self.client.disconnect()
        stop_loop(self.client)


def _poison_payloads(now: datetime) -> Iterator[tuple[topics.UpKind, bytes]]:
    """The reported poison, in turn: times without a UTC equivalent in the envelope and in a
    body, a lone surrogate, a number too large for the database."""
    for seq in itertools.count(1):
        data = _envelope(POISON, "session", seq, now)
        case = seq % 5
        if case == 0:
            data["time"] = "0001-01-01T00:00:00+01:00"
        elif case == 1:
            data["time"] = "9999-12-31T23:59:59-01:00"
        elif case == 2:
            data["body"]["started_at"] = "0001-01-01T00:00:00+14:00"
        elif case == 3:
            data["body"]["program_name"] = "\ud800"
        else:
            data["seq"] = 2**63
        yield "session", _json(data)


def test_a_burst_of_poison_over_mutual_tls_does_not_stall_ingest(
    tmp_path: Path, sqlite_engine: Engine
) -> None:
    for device_id in (GOOD, POISON):
        with Session(sqlite_engine) as db:
            db.add(DeviceRow(id=device_id, created_at=datetime.now(UTC)))
            db.commit()
    with run_tls_broker(tmp_path) as tls:
        consumer = IngestConsumer(ServerSettings(mqtt=tls.server()), sqlite_engine)
        consumer.start()
        good, poison = TlsDevice(tls, GOOD), TlsDevice(tls, POISON)
        try:
            now = datetime.now(UTC)
            wanted: list[str] = []
            payloads = _poison_payloads(now)
            for seq in range(POISON_BURST):
                kind, payload = next(payloads)
                poison.publish(kind, payload)
                if seq % 5 == 0:
                    message, message_id = _good(KINDS[seq // 5 % len(KINDS)], seq, now)
                    good.publish(message.topic.rsplit("/", 1)[1], message.payload)
                    wanted.append(message_id)
            wait_until(
                lambda: set(wanted) <= set(good.acked),
                timeout=60,
                what=f"acks for the {len(wanted)} good messages among {POISON_BURST} poison ones",
            )
            wait_until(
                lambda: _quarantined(sqlite_engine) == POISON_BURST,
                timeout=60,
                what="every poison message quarantined",
            )
            # Ingest goes on: every message was PUBACKed, the broker's window is free again.
            wait_until(lambda: good.all_published() and poison.all_published(), what="PUBACKs")
            message, last = _good("session", POISON_BURST, now)
            good.publish("session", message.payload)
            wait_until(lambda: last in good.acked, what="the ack of a message after the burst")
        finally:
            good.close()
            poison.close()
            consumer.stop()
    assert _stored_ids(sqlite_engine, [*wanted, last]) == {*wanted, last}
    with Session(sqlite_engine) as db:
        reasons = {q.reason.split(": ")[1] for q in db.exec(select(QuarantineRow))}
    assert reasons == {"time", "started_at", "(message)", "seq"}
    # The body's poison (an authentic device's invalid session) is acknowledged, nothing else.
    assert len(poison.acked) == POISON_BURST // 5
    assert consumer.counters["quarantined"] == POISON_BURST
