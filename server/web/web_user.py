"""The signed-in person of a dashboard request (``WebUser``), and how a request carries them.

Apart from ``auth.py`` (which finds the person from the session cookie, and renders the sign-in
page) so that the page renderer, whose error pages keep the person's navigation, needs nothing of
sign-in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from fastapi import Request

from resonera.server.models import UserRow

#: Where each role lands after signing in.
HOME_BY_ROLE: Final = {"clinician": "/patients", "admin": "/devices", "auditor": "/audit"}


@dataclass(frozen=True)
class WebUser:
    """The signed-in person of a dashboard request, and the CSRF token their forms carry."""

    user: UserRow
    token: str
    csrf: str

    @property
    def role(self) -> str:
        return self.user.role

    @property
    def home(self) -> str:
        return HOME_BY_ROLE.get(self.user.role, "/")


def remember_web_user(request: Request, web: WebUser) -> None:
    """Keep the person found for ``request`` for the rest of it (its error page, if any)."""
    request.state.web_user = web


def optional_web_user(request: Request) -> WebUser | None:
    """The user a dependency already found for this request (error pages keep their menu)."""
    found = getattr(request.state, "web_user", None)
    return found if isinstance(found, WebUser) else None
