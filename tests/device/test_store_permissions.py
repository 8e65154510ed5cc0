"""The device's SQLite files (the store, the dose ledger, their -wal/-shm sidecars) are the device
user's alone whatever the process umask: files 0600, the data folder 0700; an older install's wider
modes are tightened when they are opened. Store and ledger share one opener, which also survives the
other one creating the data key at the same moment."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from device_peer import device_settings

from resonera.common.program import builtin_program
from resonera.device.crypto_store import DataKey, create_key_file
from resonera.device.safety.dose_ledger import DoseLedger, DoseLedgerError
from resonera.device.session import play_standalone
from resonera.device.store import DeviceStore
from resonera.engine.audio.sinks import NullSink


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common default umask (files 0644, folders 0755), not the unit's ``UMask=0077``."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _modes(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): _mode(path) for path in sorted(folder.rglob("*"))}


@pytest.mark.usefixtures("umask_022")
def test_store_and_ledger_files_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    settings = device_settings(None, tmp_path, "perm-dev")  # data_dir: tmp_path/data, not there yet
    store = settings.open_store()
    record = play_standalone(settings, store, builtin_program("demo-alpha"), NullSink())
    ledger = DoseLedger.for_settings(settings)
    ledger.add_second(time.time(), 60.0)  # both open, both written: their WAL files exist
    try:
        modes = _modes(settings.data_dir)
        for name in ("device.db", "dose.db"):
            assert {name, f"{name}-wal", f"{name}-shm"} <= modes.keys(), modes
        assert modes == {
            name: 0o700 if (settings.data_dir / name).is_dir() else 0o600 for name in modes
        }
        assert _mode(settings.data_dir) == 0o700
        assert store.sessions() == [record]
    finally:
        ledger.close()
        store.close()


@pytest.mark.usefixtures("umask_022")
def test_an_older_install_with_wider_modes_is_tightened(tmp_path: Path) -> None:
    settings = device_settings(None, tmp_path, "perm-old")
    settings.data_dir.mkdir(mode=0o755)
    for name in ("device.db", "dose.db"):  # as plain sqlite3 left them: 0644, -wal and -shm too
        keep = sqlite3.connect(settings.data_dir / name)
        keep.execute("PRAGMA journal_mode=WAL")
        keep.execute("CREATE TABLE t (x)")
        keep.execute("INSERT INTO t VALUES (1)")
        keep.commit()
        assert _mode(settings.data_dir / f"{name}-wal") == 0o644
        keep.close()
        keep = sqlite3.connect(settings.data_dir / name)  # leaves a 0644 -wal/-shm open
        keep.execute("SELECT * FROM t").fetchall()
        assert _mode(settings.data_dir / f"{name}-shm") == 0o644
        settings.data_dir.joinpath(f"{name}-journal").write_bytes(b"")
        keep.close()
    for name in ("device.db", "dose.db"):
        assert _mode(settings.data_dir / name) == 0o644
    store = settings.open_store()
    ledger = DoseLedger.for_settings(settings)
    try:
        modes = _modes(settings.data_dir)
        assert "device.db-journal" in modes
        assert modes == {
            name: 0o700 if (settings.data_dir / name).is_dir() else 0o600 for name in modes
        }
        assert _mode(settings.data_dir) == 0o700
    finally:
        ledger.close()
        store.close()


def test_a_file_whose_mode_cannot_be_changed_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user's file (here: chmod refused, as for a file this user does not own) is never
    opened as it is: one line says what and why."""
    folder = tmp_path / "data"
    folder.mkdir(mode=0o700)
    (folder / "dose.db").touch(mode=0o644)
    (folder / "dose.db").chmod(0o644)

    def refused(self: Path, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted", str(self))

    monkeypatch.setattr(Path, "chmod", refused)
    with pytest.raises(DoseLedgerError) as info:
        DoseLedger(folder / "dose.db")
    assert str(info.value) == (
        f"the dose ledger {folder / 'dose.db'} has mode 644 and cannot be restricted to its owner "
        "(600): Operation not permitted; it must belong to the device's user"
    )


def test_store_and_ledger_opened_at_once_share_the_one_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store finds no key and makes one, while the ledger (another process on the device)
    makes one in the same moment: the store takes the ledger's instead of failing or replacing
    it. The interleaving is forced: the ledger opens inside the store's key creation."""
    real_create = create_key_file
    ledgers: list[DoseLedger] = []
    raced: list[Path] = []

    def racing_create(path: Path) -> DataKey:
        if not raced:  # only the first: the other side's own creation is the real one
            raced.append(path)
            ledgers.append(DoseLedger(tmp_path / "data" / "dose.db", key_path=path))
        return real_create(path)

    monkeypatch.setattr("resonera.device.localdb.create_key_file", racing_create)
    store = DeviceStore(tmp_path / "data" / "device.db")
    [ledger] = ledgers
    assert store.key.key_id == ledger.key.key_id
    store.close()
    ledger.close()
    # and the other way round: the ledger losing the race to the store
    ledgers.clear()
    (tmp_path / "data" / "keys" / "data.key").unlink()
    for path in (tmp_path / "data").glob("*.db*"):
        path.unlink()

    stores: list[DeviceStore] = []
    raced.clear()

    def racing_create_for_ledger(path: Path) -> DataKey:
        if not raced:
            raced.append(path)
            stores.append(DeviceStore(tmp_path / "data" / "device.db", data_key_path=path))
        return real_create(path)

    monkeypatch.setattr("resonera.device.localdb.create_key_file", racing_create_for_ledger)
    ledger = DoseLedger(tmp_path / "data" / "dose.db")
    [store] = stores
    assert store.key.key_id == ledger.key.key_id
    store.close()
    ledger.close()
