"""The HTTP API: ``create_app(settings, engine, ...)`` wires routes, collaborators and errors.

``settings`` must have passed ``checked_for_start`` (a JWT secret is needed). Collaborators not
given are built from the settings: the patient-data cipher (key file or environment), the desired
state signer (key file) and publisher (MQTT).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy.engine import Engine

from resonera.common.agent_update import MAX_BUNDLE_BYTES
from resonera.common.clock import Clock, utc_now
from resonera.common.prescription import MAX_BACKGROUND_BYTES
from resonera.server.api.deps import AppState
from resonera.server.api.errors import BodyLimit, document_errors, install_error_handlers
from resonera.server.api.routes import (
    assignments,
    audit,
    auth,
    backgrounds,
    devices,
    dose_ledger,
    enrollment,
    exports,
    health,
    outcomes,
    patients,
    programs,
    sessions,
    updates,
    users,
)
from resonera.server.backgrounds import BackgroundStore
from resonera.server.crypto import DesiredStateSigner, FieldCipher, load_signer
from resonera.server.desired import DesiredPublisher, DesiredService, MemoryPublisher
from resonera.server.metrics import registry_for
from resonera.server.ratelimit import FailureLimiter, ProgressiveDelay
from resonera.server.schemas import ErrorResponse
from resonera.server.settings import ServerSettings
from resonera.server.web import api_docs
from resonera.server.web import routes as web_routes
from resonera.server.web import updates as web_updates

API_PREFIX = "/api/v1"
DESCRIPTION = """The Resonera clinical server.

Log in with `POST /api/v1/auth/login` and send the access token as `Authorization: Bearer <token>`.
Roles: `admin` (users, devices, assignments, patients), `clinician` (their own patients' data and
desired state), `auditor` (the audit log). Every error is an RFC 9457 problem document
(`application/problem+json`: `type`, `title`, `status`, `detail`) that also carries
`{"error": {"code", "message", "details"}}`. Every list takes `limit` and `offset` and answers
with `X-Total-Count` (all items) and, when there are other pages, `Link` (`rel="next"`,
`rel="prev"`). A time parameter or field takes a time with its offset, or a day alone
(`2026-12-06`: its start in the server's time zone). This page and `/openapi.json` need a
dashboard session or an access token.
"""


def _version() -> str:
    try:
        return version("resonera")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def create_app(
    settings: ServerSettings,
    engine: Engine,
    *,
    cipher: FieldCipher | None = None,
    publisher: DesiredPublisher | None = None,
    signer: DesiredStateSigner | None = None,
    broker_ok: Callable[[], bool] | None = None,
    clock: Clock = utc_now,
) -> FastAPI:
    """The API. Without ``publisher`` documents are kept in memory (no broker): tests.
    ``clock`` dates the sign-in limits' attempts (tests move it instead of waiting)."""
    settings.jwt_secret_value()  # fail now, not at the first login
    publisher = publisher if publisher is not None else MemoryPublisher()
    state = AppState(
        settings=settings,
        engine=engine,
        cipher=cipher
        or FieldCipher.from_settings(
            settings.patient_key_file,
            settings.patient_keys.get_secret_value() if settings.patient_keys else None,
            demo=settings.demo,
        ),
        desired=DesiredService(
            signer or load_signer(settings.desired_signing_key_file, demo=settings.demo),
            publisher,
        ),
        broker_ok=broker_ok or publisher.connected,
        metrics_registry=registry_for(engine),
        login_limiter=FailureLimiter(
            "login", ProgressiveDelay.for_login(settings.login), clock=clock
        ),
        backgrounds=BackgroundStore.for_settings(settings),
    )
    # FastAPI's own docs load Swagger UI from a CDN and answer anyone: ours (web/api_docs.py)
    # are served from the package, to signed-in people only.
    app = FastAPI(
        title="Resonera server",
        version=_version(),
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.resonera = state
    app.include_router(health.router)
    for module in (
        auth,
        users,
        devices,
        patients,
        assignments,
        sessions,
        audit,
        dose_ledger,
        enrollment,
        exports,
        programs,
        outcomes,
        backgrounds,
        updates,
    ):
        app.include_router(module.router, prefix=API_PREFIX)
    install_error_handlers(app)
    app.include_router(api_docs.router)
    web_routes.install(app)  # after the API's error handlers: its error pages wrap them
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        streamed={
            API_PREFIX + backgrounds.UPLOAD_PATH: MAX_BACKGROUND_BYTES,
            API_PREFIX + updates.UPLOAD_PATH: MAX_BUNDLE_BYTES,
            web_updates.UPLOAD_PATH: MAX_BUNDLE_BYTES,
        },
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema.setdefault("components", {}).setdefault("schemas", {})["ErrorResponse"] = (
                ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
            )
            defs = schema["components"]["schemas"]["ErrorResponse"].pop("$defs", {})
            schema["components"]["schemas"].update(defs)
            app.openapi_schema = document_errors(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
