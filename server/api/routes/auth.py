"""``/auth``: log in (email + password → access and refresh token), refresh, log out, who am I."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from sqlmodel import select

from resonera.server.api.deps import CurrentUser, SessionDep, StateDep
from resonera.server.api.errors import ApiError
from resonera.server.audit import audit, client_of
from resonera.server.models import UserRow
from resonera.server.ratelimit import Limited
from resonera.server.schemas import LoginIn, RefreshIn, TokenPair, UserPublic
from resonera.server.security import (
    RefreshRefused,
    burn_time,
    issue_access_token,
    issue_refresh_token,
    now_utc,
    revoke_refresh_token,
    use_refresh_token,
    verify_password,
)

router = APIRouter(prefix="/auth", tags=["auth"])
_WRONG = "wrong email or password"


def _pair(state: StateDep, session: SessionDep, user: UserRow) -> TokenPair:
    now = now_utc()
    refresh = issue_refresh_token(session, state.settings, user, now)
    return TokenPair(
        access_token=issue_access_token(state.settings, user, now),
        refresh_token=refresh,
        expires_in=state.settings.access_token_ttl_s,
    )


@router.post("/login", response_model=TokenPair)
def login(body: LoginIn, request: Request, state: StateDep, session: SessionDep) -> TokenPair:
    """Tokens for a correct email and password. Failed sign-ins slow down further attempts from
    the same address and, from several addresses, on the same account (429 with
    ``Retry-After``, growing with every failure; see ``settings.login``); an attempt made too
    early is refused before the password is checked. No account is ever locked: a correct
    password from an address that need not wait always signs in. Refresh tokens already issued
    keep working (only deactivation or a password reset revokes them)."""
    limiter = state.login_limiter
    try:
        attempt = limiter.begin(session, body.email, client_of(request))
    except Limited as exc:
        whose = "from this address" if exc.scope == "client" else "for this account"
        raise ApiError(
            429,
            f"too many failed sign-ins {whose}; try again in {exc.retry_after_s} s",
            details={"retry_after_s": exc.retry_after_s},
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from None
    user = session.exec(select(UserRow).where(UserRow.email == body.email)).first()
    if user is None or not user.active:
        burn_time(body.password)
        raise ApiError(401, _WRONG)
    if not verify_password(user.password_hash, body.password):
        # the attempt stays recorded as a failure; the audit says whose account it was
        audit(session, request, user, "login_failed", "user", resource_id=str(user.id))
        session.commit()
        raise ApiError(401, _WRONG)
    limiter.succeeded(session, attempt)
    pair = _pair(state, session, user)
    session.commit()
    return pair


@router.post("/refresh", response_model=TokenPair)
def refresh(body: RefreshIn, state: StateDep, session: SessionDep) -> TokenPair:
    """New tokens for a valid refresh token, which is used up (rotation)."""
    try:
        user = use_refresh_token(session, body.refresh_token, now_utc())
    except RefreshRefused as exc:
        session.commit()  # a reused token revokes the user's others: keep that
        raise ApiError(401, f"refresh refused: {exc}") from None
    pair = _pair(state, session, user)
    session.commit()
    return pair


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(body: RefreshIn, user: CurrentUser, session: SessionDep) -> None:
    """Revoke a refresh token (access tokens expire by themselves within minutes)."""
    assert user.id is not None
    revoke_refresh_token(session, user.id, body.refresh_token, now_utc())
    session.commit()


@router.get("/me", response_model=UserPublic)
def me(user: CurrentUser) -> UserPublic:
    return UserPublic.model_validate(user, from_attributes=True)
