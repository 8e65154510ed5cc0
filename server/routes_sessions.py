"""``/api/v1/sessions``: the session records devices reported."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from resonera.server import crud
from resonera.server.deps import Authorized, SessionDep
from resonera.server.models import DEVICE_ID_MAX, SessionPublic

MAX_LIMIT = 1000
router = APIRouter(prefix="/sessions", tags=["sessions"], dependencies=[Authorized])


@router.get("", response_model=list[SessionPublic])
def list_sessions(
    session: SessionDep,
    device_id: Annotated[str | None, Query(max_length=DEVICE_ID_MAX)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[SessionPublic]:
    """Sessions, newest first; filter by ``device_id``; page with ``limit`` and ``offset``."""
    rows = crud.list_sessions(session, device_id=device_id, limit=limit, offset=offset)
    return [SessionPublic.model_validate(row, from_attributes=True) for row in rows]
