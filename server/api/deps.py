"""Route needs as ``Annotated`` aliases: a database session, the caller, their role (the audit log's
writer is ``resonera.server.audit``).

The app keeps its collaborators in ``app.state`` (``AppState``), set once by ``create_app``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.server.api.errors import ApiError
from resonera.server.backgrounds import BackgroundStore
from resonera.server.crypto import FieldCipher
from resonera.server.desired import DesiredService
from resonera.server.enrollment import Enroller, EnrollmentError, server_public_key
from resonera.server.models import ClinicianPatientRow, PatientRow, UserRow
from resonera.server.ratelimit import FailureLimiter
from resonera.server.schemas import DayOrTime
from resonera.server.security import TokenError, decode_access_token
from resonera.server.settings import ServerSettings
from resonera.server.tls_peer import client_certificate

#: A row id in a path (patients, programs: UUID text), checked before any query.
RowId = Annotated[str, Path(min_length=1, max_length=36, pattern=r"^[0-9a-f-]{1,36}$")]
PatientId = RowId
#: A period's bounds as query parameters ``from`` and ``to``: a time with its offset, or a day
#: alone (``2026-12-06``: its start in the server's time zone); aware, in UTC. A time without a
#: UTC equivalent (``0001-01-01T00:00:00+14:00``) is a 422 naming the parameter, never a 500.
Since = Annotated[
    DayOrTime | None,
    Query(
        alias="from",
        description="inclusive; a time with its offset, or a day (YYYY-MM-DD) "
        "from its start in the server's time zone",
    ),
]
Until = Annotated[
    DayOrTime | None,
    Query(
        alias="to",
        description="exclusive; a time with its offset, or a day (YYYY-MM-DD): "
        "up to its start in the server's time zone",
    ),
]

_bearer = HTTPBearer(auto_error=False, description="An access token from POST /api/v1/auth/login")


@dataclass
class AppState:
    settings: ServerSettings
    engine: Engine
    cipher: FieldCipher
    desired: DesiredService
    broker_ok: Callable[[], bool]
    metrics_registry: CollectorRegistry
    #: Failed sign-ins per address and per account (``settings.login``), shared through the
    #: database by every API process.
    login_limiter: FailureLimiter
    #: Background sound files by content (``<data_dir>/backgrounds``).
    backgrounds: BackgroundStore


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.resonera
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    # Rows stay readable after commit (reads commit their audit row before answering).
    with Session(state.engine, expire_on_commit=False) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def enroller(state: AppState) -> Enroller:
    """The enrollment checks with this server's issuing CA, desired-state key and update keys."""
    return Enroller(
        state.settings.enrollment,
        server_public_key(state.desired.signer),
        update_public_keys=state.settings.update_public_keys,
    )


def requesting_device(state: AppState, session: Session, request: Request) -> str:
    """The device whose client certificate (mutual TLS on the API's own HTTPS) made ``request``:
    issued by this server's CA, valid, registered and not revoked; 401/403 otherwise."""
    certificate = client_certificate(request)
    if certificate is None:
        raise ApiError(401, "a device's client certificate is needed (mutual TLS)")
    try:
        return enroller(state).device_of(session, certificate)
    except EnrollmentError as exc:
        raise ApiError(exc.status, str(exc)) from None


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": "Bearer"})


def current_user(
    state: StateDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> UserRow:
    """The active user the bearer token names, as the database knows them now."""
    if credentials is None:
        raise _unauthorized("an access token is needed (Authorization: Bearer <token>)")
    try:
        claims = decode_access_token(state.settings, credentials.credentials)
    except TokenError as exc:
        raise _unauthorized(f"the access token is not valid: {exc}") from None
    user = session.get(UserRow, claims.user_id)
    if user is None or not user.active or user.role != claims.role:
        raise _unauthorized("the access token's user is no longer active with that role")
    return user


CurrentUser = Annotated[UserRow, Depends(current_user)]


def require(*roles: str) -> Callable[[UserRow], UserRow]:
    def check(user: CurrentUser) -> UserRow:
        if user.role not in roles:
            raise ApiError(403, f"this needs the role {' or '.join(roles)}")
        return user

    return check


AdminUser = Annotated[UserRow, Depends(require("admin"))]
ClinicianUser = Annotated[UserRow, Depends(require("clinician"))]
AuditorUser = Annotated[UserRow, Depends(require("auditor"))]
AdminOrClinician = Annotated[UserRow, Depends(require("admin", "clinician"))]


def own_patient(session: Session, user: UserRow, patient_id: str) -> PatientRow:
    """The patient, if ``user`` may see them: a linked clinician, or an admin. Otherwise 404
    (whether the patient exists is itself patient data)."""
    patient = session.get(PatientRow, patient_id)
    if patient is not None and user.role == "admin":
        return patient
    if patient is not None and user.role == "clinician":
        link = session.exec(
            select(ClinicianPatientRow).where(
                ClinicianPatientRow.user_id == user.id,
                ClinicianPatientRow.patient_id == patient_id,
            )
        ).first()
        if link is not None:
            return patient
    raise ApiError(404, f"no patient {patient_id} among yours")


def check_period(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and until <= since:
        raise ApiError(422, "the period is empty: 'to' must be after 'from'")
