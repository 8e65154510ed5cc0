"""The store at rest: health data sealed under a key kept apart, a lost key reported (never replaced over
data), the first release's layout upgraded in place, and the outbox kept in bounds by thinning metrics
only."""

from __future__ import annotations

import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from factories import WallClock, make_record

from resonera.common.envelope import Envelope, decode_envelope
from resonera.common.ids import new_id
from resonera.common.records import SafetyEventRecord
from resonera.device import migrations
from resonera.device.crypto_store import (
    DataKeyMismatch,
    DataKeyMissing,
    SealedDataCorrupt,
    create_key_file,
)
from resonera.device.localdb import to_db_time
from resonera.device.store import DeviceStore, OutboxLimits, default_key_path

SECRET_PROGRAM = "tinnitus-relief-for-jane-doe"


def _event(**changes: object) -> SafetyEventRecord:
    values: dict[str, object] = {
        "event_id": new_id(),
        "at": datetime(2026, 11, 1, 9, 0, tzinfo=UTC),
        "type": "fault",
        "cause": "amplifier over temperature",
        "simulation": False,
    }
    values.update(changes)
    return SafetyEventRecord.model_validate(values)


def _files(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.iterdir() if p.name.startswith("device.db"))


def test_health_data_is_sealed_on_disk_and_reads_back(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path / "device.db")
    record = make_record(program_name=SECRET_PROGRAM)
    store.record_session("dev-a", record)
    store.record_event("dev-a", _event(cause="ear-cup level disagrees: jane's headphones"))
    store.close()
    on_disk = _files(tmp_path)
    assert SECRET_PROGRAM.encode() not in on_disk
    assert b"jane's headphones" not in on_disk
    assert b"completed" not in on_disk  # not even the outcome, nor the outbox envelope

    reopened = DeviceStore(tmp_path / "device.db")
    assert reopened.sessions() == [record]
    assert reopened.events()[0].cause == "ear-cup level disagrees: jane's headphones"
    message = reopened.pending()[0]  # the session's; the event's follows
    assert decode_envelope(message.payload).body["program_name"] == SECRET_PROGRAM


def test_the_key_lives_apart_from_the_database_owner_only(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path / "device.db")
    key_file = tmp_path / "keys" / "data.key"
    assert store.data_key_path == key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert key_file.read_bytes() not in (tmp_path / "device.db").read_bytes()


def test_a_lost_key_is_reported_never_silently_replaced(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path / "device.db")
    for _ in range(3):
        store.record_session("dev-a", make_record())
    store.close()
    key_file = tmp_path / "keys" / "data.key"
    key_file.unlink()
    with pytest.raises(DataKeyMissing) as info:
        DeviceStore(tmp_path / "device.db")
    # 3 sessions + their 3 outbox messages
    assert str(info.value) == (
        f"the data key {key_file} is missing: the 6 stored record(s) cannot be read; "
        "restore the key file or re-provision the device"
    )
    assert not key_file.exists()


def test_another_key_is_refused(tmp_path: Path) -> None:
    DeviceStore(tmp_path / "device.db").record_session("dev-a", make_record())
    (tmp_path / "keys" / "data.key").write_bytes(b"k" * 32)
    with pytest.raises(
        DataKeyMismatch, match=r"is not the key the device store .*device\.db was sealed with"
    ):
        DeviceStore(tmp_path / "device.db")


def test_a_sealed_value_moved_to_another_row_does_not_open(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path / "device.db")
    a, b = make_record(), make_record()
    store.record_session("dev-a", a)
    store.record_session("dev-a", b)
    store.close()
    with sqlite3.connect(tmp_path / "device.db") as db:
        sealed = db.execute("SELECT sealed FROM sessions WHERE session_id = ?", (a.session_id,))
        db.execute(
            "UPDATE sessions SET sealed = ? WHERE session_id = ?",
            (sealed.fetchone()[0], b.session_id),
        )
    with pytest.raises(SealedDataCorrupt, match="altered or moved"):
        DeviceStore(tmp_path / "device.db").sessions()


FIRST_RELEASE_DDL = """
CREATE TABLE sessions (session_id VARCHAR NOT NULL, started_at DATETIME NOT NULL,
    record_json VARCHAR NOT NULL, PRIMARY KEY (session_id));
CREATE INDEX ix_sessions_started_at ON sessions (started_at);
CREATE TABLE safety_events (event_id VARCHAR NOT NULL, at DATETIME NOT NULL, type VARCHAR NOT NULL,
    record_json VARCHAR NOT NULL, PRIMARY KEY (event_id));
CREATE INDEX ix_safety_events_at ON safety_events (at);
CREATE INDEX ix_safety_events_type ON safety_events (type);
CREATE TABLE outbox (message_id VARCHAR NOT NULL, seq INTEGER NOT NULL, kind VARCHAR NOT NULL,
    topic VARCHAR NOT NULL, payload BLOB NOT NULL, created_at DATETIME NOT NULL,
    PRIMARY KEY (message_id), UNIQUE (seq));
CREATE TABLE counters (name VARCHAR NOT NULL, value INTEGER NOT NULL, PRIMARY KEY (name));
"""


def test_a_store_of_the_first_release_is_upgraded_in_place_keeping_its_data(
    tmp_path: Path,
) -> None:
    path = tmp_path / "device.db"
    record = make_record(program_name=SECRET_PROGRAM)
    event = _event()
    envelope = Envelope.create(
        device="dev-a", seq=7, kind="session", body=record.model_dump(mode="json")
    )
    with sqlite3.connect(path) as db:  # by hand, as the first release wrote it
        db.executescript(FIRST_RELEASE_DDL)
        db.execute(
            "INSERT INTO sessions VALUES (?, ?, ?)",
            (record.session_id, "2026-11-01 09:00:00.000000", record.model_dump_json()),
        )
        db.execute(
            "INSERT INTO safety_events VALUES (?, ?, ?, ?)",
            (event.event_id, "2026-11-01 09:00:00.000000", event.type, event.model_dump_json()),
        )
        db.execute(
            "INSERT INTO outbox VALUES (?, 7, 'session', 'resonera/v1/dev/dev-a/up/session', ?, "
            "'2026-11-01 09:00:01.000000')",
            (envelope.id, envelope.to_bytes()),
        )
        db.execute("INSERT INTO counters VALUES ('seq', 8)")
    db.close()

    store = DeviceStore(path)
    assert store.sessions() == [record]
    assert store.events() == [event]
    [message] = store.pending()
    assert message.payload == envelope.to_bytes()
    assert store.record_session("dev-a", make_record()).seq == 8  # the counter carried over
    with sqlite3.connect(path) as db:
        versions = [v for (v,) in db.execute("SELECT version FROM schema_version ORDER BY 1")]
    assert versions == [1, 2, 3, 4, 5] and migrations.LATEST == 5
    store.close()
    assert SECRET_PROGRAM.encode() not in _files(tmp_path)  # the plaintext pages were wiped


#: Event types whose names appear nowhere else in a store (not in its schema, not in a topic).
CLEAR_TYPES = ("consent_withdrawn", "link_down", "dose_ledger_corrupted", "transition")


def _clear_times(at: datetime) -> list[bytes]:
    """How a time would show in clear: the store's column format and ISO 8601 (to the µs, so an
    outbox row's own time, which is in clear, cannot match by chance)."""
    return [to_db_time(at).encode(), at.isoformat().encode(), at.isoformat()[:26].encode()]


def _assert_not_in_clear(on_disk: bytes, events: list[SafetyEventRecord]) -> None:
    for event in events:
        assert event.type.encode() not in on_disk
        for clear in _clear_times(event.at):
            assert clear not in on_disk
        assert event.event_id.encode() not in on_disk  # a UUIDv7: its time, to the ms


def test_safety_event_types_and_times_are_not_stored_in_clear(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    events = [
        _event(type=kind, at=now - timedelta(seconds=10 * i), cause="c")
        for i, kind in enumerate(CLEAR_TYPES)
    ]
    store = DeviceStore(tmp_path / "device.db")
    for event in events:
        store.record_event("dev-a", event)
    _assert_not_in_clear(_files(tmp_path), events)  # open: the WAL holds them
    store.close()
    _assert_not_in_clear(_files(tmp_path), events)
    reopened = DeviceStore(tmp_path / "device.db")
    assert reopened.events() == events[::-1]  # newest recorded first
    assert [e.type for e in reopened.events(limit=2)] == list(CLEAR_TYPES[:1:-1])
    assert [decode_envelope(m.payload).body["type"] for m in reopened.pending()] == list(
        CLEAR_TYPES
    )


def _v3_store(path: Path, events: list[SafetyEventRecord]) -> None:
    """A store as schema 3 wrote it: each event's time and type in clear columns beside its seal."""
    key = create_key_file(default_key_path(path))
    with sqlite3.connect(path, isolation_level=None) as db:
        db.execute("BEGIN IMMEDIATE")
        for version, migration in enumerate(migrations.MIGRATIONS[:3], start=1):
            migration(db, key)
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL PRIMARY KEY, "
                "applied_at DATETIME NOT NULL)"
            )
            db.execute(
                "INSERT INTO schema_version VALUES (?, ?)",
                (version, (events[0].at - timedelta(days=1)).isoformat()),
            )
        db.execute("INSERT INTO meta VALUES ('data_key_id', ?)", (key.key_id,))
        for event in events:
            db.execute(
                "INSERT INTO safety_events (event_id, at, type, sealed) VALUES (?, ?, ?, ?)",
                (
                    event.event_id,
                    to_db_time(event.at),
                    event.type,
                    key.seal(event.model_dump_json().encode(), f"safety_events:{event.event_id}"),
                ),
            )
        db.execute("COMMIT")
    db.close()


def test_a_store_with_events_in_clear_is_migrated_and_reads_back_the_same(tmp_path: Path) -> None:
    path = tmp_path / "device.db"
    now = datetime.now(UTC)
    # written out of time order (one recorded late): the migration keeps the listing by time
    events = [
        _event(type=kind, at=now - timedelta(minutes=m))
        for kind, m in zip(CLEAR_TYPES, (30, 10, 40, 20), strict=True)
    ]
    _v3_store(path, events)
    assert CLEAR_TYPES[0].encode() in _files(tmp_path)  # the old layout did keep them in clear

    store = DeviceStore(path)
    by_time = sorted(events, key=lambda e: e.at, reverse=True)
    assert store.events() == by_time
    later = _event(type="warning", at=now)
    store.record_event("dev-a", later)
    assert store.events(limit=2) == [later, by_time[0]]
    store.close()
    with sqlite3.connect(path) as db:
        versions = [v for (v,) in db.execute("SELECT version FROM schema_version ORDER BY 1")]
    db.close()
    assert versions == [1, 2, 3, 4, 5]
    # the old pages overwritten (secure_delete), not merely freed
    _assert_not_in_clear(_files(tmp_path), events)


def test_a_store_newer_than_the_software_is_refused(tmp_path: Path) -> None:
    DeviceStore(tmp_path / "device.db").close()
    with sqlite3.connect(tmp_path / "device.db") as db:
        db.execute("INSERT INTO schema_version VALUES (99, '2030-01-01')")
    with pytest.raises(migrations.SchemaTooNew, match="newer than this software"):
        DeviceStore(tmp_path / "device.db")


def test_over_its_size_bound_the_outbox_thins_metrics_oldest_first_only(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path / "device.db", outbox_limits=OutboxLimits(max_bytes=64 * 1024))
    # about 55 KiB of sessions and events (a session's message is some 670 bytes), never thinned
    sessions = [store.record_session("dev-a", make_record()).id for _ in range(50)]
    events = [store.record_event("dev-a", _event()).id for _ in range(50)]
    filler = "x" * 400
    metrics = [
        store.queue_message("dev-a", "metrics", {"n": i, "filler": filler}).id for i in range(200)
    ]
    stats = store.outbox_stats()
    left = {m.message_id for m in store.pending(limit=10_000)}
    assert set(sessions) <= left and set(events) <= left
    kept = [m for m in metrics if m in left]
    assert 0 < len(kept) < len(metrics)
    assert kept == metrics[-len(kept) :]  # the newest survive
    assert stats.bytes <= 64 * 1024
    assert stats.metrics_thinned == len(metrics) - len(kept)


def test_sessions_and_events_are_kept_even_over_the_bound(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path / "device.db", outbox_limits=OutboxLimits(max_bytes=64 * 1024))
    ids = [store.record_session("dev-a", make_record()).id for _ in range(200)]
    store.queue_message("dev-a", "metrics", {"n": 1})
    assert store.outbox_stats().bytes > 64 * 1024
    assert {m.message_id for m in store.pending(limit=1000)} >= set(ids)


def test_old_metrics_are_thinned_by_age(tmp_path: Path) -> None:
    clock = WallClock(datetime(2026, 11, 1, 9, 0, tzinfo=UTC))  # the only clock the store reads
    store = DeviceStore(
        tmp_path / "device.db", outbox_limits=OutboxLimits(max_age_s=3600), clock=clock
    )
    old = store.queue_message("dev-a", "metrics", {"n": 1}).id
    session = store.record_session("dev-a", make_record()).id
    assert store.thin_outbox() == 0
    clock.advance(hours=2)
    assert store.thin_outbox() == 1
    assert [m.message_id for m in store.pending()] == [session]
    assert old not in {m.message_id for m in store.pending()}


def test_writers_on_several_threads_never_share_a_sequence_number(tmp_path: Path) -> None:
    """The desired-state report (MQTT thread), telemetry (main thread) and safety events (the
    recorder's thread) queue at the same moments: each write takes the lock before reading the
    counter."""
    import threading

    store = DeviceStore(tmp_path / "device.db")
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        for i in range(40):
            try:
                store.queue_message("dev-a", "metrics", {"k": k, "i": i})
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(m.seq for m in store.pending(limit=1000)) == list(range(240))
