from __future__ import annotations

from pathlib import Path

from factories import make_record

from resonera.common.envelope import decode_envelope
from resonera.common.identity import generate_key
from resonera.common.ids import new_id
from resonera.common.records import SessionRecord
from resonera.common.signing import verify_envelope
from resonera.device.store import DeviceStore


def test_session_and_outbox_message_are_written_together(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path / "device.db")
    record = make_record()
    envelope = store.record_session("dev-a", record)

    assert store.sessions() == [record]
    [entry] = store.pending()
    assert entry.message_id == envelope.id
    assert entry.topic == "resonera/v1/dev/dev-a/up/session"
    sent = decode_envelope(entry.payload)
    assert SessionRecord.model_validate(sent.body) == record


def test_sequence_numbers_grow_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "device.db"
    first = DeviceStore(path)
    seqs = [first.record_session("dev-a", make_record()).seq for _ in range(3)]
    first.close()
    reopened = DeviceStore(path)
    seqs.append(reopened.record_session("dev-a", make_record()).seq)
    assert seqs == [0, 1, 2, 3]


def test_only_acknowledged_messages_leave_the_outbox(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path / "device.db")
    ids = [store.record_session("dev-a", make_record()).id for _ in range(3)]
    assert store.acknowledge([ids[1], new_id()]) == 1
    assert [entry.message_id for entry in store.pending()] == [ids[0], ids[2]]
    assert store.outbox_depth() == 2
    # sessions themselves stay on the device: the outbox is only the sync queue
    assert len(store.sessions()) == 3


def test_unwritable_data_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    try:
        DeviceStore(blocker / "sub" / "device.db")
    except Exception as exc:
        assert "cannot create data directory" in str(exc)
    else:
        raise AssertionError("expected an error")


def test_with_a_device_key_every_queued_message_is_signed(tmp_path: Path) -> None:
    key = generate_key()
    store = DeviceStore(tmp_path / "device.db", signing_key=key)
    store.record_session("dev-a", make_record())
    [entry] = store.pending()
    verify_envelope(decode_envelope(entry.payload), key.public_key())
