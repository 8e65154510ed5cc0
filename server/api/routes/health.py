"""``/healthz`` (this process can serve), ``/readyz`` (database and broker reachable), ``/metrics``."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from resonera.server.api.deps import StateDep
from resonera.server.db import check_db

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


def _database_ok(state: StateDep) -> bool:
    try:
        check_db(state.engine)
    except (SQLAlchemyError, OSError) as exc:
        log.warning("health check: database unavailable: %s", exc)
        return False
    return True


@router.get("/healthz")
def healthz(state: StateDep) -> JSONResponse:
    """200 ``{"status": "ok", "database": "ok"}``; 503 when the database does not answer."""
    if not _database_ok(state):
        return JSONResponse({"status": "unavailable", "database": "unavailable"}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})


@router.get("/readyz")
def readyz(state: StateDep) -> JSONResponse:
    """200 when the database and the MQTT broker are reachable; 503 naming what is not."""
    database = _database_ok(state)
    broker = state.broker_ok()
    body = {
        "status": "ok" if database and broker else "unavailable",
        "database": "ok" if database else "unavailable",
        "broker": "ok" if broker else "unavailable",
    }
    return JSONResponse(body, status_code=200 if database and broker else 503)


@router.get("/metrics", response_class=Response)
def prometheus_metrics(state: StateDep) -> Response:
    """Prometheus text format: ingest counters and lag, quarantine size, devices online."""
    registry = state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
