"""Reads the API needs, as keyword-only functions over a database session."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from resonera.server.models import SessionRow


def list_sessions(
    session: Session, *, device_id: str | None = None, limit: int = 100, offset: int = 0
) -> Sequence[SessionRow]:
    """Session records, newest start first (ties: latest stored first)."""
    query = select(SessionRow)
    if device_id is not None:
        query = query.where(SessionRow.device_id == device_id)
    query = query.order_by(col(SessionRow.started_at).desc(), col(SessionRow.id).desc())
    return session.exec(query.offset(offset).limit(limit)).all()
