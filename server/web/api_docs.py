"""The API's documentation, served by the server itself and only to people signed in.

``/docs``: Swagger UI (vendored in ``static/``: ``swagger-ui-bundle.js``, ``swagger-ui.css``, with
its Apache 2.0 licence as ``swagger-ui.LICENSE``), so it works without the internet, as the
dashboard does. ``/openapi.json``: the schema, for a dashboard session or an API access token
(``Authorization: Bearer``); without either, ``/docs`` sends the browser to the sign-in page and
back, ``/openapi.json`` is a 401. FastAPI's own ``/docs``, ``/redoc`` and ``/openapi.json`` (which
load Swagger UI from a CDN and answer anyone) are switched off in ``create_app``.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials

from resonera.server.api.deps import SessionDep, StateDep, current_user
from resonera.server.api.errors import ApiError
from resonera.server.models import UserRow
from resonera.server.web.auth import web_user
from resonera.server.web.render import SignInNeeded, render

#: The vendored Swagger UI's version (``static/swagger-ui.LICENSE`` says the same).
SWAGGER_UI_VERSION: Final = "5.36.0"

router = APIRouter(include_in_schema=False)


def docs_reader(request: Request, state: StateDep, session: SessionDep) -> UserRow:
    """Who reads the schema: the bearer of an access token, else the dashboard session's person;
    401 (the API's error) without either."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=token.strip())
        return current_user(state, session, credentials)
    try:
        return web_user(request, state, session).user
    except SignInNeeded:
        raise ApiError(
            401,
            "sign in to read the API's schema (a dashboard session or "
            "Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        ) from None


@router.get("/openapi.json")
def openapi_schema(
    request: Request, reader: Annotated[UserRow, Depends(docs_reader)]
) -> JSONResponse:
    schema: dict[str, Any] = request.app.openapi()
    return JSONResponse(schema, headers={"Cache-Control": "no-store"})


@router.get("/docs")
def docs_page(request: Request, state: StateDep, session: SessionDep) -> HTMLResponse:
    """Swagger UI for a signed-in person; the sign-in page (and back) for anyone else."""
    web = web_user(request, state, session)
    return render("api_docs.html", {"web": web, "title": "API", "version": SWAGGER_UI_VERSION})
