"""``GET /healthz``: is this process able to serve (its database answers)?"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from resonera.server.db import check_db
from resonera.server.deps import EngineDep

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(engine: EngineDep) -> JSONResponse:
    """200 ``{"status": "ok", "database": "ok"}``; 503 when the database does not answer."""
    try:
        check_db(engine)
    except (SQLAlchemyError, OSError) as exc:
        log.warning("health check: database unavailable: %s", exc)
        return JSONResponse({"status": "unavailable", "database": "unavailable"}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})
