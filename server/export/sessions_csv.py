"""A patient's sessions as CSV: one row per session, the columns of the session API
(``SessionPublic``), oldest first, streamed in chunks so a long history never sits in memory.

Cells are safe to open in a spreadsheet: text that a spreadsheet would run as a formula (starting
with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) gets a leading ``'`` (OWASP's advice);
numbers are written by us and stay numbers.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from resonera.server.models import SessionRow
from resonera.server.schemas import SessionPublic

__all__ = ["COLUMNS", "csv_cell", "csv_chunks", "session_csv_chunks"]

COLUMNS: Final = tuple(SessionPublic.model_fields)
FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")
#: Rows fetched from the database, and written, per chunk.
CHUNK_ROWS: Final = 500


def csv_cell(value: Any) -> str | int | float:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def session_csv_chunks(
    engine: Engine, patient_id: str, since: datetime | None, until: datetime | None
) -> Iterator[str]:
    """The header, then chunks of rows; opens its own database session (it runs while the
    response streams, after the request's session has closed)."""
    query = (
        select(SessionRow)
        .where(SessionRow.patient_id == patient_id, *in_period(SessionRow.started_at, since, until))
        .order_by(col(SessionRow.started_at), col(SessionRow.id))
    )
    return csv_chunks(engine, query, COLUMNS)


def in_period(column: Any, since: datetime | None, until: datetime | None) -> list[Any]:
    """Conditions keeping ``column`` in ``[since, until)``; a missing bound is open."""
    conditions = []
    if since is not None:
        conditions.append(col(column) >= since)
    if until is not None:
        conditions.append(col(column) < until)
    return conditions


def csv_chunks(engine: Engine, query: Any, columns: Sequence[str]) -> Iterator[str]:
    """The header ``columns``, then chunks of the rows of ``query`` (table rows read with
    ``yield_per``), each row's attributes of those names as cells."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    with Session(engine) as session:
        rows = session.exec(query.execution_options(yield_per=CHUNK_ROWS))
        for count, row in enumerate(rows, start=1):
            writer.writerow([csv_cell(getattr(row, name)) for name in columns])
            if count % CHUNK_ROWS == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
    yield buffer.getvalue()
