"""Dashboard sign-in: a server-side session per browser, CSRF tokens, sign-out, idle timeout.

A dashboard session *is* a refresh token (``security.py``; stored as its SHA-256, revocable): the
sign-in form goes through the API's own login (same sign-in limits, same audit of failures), and
the token it issues lives only in an HttpOnly, SameSite=Strict cookie. Its expiry slides with use
(``web_idle_timeout_s``) up to ``web_session_max_s`` after sign-in; signing out, deactivating the
user or an admin revoking the user's tokens ends it. Every request checks the user in the database,
as the API does.

CSRF: SameSite=Strict already keeps other sites' forms from carrying the cookie; on top of that every
form carries a synchronizer token, ``HMAC(jwt secret, session token)`` (nothing more to store), and
the sign-in form (no session yet) a double-submit token from a cookie of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Final
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlmodel import Session, select

from resonera.server.api.deps import AppState, SessionDep, StateDep, own_patient
from resonera.server.api.errors import ApiError
from resonera.server.api.routes.auth import login as api_login
from resonera.server.models import PatientRow, RefreshTokenRow, UserRow
from resonera.server.schemas import LoginIn
from resonera.server.security import now_utc, revoke_refresh_token
from resonera.server.web.render import PAGE_HEADERS, PageError, SignInNeeded, render
from resonera.server.web.web_user import HOME_BY_ROLE, WebUser, remember_web_user

SESSION_COOKIE: Final = "resonera_session"
LOGIN_CSRF_COOKIE: Final = "resonera_login_csrf"
#: Sliding expiry is written at most this often (not on every page view).
_TOUCH_EVERY: Final = timedelta(seconds=60)

router = APIRouter(include_in_schema=False)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_for(state: AppState, token: str) -> str:
    key = state.settings.jwt_secret_value().encode()
    return hmac.new(key, b"csrf\x00" + token.encode(), hashlib.sha256).hexdigest()


def _expiry(state: AppState, row: RefreshTokenRow, now: datetime) -> datetime:
    settings = state.settings
    idle = now + timedelta(seconds=settings.web_idle_timeout_s)
    return min(idle, row.created_at + timedelta(seconds=settings.web_session_max_s))


def _session_user(state: AppState, session: Session, token: str) -> WebUser:
    """The user of a live session token; slides its expiry. ``SignInNeeded`` otherwise."""
    row = session.exec(
        select(RefreshTokenRow).where(RefreshTokenRow.token_hash == _digest(token))
    ).first()
    now = now_utc()
    if row is None or row.revoked_at is not None:
        raise SignInNeeded("signed out")
    if row.expires_at <= now:
        raise SignInNeeded("timed out")
    user = session.get(UserRow, row.user_id)
    if user is None or not user.active:
        raise SignInNeeded("account inactive")
    expiry = _expiry(state, row, now)
    if expiry - row.expires_at >= _TOUCH_EVERY:
        row.expires_at = expiry
        session.add(row)
        session.commit()
    return WebUser(user, token, csrf_for(state, token))


def web_user(request: Request, state: StateDep, session: SessionDep) -> WebUser:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise SignInNeeded()
    web = _session_user(state, session, token)
    remember_web_user(request, web)
    return web


WebUserDep = Annotated[WebUser, Depends(web_user)]


def require_page(*roles: str) -> Callable[[WebUser], WebUser]:
    """A dependency: the signed-in user, who must have one of ``roles`` (else the 403 page)."""

    def check(web: WebUserDep) -> WebUser:
        if web.role not in roles:
            raise PageError(403, f"This page is for the role {' or '.join(roles)}.")
        return web

    return check


ClinicianPage = Annotated[WebUser, Depends(require_page("clinician"))]
AdminPage = Annotated[WebUser, Depends(require_page("admin"))]
AuditPage = Annotated[WebUser, Depends(require_page("auditor", "admin"))]


def own_patient_page(session: Session, web: WebUser, patient_id: str) -> PatientRow:
    """The API's own check (a linked clinician), as the 403 page (for unknown ids too: whether a
    patient exists is itself patient data)."""
    try:
        return own_patient(session, web.user, patient_id)
    except ApiError:
        raise PageError(403, "This patient is not among yours.") from None


def check_csrf(web: WebUser, token: str) -> None:
    """Refuse a form that did not come from a page of this session (403 page)."""
    if not token or not hmac.compare_digest(token, web.csrf):
        raise PageError(
            403,
            "This form did not come from your current session (missing or wrong CSRF token). "
            "Reload the page and try again.",
        )


def _secure(request: Request, state: AppState) -> bool:
    configured = state.settings.web_cookie_secure
    return request.url.scheme == "https" if configured is None else configured


def _safe_next(target: str) -> str:
    """Only a path on this site (no open redirect through ``next``)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or "\\" in target:
        return ""
    return target


def _login_page(
    request: Request, state: AppState, *, error: str = "", email: str = "", status: int = 200
) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    reasons = {
        "timed out": "Your session timed out; please sign in again.",
        "signed out": "You are signed out.",
    }
    response = render(
        "login.html",
        {
            "web": None,
            "title": "Sign in",
            "csrf": token,
            "error": error,
            "notice": reasons.get(request.query_params.get("reason", ""), ""),
            "email": email,
            "next": _safe_next(request.query_params.get("next", "")),
        },
        status=status,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=_secure(request, state),
        path="/login",
    )
    return response


@router.get("/login")
def login_form(request: Request, state: StateDep) -> HTMLResponse:
    return _login_page(request, state)


@router.post("/login", response_model=None)
def login_submit(
    *,
    request: Request,
    state: StateDep,
    session: SessionDep,
    email: Annotated[str, Form(max_length=300)] = "",
    password: Annotated[str, Form(max_length=300)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next_path: Annotated[str, Form(alias="next", max_length=2000)] = "",
) -> Response:
    """Check the double-submit token, then log in through the API's own route (limits, audit)."""
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not hmac.compare_digest(cookie, csrf_token):
        return _login_page(
            request,
            state,
            error="The sign-in form expired or did not come from this site; please try again.",
            email=email,
            status=403,
        )
    try:
        body = LoginIn(email=email, password=password)
    except ValidationError:
        return _login_page(
            request, state, error="Enter your email address and password.", email=email, status=400
        )
    try:
        pair = api_login(body, request, state, session)
    except ApiError as exc:
        message = exc.message[:1].upper() + exc.message[1:] + "."
        if exc.status == 401:
            message = "Wrong email or password."
        page = _login_page(request, state, error=message, email=email, status=exc.status)
        if "Retry-After" in exc.headers:  # 429: the API's sign-in limits
            page.headers["Retry-After"] = exc.headers["Retry-After"]
        return page
    row = session.exec(
        select(RefreshTokenRow).where(RefreshTokenRow.token_hash == _digest(pair.refresh_token))
    ).one()
    row.expires_at = _expiry(state, row, row.created_at)
    session.add(row)
    session.commit()
    user = session.get(UserRow, row.user_id)
    assert user is not None
    target = _safe_next(next_path) or HOME_BY_ROLE.get(user.role, "/")
    response = RedirectResponse(target, status_code=303, headers=dict(PAGE_HEADERS))
    response.set_cookie(
        SESSION_COOKIE,
        pair.refresh_token,
        httponly=True,
        samesite="strict",
        secure=_secure(request, state),
        max_age=state.settings.web_session_max_s,
        path="/",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(
    web: WebUserDep,
    session: SessionDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> RedirectResponse:
    check_csrf(web, csrf_token)
    assert web.user.id is not None
    revoke_refresh_token(session, web.user.id, web.token, now_utc())
    session.commit()
    response = RedirectResponse(
        "/login?reason=signed+out", status_code=303, headers=dict(PAGE_HEADERS)
    )
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/")
def home(web: WebUserDep) -> RedirectResponse:
    return RedirectResponse(web.home, status_code=303, headers=dict(PAGE_HEADERS))
