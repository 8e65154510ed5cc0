"""``/auth``: log in (email + password → access and refresh token), refresh, log out, who am I."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request, status
from sqlmodel import select

from resonera.server.api.deps import CurrentUser, SessionDep, StateDep, client_of
from resonera.server.api.errors import ApiError
from resonera.server.models import AuditRow, UserRow
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
    """Tokens for a correct email and password. ``lockout_failures`` wrong passwords in a row lock
    the account for ``lockout_s`` seconds (423), correct password or not."""
    now = now_utc()
    user = session.exec(select(UserRow).where(UserRow.email == body.email)).first()
    if user is None or not user.active:
        burn_time(body.password)
        raise ApiError(401, _WRONG)
    if user.locked_until is not None and user.locked_until > now:
        raise ApiError(
            423,
            "the account is locked after repeated failed logins; try later or ask an admin",
            details={"locked_until": user.locked_until.isoformat()},
        )
    if not verify_password(user.password_hash, body.password):
        user.failed_logins += 1
        if user.failed_logins >= state.settings.lockout_failures:
            user.locked_until = now + timedelta(seconds=state.settings.lockout_s)
            user.failed_logins = 0
        session.add(user)
        session.add(
            AuditRow(
                at=now,
                actor_id=user.id,
                actor_email=user.email,
                actor_role=user.role,
                action="login_failed",
                resource="user",
                resource_id=str(user.id),
                method=request.method,
                path=request.url.path,
                client=client_of(request),
            )
        )
        session.commit()
        raise ApiError(401, _WRONG)
    user.failed_logins = 0
    user.locked_until = None
    session.add(user)
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
