"""The rolling 7-day sound dose, persisted on the device (works offline, survives power loss), sealed
at rest.

Energy (Pa²·s of A-weighted pressure) is kept in one row per minute; each second's MEL is added in its
own committed transaction (SQLite WAL, ``synchronous=FULL``), so killing the process at any moment loses
at most the second in progress. Fractions of the allowance are derived per mode from the energy, so a
clinician switching a person from mode 1 to mode 2 takes effect on the whole week at once.

Each minute's energy is sealed with AES-GCM under the device data key (``crypto_store``, the key that
seals the store: ``keys/data.key`` next to the ledger by default), bound to its minute and its seconds
(the associated data), so the seal is also the row's integrity check. The minute and its seconds stay
in clear, like a session's start time in the store: when sound played, not how loud. A ledger from
before sealing (plaintext rows with a checksum) is sealed on open; a row that failed its checksum stays
bad after that. A lost key is ``DataKeyMissing`` and a wrong one ``DataKeyMismatch``: never replaced
while sealed rows exist.

A row that does not open (disk corruption, a torn write, tampering with the file) makes the ledger
*corrupted*: it is reported, and until a clinician resets it the ledger answers conservatively that
the whole allowance is used (docs/safety.md §3). A clinician's reset removes only the
rows that do not open: the week's intact rows keep counting, so a reset never gives back allowance the
person really used. A reset of a ledger that is not corrupted is refused (nothing to repair, and
zeroing real exposure is not a clinician's remote action). Each reset request is carried out once, by
its id, in the same transaction that records it.

The minutes are those of the dose clock (``device/trusted_time.py``), not of the wall clock: its
state is kept here (``clock_state``, written in the same transaction as the second it dated), and
when trusted time arrives the minutes dated without it are moved in one transaction
(``move_minutes``): forward by what the clock lagged, never past now, and any minute dated after
now back to now. Nothing is ever taken away by a clock: a move adds a row's energy to the minute it
lands on, and the retention (``prune``) never reaches past the last time the clock knew had passed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import struct
import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from resonera.common.dose import WINDOW_S, DoseMode, allowance_pa2s, pressure_squared
from resonera.common.errors import ResoneraError
from resonera.device.crypto_store import DataKey, SealedDataCorrupt
from resonera.device.localdb import (
    LocalDB,
    from_db_time,
    open_data_file,
    to_db_time,
)

if TYPE_CHECKING:
    from resonera.device.settings import DeviceSettings

log = logging.getLogger(__name__)

#: Minute rows older than this are pruned; daily reports reach back this far.
KEEP_DAYS = 35
#: 1: plaintext rows with a checksum (first release); 2: sealed rows.
LEDGER_SCHEMA: Final = 2
_ENERGY: Final = struct.Struct("<d")
#: Later than any minute (SQLite's largest integer).
_NO_MINUTE_LIMIT: Final = 2**63 - 1


class DoseLedgerError(ResoneraError):
    """The dose ledger cannot be opened or written."""


#: The layout (plain ``sqlite3``: see ``device/localdb.py``).
#: ``dose_minute``: ``minute`` is Unix time // 60; ``sealed`` the minute's Pa²·s (a little-endian
#: double), sealed, or b"" for a row that was already bad when the ledger was sealed.
#: ``dose_reset``: ``reset_id`` is the server's request id (NULL for a reset made on the device);
#: ``event_recorded``: its ``dose_ledger_reset`` safety event was written to the store (after a
#: crash between the reset and its event, the event is written on the next look); ``sealed`` is
#: the JSON of ``LedgerReset``'s facts and the clinician's reason.
_SCHEMA_DDL: Final = (
    "CREATE TABLE dose_minute (minute INTEGER NOT NULL PRIMARY KEY, seconds INTEGER NOT NULL, "
    "sealed BLOB NOT NULL)",
    "CREATE TABLE dose_reset (id INTEGER NOT NULL PRIMARY KEY, reset_id VARCHAR UNIQUE, "
    "at DATETIME NOT NULL, event_recorded BOOLEAN NOT NULL, sealed BLOB NOT NULL)",
    "CREATE TABLE ledger_meta (name VARCHAR NOT NULL PRIMARY KEY, value VARCHAR NOT NULL)",
)
_RESET_COLUMNS: Final = "reset_id, at, event_recorded, sealed"


def _checksum(minute: int, pa2s: float, seconds: int) -> str:
    """The first release's row checksum (only read when sealing such a ledger)."""
    return hashlib.sha256(f"{minute}:{pa2s!r}:{seconds}".encode()).hexdigest()[:16]


def _minute_context(minute: int, seconds: int) -> str:
    return f"dose_minute:{minute}:{seconds}"


def _reset_context(reset_id: str | None, at: datetime) -> str:
    # SQLite gives the time back without its zone: bind to the naive UTC value both ways
    naive = at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo is not None else at
    return f"dose_reset:{reset_id or naive.isoformat()}"


class _Minute(NamedTuple):
    minute: int
    seconds: int
    sealed: bytes


@dataclass(frozen=True)
class DoseStatus:
    """The rolling window at one moment."""

    pa2s: float
    seconds: int
    corrupted: bool
    mode: DoseMode

    @property
    def measured_fraction(self) -> float:
        return self.pa2s / allowance_pa2s(self.mode)

    @property
    def fraction(self) -> float:
        """What the safety chain must act on: a corrupted ledger counts as the allowance used."""
        return max(1.0, self.measured_fraction) if self.corrupted else self.measured_fraction


@dataclass(frozen=True)
class LedgerReset:
    """A reset request as the ledger carried it out (``applied``) or refused it, with the rolling
    week (mode 1) before and after. ``repeated``: the request was already handled before."""

    reset_id: str | None
    applied: bool
    reason: str
    requested_by: str
    removed_rows: int
    corrupted_before: bool
    week_pa2s_before: float
    week_fraction_before: float
    week_fraction_after: float
    at: datetime
    event_recorded: bool
    repeated: bool = False

    def facts(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "reason": self.reason,
            "requested_by": self.requested_by,
            "removed_rows": self.removed_rows,
            "corrupted_before": self.corrupted_before,
            "week_pa2s_before": self.week_pa2s_before,
            "week_fraction_before": self.week_fraction_before,
            "week_fraction_after": self.week_fraction_after,
        }


class DoseLedger:
    """Thread-safe; one short transaction per call."""

    def __init__(
        self, path: Path, *, key_path: Path | None = None, read_only: bool = False
    ) -> None:
        """``key_path``: the device data key (default ``keys/data.key`` next to the ledger, as the
        store's). Created with a new ledger; ``DataKeyMissing`` when sealed rows exist without it,
        ``DataKeyMismatch`` when it is another key.

        ``read_only``: for a command that only looks (``localdb.open_read_only``): nothing is
        created or sealed; ``NothingStored`` when there is no ledger, ``DoseLedgerError`` when it
        is of an older layout (the service upgrades it). A write through it fails."""
        self.path = path
        self.key_path = key_path or path.parent / "keys" / "data.key"
        self.key = open_data_file(
            path,
            self.key_path,
            read_only=read_only,
            name="the dose ledger",
            absent=f"no dose ledger at {path}: no sound played on this device yet",
            error=DoseLedgerError,
            recorded_key=_recorded_key,
            sealed_rows=_sealed_rows,
            migrate=self._migrate,
            check_schema=self._check_readable,
        )
        self._db = LocalDB(path, busy_timeout_ms=5000, read_only=read_only)
        #: Held by the dose clock while it reads, changes and keeps its state (its seconds dated
        #: on the audio thread, the server's time on the sync thread): one change at a time.
        self.clock_lock = threading.Lock()
        #: The UTC day the retention was last applied on (``prune``): once a day, with the writes.
        self._pruned_day: int | None = None

    @classmethod
    def for_settings(cls, settings: DeviceSettings, *, read_only: bool = False) -> DoseLedger:
        """The ledger of a ``DeviceSettings``, sealed under its data key."""
        return cls(settings.dose_ledger_path, key_path=settings.data_key_path, read_only=read_only)

    def close(self) -> None:
        self._db.close()

    # --- opening ---------------------------------------------------------------------------------

    def _check_schema(self, conn: sqlite3.Connection) -> int:
        """The ledger's layout version, refused when newer than this software's."""
        version = _schema_version(conn)
        if version > LEDGER_SCHEMA:
            raise DoseLedgerError(
                f"the dose ledger {self.path} is at schema {version}, newer than this "
                f"software ({LEDGER_SCHEMA}); install the newer release again"
            )
        return version

    def _check_readable(self, conn: sqlite3.Connection) -> None:
        """A ledger opened read-only must already be at this software's layout: reading never
        seals or migrates (the service, or ``resonera-device run``, does)."""
        version = self._check_schema(conn)
        if version < LEDGER_SCHEMA:
            raise DoseLedgerError(
                f"the dose ledger {self.path} is at schema {version}, older than this "
                f"software's ({LEDGER_SCHEMA}): start the service (resonera-device run) once to "
                "upgrade it; this command only reads and changes nothing"
            )

    def _migrate(self, conn: sqlite3.Connection, key: DataKey) -> str | None:
        """Create the layout, or seal a first-release ledger in place (inside ``open_sealed``'s
        transaction)."""
        version = self._check_schema(conn)
        if version == 0:
            for ddl in _SCHEMA_DDL:
                conn.execute(ddl)
        elif version == 1:
            _seal_first_release(conn, key)
        conn.execute(
            "INSERT OR REPLACE INTO ledger_meta VALUES ('schema', ?), ('data_key_id', ?)",
            (str(LEDGER_SCHEMA), key.key_id),
        )
        return f"dose ledger {self.path} sealed at rest" if version == 1 else None

    # --- sealing ---------------------------------------------------------------------------------

    def _seal_minute(self, minute: int, seconds: int, pa2s: float) -> bytes:
        return self.key.seal(_ENERGY.pack(pa2s), _minute_context(minute, seconds))

    def _energy(self, row: _Minute) -> float | None:
        """The row's Pa²·s, or None when it does not open (a corrupted row)."""
        try:
            plain = self.key.open(row.sealed, _minute_context(row.minute, row.seconds))
        except SealedDataCorrupt:
            return None
        return _ENERGY.unpack(plain)[0] if len(plain) == _ENERGY.size else None

    # --- the dose --------------------------------------------------------------------------------

    def add_second(self, at: float, level_dba: float) -> None:
        """Add one second at ``level_dba`` (A-weighted dB SPL) ending at Unix time ``at``."""
        self.add_energy(at, pressure_squared(level_dba), seconds=1)

    def add_energy(
        self, at: float, pa2s: float, seconds: int = 1, *, clock_state: str | None = None
    ) -> None:
        """Add ``pa2s`` Pa²·s measured over ``seconds`` seconds ending at Unix time ``at``; on the
        first write of each day, minutes older than ``KEEP_DAYS`` are removed (``prune``).
        ``clock_state``: the dose clock's state after dating this second, kept in the same
        transaction (``device/trusted_time.py``)."""
        if (day := int(at // 86400)) != self._pruned_day:
            self._pruned_day = day
            self.prune(at)
        minute = int(at // 60)
        with self._db.write() as db:
            self._add_to_minute(db, minute, pa2s, seconds)
            if clock_state is not None:
                _save_clock_state(db, clock_state)

    def _add_to_minute(
        self, db: sqlite3.Connection, minute: int, pa2s: float, seconds: int
    ) -> bool:
        """Add to ``minute``'s row (made when missing) inside ``db``'s transaction; False when
        that row does not open, which is then left as it is."""
        found = db.execute(
            "SELECT minute, seconds, sealed FROM dose_minute WHERE minute = ?", (minute,)
        ).fetchone()
        if found is None:
            before, energy = 0, 0.0
        else:
            row = _Minute(*found)
            opened = self._energy(row)
            if opened is None:
                # Never "repair" a bad row by adding to it: keep it bad, so it stays reported.
                log.error("dose ledger row for minute %d does not open (corrupted)", minute)
                return False
            before, energy = row.seconds, opened
        total = before + seconds
        db.execute(
            "INSERT OR REPLACE INTO dose_minute (minute, seconds, sealed) VALUES (?, ?, ?)",
            (minute, total, self._seal_minute(minute, total, energy + pa2s)),
        )
        return True

    # --- the dose clock's state and its corrections ------------------------------------------

    def clock_state(self) -> str | None:
        """The dose clock's state as it last kept it (``device/trusted_time.py``), None before."""
        with self._db.read() as read:
            return _clock_state(read)

    def save_clock_state(self, state: str) -> None:
        with self._db.write() as db:
            _save_clock_state(db, state)

    def move_minutes(
        self,
        first_minute: int | None,
        shift_minutes: int,
        now_minute: int | None,
        clock_state: str,
    ) -> int:
        """In one transaction with ``clock_state``: every minute from ``first_minute`` on (None:
        none) moves ``shift_minutes`` (≥ 0) later but no later than ``now_minute``, and every
        minute after ``now_minute`` moves to it (None: no limit, nothing comes back). A moved
        row's energy and seconds are added to the row it lands on; a row that does not open stays
        where it is (it counts as the whole allowance anyway). How many rows moved."""
        moved = 0
        if now_minute is None:
            now_minute = _NO_MINUTE_LIMIT
        with self._db.write() as db:
            rows = [
                _Minute(*row)
                for row in db.execute(
                    "SELECT minute, seconds, sealed FROM dose_minute WHERE minute > ? OR "
                    "(? IS NOT NULL AND minute >= ?) ORDER BY minute",
                    (now_minute, first_minute, first_minute),
                )
            ]
            landing: list[tuple[int, int, float, int]] = []
            for row in rows:
                shifted = row.minute + shift_minutes
                if first_minute is None or row.minute < first_minute:
                    shifted = row.minute
                target = min(shifted, now_minute)
                energy = self._energy(row)
                if target == row.minute or energy is None:
                    continue
                db.execute("DELETE FROM dose_minute WHERE minute = ?", (row.minute,))
                landing.append((row.minute, target, energy, row.seconds))
            for origin, target, energy, seconds in landing:
                if self._add_to_minute(db, target, energy, seconds):
                    moved += 1
                else:  # it would land on a row that does not open: it stays where it was
                    self._add_to_minute(db, origin, energy, seconds)
            _save_clock_state(db, clock_state)
        if moved:
            log.warning(
                "dose ledger: %d minute(s) dated without trusted time moved to their time", moved
            )
        return moved

    def status(self, now: float, mode: DoseMode = 1) -> DoseStatus:
        """The last 7 days up to ``now``. The oldest minute counts whole: a conservative edge."""
        return self._status(self._rows_from(int((now - WINDOW_S) // 60)), mode)

    def _status(self, rows: list[_Minute], mode: DoseMode) -> DoseStatus:
        pa2s, seconds, bad = 0.0, 0, 0
        for row in rows:
            energy = self._energy(row)
            if energy is None:
                bad += 1
            else:
                pa2s += energy
                seconds += row.seconds
        return DoseStatus(pa2s=pa2s, seconds=seconds, corrupted=bad > 0, mode=mode)

    def daily(self, now: float, days: int = 7) -> list[tuple[date, float]]:
        """(UTC day, Pa²·s) for the last ``days`` days, oldest first, days without sound included."""
        today = datetime.fromtimestamp(now, UTC).date()
        first_day = date.fromordinal(today.toordinal() - days + 1)
        first = int(
            datetime(first_day.year, first_day.month, first_day.day, tzinfo=UTC).timestamp()
        )
        totals = {date.fromordinal(first_day.toordinal() + i): 0.0 for i in range(days)}
        for row in self._rows_from(first // 60):
            energy = self._energy(row)
            if energy is not None:
                day = datetime.fromtimestamp(row.minute * 60, UTC).date()
                if day in totals:
                    totals[day] += energy
        return sorted(totals.items())

    def prune(self, now: float) -> int:
        """Remove the minutes older than ``KEEP_DAYS`` before ``now`` (far beyond the 7-day window,
        kept for the daily history); how many. Never past what the dose clock last knew had
        passed (its ``floor``): a clock read a year ahead removes nothing it would not remove."""
        with self._db.write() as db:
            known = _clock_floor(_clock_state(db))
            until = now if known is None else min(now, known)
            cutoff = int((until - KEEP_DAYS * 86400) // 60)
            return int(db.execute("DELETE FROM dose_minute WHERE minute < ?", (cutoff,)).rowcount)

    # --- resets ----------------------------------------------------------------------------------

    def reset_corrupted(self, now: float, note: str) -> int:
        """Remove rows that do not open (a decision made on the device, recorded); how many."""
        return self.reset(None, now, reason=note, force=True).removed_rows

    def reset(
        self,
        reset_id: str | None,
        now: float,
        *,
        reason: str,
        requested_by: str = "",
        force: bool = False,
    ) -> LedgerReset:
        """Carry out a clinician's reset request once: a request already handled (applied or
        refused) returns what was done then, with ``repeated``. Without ``force`` a ledger that is
        not corrupted is left as it is and the request is refused (recorded all the same)."""
        at = datetime.fromtimestamp(now, UTC)
        with self._db.write() as db:
            if reset_id is not None:
                done = db.execute(
                    f"SELECT {_RESET_COLUMNS} FROM dose_reset WHERE reset_id = ?", (reset_id,)
                ).fetchone()
                if done is not None:
                    return self._reset_of(done, repeated=True)
            rows = self._rows_from(None, db)
            first = int((now - WINDOW_S) // 60)
            before = self._status([r for r in rows if r.minute >= first], 1)
            bad = [r.minute for r in rows if self._energy(r) is None]
            applied = force or before.corrupted
            if applied and bad:
                marks = ", ".join("?" * len(bad))
                db.execute(f"DELETE FROM dose_minute WHERE minute IN ({marks})", bad)
            outcome = LedgerReset(
                reset_id=reset_id,
                applied=applied,
                reason=reason,
                requested_by=requested_by,
                removed_rows=len(bad) if applied else 0,
                corrupted_before=before.corrupted,
                week_pa2s_before=before.pa2s,
                week_fraction_before=before.fraction,
                week_fraction_after=before.measured_fraction if applied else before.fraction,
                at=at,
                event_recorded=reset_id is None,
            )
            db.execute(
                "INSERT INTO dose_reset (reset_id, at, event_recorded, sealed) VALUES (?, ?, ?, ?)",
                (
                    reset_id,
                    to_db_time(at),
                    outcome.event_recorded,
                    self.key.seal(
                        json.dumps(outcome.facts()).encode(), _reset_context(reset_id, at)
                    ),
                ),
            )
        if applied:
            log.warning(
                "dose ledger reset (%s): %d corrupted row(s) removed; the week was %.1f %% "
                "(counted as used), now %.1f %%",
                reason,
                outcome.removed_rows,
                outcome.week_fraction_before * 100,
                outcome.week_fraction_after * 100,
            )
        else:
            log.warning("dose ledger reset %s refused: the ledger is not corrupted", reset_id)
        return outcome

    def mark_recorded(self, reset_id: str) -> None:
        with self._db.write() as db:
            db.execute("UPDATE dose_reset SET event_recorded = 1 WHERE reset_id = ?", (reset_id,))

    def _reset_of(self, row: tuple[Any, ...], *, repeated: bool = False) -> LedgerReset:
        reset_id, stored_at, event_recorded, sealed = row
        at = from_db_time(stored_at)
        facts = json.loads(self.key.open(sealed, _reset_context(reset_id, at)))
        return LedgerReset(
            reset_id=reset_id,
            applied=bool(facts.get("applied", True)),
            reason=str(facts.get("reason", "")),
            requested_by=str(facts.get("requested_by", "")),
            removed_rows=int(facts.get("removed_rows", 0)),
            corrupted_before=bool(facts.get("corrupted_before", True)),
            week_pa2s_before=float(facts.get("week_pa2s_before", 0.0)),
            week_fraction_before=float(facts.get("week_fraction_before", 0.0)),
            week_fraction_after=float(facts.get("week_fraction_after", 0.0)),
            at=at,
            event_recorded=bool(event_recorded),
            repeated=repeated,
        )

    def _rows_from(
        self, first_minute: int | None, db: sqlite3.Connection | None = None
    ) -> list[_Minute]:
        query = "SELECT minute, seconds, sealed FROM dose_minute"
        params: tuple[int, ...] = ()
        if first_minute is not None:
            query, params = f"{query} WHERE minute >= ?", (first_minute,)
        if db is not None:
            return [_Minute(*row) for row in db.execute(query, params)]
        with self._db.read() as read:
            return [_Minute(*row) for row in read.execute(query, params)]


def _clock_state(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT value FROM ledger_meta WHERE name = 'dose_clock'").fetchone()
    return str(row[0]) if row else None


def _save_clock_state(conn: sqlite3.Connection, state: str) -> None:
    conn.execute("INSERT OR REPLACE INTO ledger_meta VALUES ('dose_clock', ?)", (state,))


def _clock_floor(state: str | None) -> float | None:
    """The Unix time the dose clock last knew had passed, from its kept ``state``."""
    if state is None:
        return None
    try:
        floor = json.loads(state).get("floor")
    except (ValueError, AttributeError):
        return None
    return float(floor) if isinstance(floor, int | float) else None


def _recorded_key(conn: sqlite3.Connection) -> str | None:
    """The id of the key the ledger was sealed with (schema 2 on), None before."""
    if _schema_version(conn) < 2:
        return None
    row = conn.execute("SELECT value FROM ledger_meta WHERE name = 'data_key_id'").fetchone()
    return str(row[0]) if row else None


def _sealed_rows(conn: sqlite3.Connection) -> int:
    if _schema_version(conn) < 2:
        return 0
    return sum(
        int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        for table in ("dose_minute", "dose_reset")
    )


def _schema_version(conn: sqlite3.Connection) -> int:
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "ledger_meta" in tables:
        row = conn.execute("SELECT value FROM ledger_meta WHERE name = 'schema'").fetchone()
        return int(row[0]) if row else LEDGER_SCHEMA
    return 1 if "dose_minute" in tables else 0


def _seal_first_release(conn: sqlite3.Connection, key: DataKey) -> None:
    """Seal a plaintext ledger in place. A row that failed its checksum is kept bad (an empty seal),
    so the ledger stays corrupted until a clinician resets it."""
    for ddl in _SCHEMA_DDL:
        conn.execute(ddl.replace("CREATE TABLE dose_", "CREATE TABLE new_dose_", 1))
    for minute, pa2s, seconds, checksum in conn.execute(
        "SELECT minute, pa2s, seconds, checksum FROM dose_minute"
    ).fetchall():
        intact = checksum == _checksum(minute, pa2s, seconds)
        sealed = key.seal(_ENERGY.pack(pa2s), _minute_context(minute, seconds)) if intact else b""
        conn.execute("INSERT INTO new_dose_minute VALUES (?, ?, ?)", (minute, seconds, sealed))
    for at, removed, note in conn.execute(
        "SELECT at, removed_rows, note FROM dose_reset"
    ).fetchall():
        when = datetime.fromisoformat(at)
        facts = {"applied": True, "reason": note, "removed_rows": removed}
        conn.execute(
            "INSERT INTO new_dose_reset (reset_id, at, event_recorded, sealed) VALUES (NULL, ?, 1, ?)",
            (at, key.seal(json.dumps(facts).encode(), _reset_context(None, when))),
        )
    for table in ("dose_minute", "dose_reset"):
        conn.execute(f"DROP TABLE {table}")
        conn.execute(f"ALTER TABLE new_{table} RENAME TO {table}")
