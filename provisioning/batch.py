"""Provisioning by the hundred: a CSV of serials registered at once (``resonera-provision devices
import``), each through the one-device path (``enrollment_codes.register_code`` or, for factory
bundles, ``register_bundle``), all in one database transaction.

Re-running the same file changes nothing: a serial the server has already registered, as the same
device id, is reported as it stands (enrolled, code unused until ..., code expired) and gets no new
code unless the admin asks (``new_codes``). A row the registry disagrees with (the serial bound to
another device id, a device id the server knows already) stops the whole import, naming its line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Final

from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from resonera.common import topics
from resonera.common.errors import ProtocolError, ResoneraError
from resonera.server.enrollment_codes import (
    MAX_CODE_TTL,
    SERIAL_MAX,
    EnrollmentError,
    check_serial,
)
from resonera.server.models import EnrollmentRow

#: A batch is a production run, not a fleet: past this the file is more likely a wrong one.
MAX_ROWS: Final = 10_000
HEADER: Final = ("serial", "device_id")


class BatchError(ResoneraError):
    """The serials file, or one of its rows, cannot be imported; nothing was registered."""


@dataclass(frozen=True)
class BatchRow:
    """One board of the file: its ``line`` (1-based, for messages), serial and device id."""

    line: int
    serial: str
    device_id: str


def read_serials(path: Path) -> list[BatchRow]:
    """The rows of a serials CSV: ``serial`` and optionally ``device_id`` (default: the serial),
    with or without that header line; wholly empty lines are skipped. Any bad row (empty serial,
    characters a serial or device id may not hold, a serial or device id twice, extra columns)
    raises ``BatchError`` naming its line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BatchError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise BatchError(f"{path}, line {line}: not UTF-8 text") from None
    rows: list[BatchRow] = []
    by_serial: dict[str, int] = {}
    by_device: dict[str, int] = {}
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        for cells in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if not rows and [c.strip().lower() for c in cells] in (["serial"], list(HEADER)):
                continue
            row = _row(cells, line)
            _no_twice(by_serial, row.serial, line, "serial")
            _no_twice(by_device, row.device_id, line, "device id")
            rows.append(row)
            if len(rows) > MAX_ROWS:
                raise BatchError(f"line {line}: more than {MAX_ROWS} serials in one file")
    except csv.Error as exc:
        raise BatchError(f"{path}, line {reader.line_num}: {exc}") from None
    except BatchError as exc:
        raise BatchError(f"{path}, {exc}") from None
    if not rows:
        raise BatchError(f"{path} holds no serials (one per line: serial[,device_id])")
    return rows


def _row(cells: list[str], line: int) -> BatchRow:
    if len(cells) > len(HEADER):
        raise BatchError(
            f"line {line}: {len(cells)} columns; expected serial and optionally device_id"
        )
    serial = cells[0]
    if not serial.strip():
        raise BatchError(f"line {line}: the serial is empty")
    try:
        check_serial(serial)
    except EnrollmentError:
        raise BatchError(
            f"line {line}: serial {serial!r} is not valid: 1-{SERIAL_MAX} printable characters "
            "without outer spaces"
        ) from None
    given = cells[1] if len(cells) > 1 and cells[1] != "" else None
    try:
        device_id = topics.check_device_id(given if given is not None else serial)
    except ProtocolError as exc:
        hint = "" if given is not None else " (give the board's device id in a second column)"
        raise BatchError(f"line {line}: {exc}{hint}") from None
    return BatchRow(line=line, serial=serial, device_id=device_id)


def _no_twice(seen: dict[str, int], value: str, line: int, what: str) -> None:
    if value in seen:
        raise BatchError(f"line {line}: {what} {value!r} is already on line {seen[value]}")
    seen[value] = line


class Standing(Enum):
    """What the registry already holds for a serial of the file."""

    NEW = "new"
    ENROLLED = "enrolled"
    CODE_UNUSED = "code unused"
    CODE_EXPIRED = "code expired"


@dataclass(frozen=True)
class Outcome:
    """One row after the import: how it stood, and what was made for it (a code or a bundle)."""

    row: BatchRow
    standing: Standing
    #: The new one-time code (shown only now), or None when none was made.
    code: str | None = None
    #: When the new code expires, or the old unused one.
    expires_at: datetime | None = None
    #: The factory bundle's folder (inside the staging folder), when one was made.
    bundle: Path | None = None
    certificate_sha256: str | None = None

    @property
    def made(self) -> bool:
        return self.code is not None or self.bundle is not None

    def describe(self) -> str:
        """One line for the report."""
        who = f"{self.row.serial!r} as {self.row.device_id!r}"
        if self.bundle is not None:
            return f"{who}: new, factory bundle {self.bundle.name}/"
        if self.code is not None:
            again = (
                "new code (the old one no longer works)"
                if self.standing is not Standing.NEW
                else "new"
            )
            assert self.expires_at is not None
            return f"{who}: {again}, code valid until {self.expires_at:%Y-%m-%d %H:%M} UTC"
        if self.standing is Standing.ENROLLED:
            return f"{who}: already registered and enrolled; nothing made"
        assert self.expires_at is not None
        when = f"{self.expires_at:%Y-%m-%d %H:%M} UTC"
        if self.standing is Standing.CODE_UNUSED:
            return f"{who}: already registered, its code unused until {when}; no new code"
        return f"{who}: already registered, its code expired at {when}; no new code"


def standing_of(
    session: Session, row: BatchRow, *, now: datetime
) -> tuple[Standing, datetime | None]:
    """How the registry holds ``row``'s serial; ``BatchError`` when it is bound to another id."""
    found = session.get(EnrollmentRow, row.serial)
    if found is None:
        return Standing.NEW, None
    if found.device_id != row.device_id:
        bound = f"device {found.device_id!r}" if found.device_id else "no device id (an old code)"
        raise BatchError(
            f"line {row.line}: serial {row.serial!r} is registered as {bound}, not "
            f"{row.device_id!r}; correct the file, or move that one board with "
            "resonera-provision device add --reprovision"
        )
    if found.used_at is not None:
        return Standing.ENROLLED, None
    if found.expires_at <= now:
        return Standing.CODE_EXPIRED, found.expires_at
    return Standing.CODE_UNUSED, found.expires_at


#: Makes what a row needs inside the import's transaction: ``(connection, row, standing)`` ->
#: the row's outcome. ``connection`` stands where the one-device functions take an engine.
MakeFor = Callable[[Connection, BatchRow, Standing], Outcome]


def import_rows(
    engine: Engine,
    rows: Sequence[BatchRow],
    make: MakeFor,
    *,
    wanted: Callable[[Standing], bool],
    finish: Callable[[list[Outcome]], None],
    now: datetime,
) -> list[Outcome]:
    """Register ``rows`` all or nothing: ``make`` is called, in one transaction, for each row whose
    standing is ``wanted``, then ``finish`` with every outcome (it writes the batch's files) before
    the commit; any error rolls every row back, and a row's is raised naming its line."""
    outcomes: list[Outcome] = []
    with _one_transaction(engine) as connection:
        with Session(connection) as session:
            standings = [standing_of(session, row, now=now) for row in rows]
        for row, (standing, expires) in zip(rows, standings, strict=True):
            if not wanted(standing):
                outcomes.append(Outcome(row, standing, expires_at=expires))
                continue
            try:
                outcomes.append(make(connection, row, standing))
            except EnrollmentError as exc:
                raise BatchError(f"line {row.line}: {exc}") from None
        finish(outcomes)
    return outcomes


@contextmanager
def _one_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in one transaction, committed when the block ends without an error, rolled back
    otherwise. The one-device functions (``register_code``, ``register_bundle``) open a Session on
    what they are given and commit it; a Session on a connection that is already in a transaction
    joins it, and its commit leaves the outer transaction open: so each row goes through the same
    code as ``device add``, and the batch stays all or nothing."""
    with engine.connect() as connection, connection.begin():
        yield connection


def code_ttl_ok(ttl: timedelta) -> timedelta:
    """The same bound ``register_code`` enforces, checked before any row is touched."""
    if not timedelta(minutes=1) <= ttl <= MAX_CODE_TTL:
        raise BatchError(
            f"a code must be valid for 1 minute to {MAX_CODE_TTL.days} days (--expires)"
        )
    return ttl
