"""Admin page for the people who sign in (``/admin/users``): add a clinician, an auditor or an
admin, set the name they sign with (a clinician's printed report), set a new password, lock and
unlock an account.

Lock is the API's deactivation (``PATCH /users/{id} {"active": false}``): it ends every session
and token of the account at once. Unlock makes it active again and forgets its failed sign-ins
(the sign-in delay, ``unlock``), so its owner can sign in at once. A new password also ends the
account's sessions. Every change goes through the API's route function (same checks and audit);
an admin cannot lock themselves.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session, col, select

from resonera.server.api.deps import SessionDep, StateDep
from resonera.server.api.routes import users as api_users
from resonera.server.models import UserRow
from resonera.server.schemas import PASSWORD_MIN, UserCreate, UserUpdate
from resonera.server.web.admin_forms import FormRefused, checked, through_api
from resonera.server.web.auth import AdminPage, check_csrf
from resonera.server.web.render import PAGE_HEADERS, PageError, render
from resonera.server.web.web_user import WebUser

router = APIRouter(include_in_schema=False)

#: What a change's redirect says on the page (fixed texts; the account is named by its row).
DONE: Final = {
    "created": "The account was added: give its owner the password you set.",
    "password": "The new password is set; the account's sessions ended.",
    "locked": "The account is locked: its sessions ended and it cannot sign in.",
    "unlocked": "The account is unlocked and can sign in at once.",
    "named": "The name is saved: the reports they print are signed with it.",
}


def _page(
    web: WebUser,
    session: Session,
    *,
    done: str = "",
    who: int | None = None,
    status: int = 200,
    errors: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
) -> HTMLResponse:
    users = session.exec(select(UserRow).order_by(col(UserRow.role), col(UserRow.email))).all()
    named = next((u.email for u in users if u.id == who), "")
    notice = DONE.get(done, "")
    return render(
        "admin_users.html",
        {
            "web": web,
            "title": "Users",
            "users": users,
            "notice": f"{named}: {notice}" if notice and named else notice,
            "errors": errors or {},
            "form": form or {},
            "password_min": PASSWORD_MIN,
        },
        status=status,
    )


def _go(done: str, who: int | None) -> RedirectResponse:
    target = f"/admin/users?done={done}" + (f"&who={who}" if who is not None else "")
    return RedirectResponse(target, status_code=303, headers=dict(PAGE_HEADERS))


@router.get("/admin/users")
def users_page(
    web: AdminPage,
    session: SessionDep,
    done: Annotated[str, Query(max_length=16)] = "",
    who: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> HTMLResponse:
    return _page(web, session, done=done, who=who)


@router.post("/admin/users", response_model=None)
def add_user(
    *,
    request: Request,
    web: AdminPage,
    session: SessionDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    email: Annotated[str, Form(max_length=300)] = "",
    role: Annotated[str, Form(max_length=16)] = "clinician",
    password: Annotated[str, Form(max_length=300)] = "",
    display_name: Annotated[str, Form(max_length=300)] = "",
) -> Response:
    check_csrf(web, csrf_token)
    try:
        body = checked(
            lambda: UserCreate.model_validate(
                {
                    "email": email.strip(),
                    "role": role,
                    "password": password,
                    "display_name": display_name,
                }
            )
        )
        made = through_api(
            lambda: api_users.create_user(
                body=body, admin=web.user, session=session, request=request
            )
        )
    except FormRefused as exc:
        session.rollback()
        form = {"email": email, "role": role, "display_name": display_name}
        return _page(web, session, status=exc.status, errors=exc.errors, form=form)
    return _go("created", made.id)


@router.post("/admin/users/{user_id}", response_model=None)
def change_user(
    *,
    request: Request,
    user_id: int,
    web: AdminPage,
    state: StateDep,
    session: SessionDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    action: Annotated[Literal["password", "lock", "unlock", "name"], Form()] = "password",
    password: Annotated[str, Form(max_length=300)] = "",
    display_name: Annotated[str, Form(max_length=300)] = "",
) -> Response:
    """One change of one account: ``password`` (a new one), ``lock``, ``unlock`` or ``name``
    (``display_name``; empty: none, the email stands in)."""
    check_csrf(web, csrf_token)
    if not 0 < user_id < 2**31 or session.get(UserRow, user_id) is None:
        raise PageError(404, "There is no such user.")
    changes: dict[str, dict[str, object]] = {
        "password": {"password": password},
        "lock": {"active": False},
        "unlock": {"active": True, "unlock": True},
        "name": {"display_name": display_name},
    }
    try:
        body = checked(lambda: UserUpdate.model_validate(changes[action]))
        through_api(
            lambda: api_users.update_user(
                user_id=user_id,
                body=body,
                admin=web.user,
                state=state,
                session=session,
                request=request,
            )
        )
    except FormRefused as exc:
        session.rollback()
        # a refused password or name is shown beside the row it was typed in
        errors = {
            (f"{field}-{user_id}" if field in ("password", "display_name") else ""): text
            for field, text in exc.errors.items()
        }
        return _page(web, session, status=exc.status, errors=errors)
    done = {"password": "password", "lock": "locked", "unlock": "unlocked", "name": "named"}
    return _go(done[action], user_id)
