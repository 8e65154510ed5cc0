"""``/users`` (admins): create users, change role, deactivate, reset password, lift a sign-in
delay (``unlock``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from resonera.server import crud
from resonera.server.api.deps import AdminUser, SessionDep, StateDep
from resonera.server.api.errors import ApiError
from resonera.server.api.paging import PAGED_RESPONSES, PageDep
from resonera.server.audit import audit
from resonera.server.models import UserRow
from resonera.server.schemas import INT32_MAX, UserCreate, UserPublic, UserUpdate
from resonera.server.security import hash_password, now_utc, revoke_all

router = APIRouter(prefix="/users", tags=["users"])
UserId = Annotated[int, Path(ge=1, le=INT32_MAX)]


def _public(user: UserRow) -> UserPublic:
    return UserPublic.model_validate(user, from_attributes=True)


@router.get("", response_model=list[UserPublic], responses=PAGED_RESPONSES)
def list_users(
    *, admin: AdminUser, session: SessionDep, page: PageDep, request: Request, response: Response
) -> list[UserPublic]:
    """Users by id (a page of them: ``X-Total-Count``, ``Link``)."""
    query = select(UserRow)
    page.describe(request, response, crud.count_rows(session, query))
    rows = session.exec(query.order_by(col(UserRow.id)).offset(page.offset).limit(page.limit))
    return [_public(u) for u in rows.all()]


@router.post("", response_model=UserPublic, status_code=status.HTTP_201_CREATED)
def create_user(
    *, body: UserCreate, admin: AdminUser, session: SessionDep, request: Request
) -> UserPublic:
    """A new user; 409 if the email is taken."""
    if session.exec(select(UserRow).where(UserRow.email == body.email)).first() is not None:
        raise ApiError(409, f"a user with email {body.email} exists")
    user = UserRow(
        email=body.email,
        display_name=body.display_name or None,
        password_hash=hash_password(body.password),
        role=body.role,
        created_at=now_utc(),
    )
    session.add(user)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise ApiError(409, f"a user with email {body.email} exists") from None
    audit(session, request, admin, "create", "user", resource_id=str(user.id))
    session.commit()
    session.refresh(user)
    return _public(user)


@router.get("/{user_id}", response_model=UserPublic)
def get_user(user_id: UserId, admin: AdminUser, session: SessionDep) -> UserPublic:
    user = session.get(UserRow, user_id)
    if user is None:
        raise ApiError(404, f"no user {user_id}")
    return _public(user)


@router.patch("/{user_id}", response_model=UserPublic)
def update_user(
    *,
    user_id: UserId,
    body: UserUpdate,
    admin: AdminUser,
    state: StateDep,
    session: SessionDep,
    request: Request,
) -> UserPublic:
    """Change role or display name, deactivate (revokes their refresh tokens), reset the password
    (likewise), lift the account's sign-in delay (``unlock``: its failed sign-ins are
    forgotten)."""
    user = session.get(UserRow, user_id)
    if user is None:
        raise ApiError(404, f"no user {user_id}")
    if user.id == admin.id and (body.active is False or (body.role not in (None, "admin"))):
        raise ApiError(409, "an admin cannot deactivate or demote themselves")
    now = now_utc()
    if body.role is not None:
        user.role = body.role
    if body.display_name is not None:
        user.display_name = body.display_name or None
    if body.active is not None:
        user.active = body.active
    if body.password is not None:
        user.password_hash = hash_password(body.password)
    if body.unlock:
        state.login_limiter.forget_subject(session, user.email)
    if body.active is False or body.password is not None or body.role is not None:
        assert user.id is not None
        revoke_all(session, user.id, now)
    session.add(user)
    audit(session, request, admin, "update", "user", resource_id=str(user_id))
    session.commit()
    session.refresh(user)
    return _public(user)
