"""The HTTP API: ``create_app(settings, engine)`` wires routes, dependencies and error handling."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine

from resonera.server import routes_health, routes_sessions
from resonera.server.settings import ServerSettings

log = logging.getLogger(__name__)
API_PREFIX = "/api/v1"


def _version() -> str:
    try:
        return version("resonera")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def create_app(settings: ServerSettings, engine: Engine) -> FastAPI:
    """The API for ``settings`` (which must carry an api_token: see ``checked_for_start``)."""
    app = FastAPI(title="Resonera server", version=_version())
    app.state.engine = engine
    app.state.api_token = settings.api_token_value().encode()
    app.include_router(routes_health.router)
    app.include_router(routes_sessions.router, prefix=API_PREFIX)
    app.add_exception_handler(Exception, _internal_error)
    return app


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # Never a traceback to the caller. Starlette re-raises after this handler, so the ASGI server
    # (uvicorn) logs the traceback; one line here ties it to the request.
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return JSONResponse({"detail": "internal error"}, status_code=500)
