"""The rolling 7-day sound dose, persisted on the device (works offline, survives power loss).

Energy (Pa²·s of A-weighted pressure) is kept in one row per minute; each second's MEL is added in its
own committed transaction (SQLite WAL, ``synchronous=FULL``), so killing the process at any moment loses
at most the second in progress. Fractions of the allowance are derived per mode from the energy, so a
clinician switching a person from mode 1 to mode 2 takes effect on the whole week at once.

Every row carries a checksum. A row that fails it (disk corruption, a torn write, tampering with the
file) makes the ledger *corrupted*: it is reported, and until a clinician resets it the ledger answers
conservatively that the whole allowance is used (safety.md: "treated conservatively").
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.orm import registry
from sqlmodel import Field, Session, SQLModel, col, create_engine, delete, select

from resonera.common.dose import WINDOW_S, DoseMode, allowance_pa2s, pressure_squared
from resonera.common.errors import ResoneraError

log = logging.getLogger(__name__)

#: Minute rows older than this are pruned; daily reports reach back this far.
KEEP_DAYS = 35


class DoseLedgerError(ResoneraError):
    """The dose ledger cannot be opened or written."""


class _LedgerModel(SQLModel, registry=registry()):
    pass


class DoseMinute(_LedgerModel, table=True):
    __tablename__ = "dose_minute"

    minute: int = Field(primary_key=True)  # Unix time // 60
    pa2s: float
    seconds: int
    checksum: str


class DoseReset(_LedgerModel, table=True):
    __tablename__ = "dose_reset"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime
    removed_rows: int
    note: str


def _checksum(minute: int, pa2s: float, seconds: int) -> str:
    return hashlib.sha256(f"{minute}:{pa2s!r}:{seconds}".encode()).hexdigest()[:16]


def _pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


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


class DoseLedger:
    """Thread-safe; one short transaction per call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(
                f"sqlite:///{path}", connect_args={"check_same_thread": False}
            )
            event.listen(self.engine, "connect", _pragmas)
            _LedgerModel.metadata.create_all(self.engine)
        except Exception as exc:
            raise DoseLedgerError(f"cannot open the dose ledger {path}: {exc}") from None

    def close(self) -> None:
        self.engine.dispose()

    def add_second(self, at: float, level_dba: float) -> None:
        """Add one second at ``level_dba`` (A-weighted dB SPL) ending at Unix time ``at``."""
        self.add_energy(at, pressure_squared(level_dba), seconds=1)

    def add_energy(self, at: float, pa2s: float, seconds: int = 1) -> None:
        """Add ``pa2s`` Pa²·s measured over ``seconds`` seconds ending at Unix time ``at``."""
        minute = int(at // 60)
        with Session(self.engine) as db:
            row = db.get(DoseMinute, minute)
            if row is None:
                row = DoseMinute(minute=minute, pa2s=0.0, seconds=0, checksum="")
            elif row.checksum != _checksum(row.minute, row.pa2s, row.seconds):
                # Never "repair" a bad row by adding to it: keep it bad, so it stays reported.
                log.error("dose ledger row for minute %d fails its checksum", minute)
                return
            row.pa2s += pa2s
            row.seconds += seconds
            row.checksum = _checksum(row.minute, row.pa2s, row.seconds)
            db.add(row)
            db.commit()

    def status(self, now: float, mode: DoseMode = 1) -> DoseStatus:
        """The last 7 days up to ``now``. The oldest minute counts whole: a conservative edge."""
        first = int((now - WINDOW_S) // 60)
        rows = self._rows_from(first)
        good = [r for r in rows if r.checksum == _checksum(r.minute, r.pa2s, r.seconds)]
        return DoseStatus(
            pa2s=sum(r.pa2s for r in good),
            seconds=sum(r.seconds for r in good),
            corrupted=len(good) != len(rows),
            mode=mode,
        )

    def daily(self, now: float, days: int = 7) -> list[tuple[date, float]]:
        """(UTC day, Pa²·s) for the last ``days`` days, oldest first, days without sound included."""
        today = datetime.fromtimestamp(now, UTC).date()
        first_day = date.fromordinal(today.toordinal() - days + 1)
        first = int(
            datetime(first_day.year, first_day.month, first_day.day, tzinfo=UTC).timestamp()
        )
        totals = {date.fromordinal(first_day.toordinal() + i): 0.0 for i in range(days)}
        for row in self._rows_from(first // 60):
            if row.checksum == _checksum(row.minute, row.pa2s, row.seconds):
                day = datetime.fromtimestamp(row.minute * 60, UTC).date()
                if day in totals:
                    totals[day] += row.pa2s
        return sorted(totals.items())

    def prune(self, now: float) -> int:
        cutoff = int((now - KEEP_DAYS * 86400) // 60)
        with Session(self.engine) as db:
            result = db.exec(delete(DoseMinute).where(col(DoseMinute.minute) < cutoff))
            db.commit()
            return int(result.rowcount)

    def reset_corrupted(self, now: float, note: str) -> int:
        """Remove rows that fail their checksum (a clinician's decision, recorded); return how many."""
        with Session(self.engine) as db:
            rows: Sequence[DoseMinute] = db.exec(select(DoseMinute)).all()
            bad = [r for r in rows if r.checksum != _checksum(r.minute, r.pa2s, r.seconds)]
            for row in bad:
                db.delete(row)
            db.add(DoseReset(at=datetime.fromtimestamp(now, UTC), removed_rows=len(bad), note=note))
            db.commit()
            return len(bad)

    def _rows_from(self, first_minute: int) -> list[DoseMinute]:
        with Session(self.engine) as db:
            query = select(DoseMinute).where(col(DoseMinute.minute) >= first_minute)
            return list(db.exec(query).all())
