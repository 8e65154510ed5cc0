"""What the admin pages' forms share: an API route function called from a page, its refusal
turned into a message for the form (never the API's JSON), and pydantic's complaints by field."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from pydantic import ValidationError

from resonera.server.api.errors import ApiError

T = TypeVar("T")


class FormRefused(Exception):
    """The form cannot be done as sent: ``errors`` by field name ("" for the whole form), to show
    beside the fields with the page's status."""

    def __init__(self, status: int, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.status = status
        self.errors = errors


def field_errors(exc: ValidationError) -> dict[str, str]:
    """The first complaint about each field of a model built from a form."""
    errors: dict[str, str] = {}
    for err in exc.errors():
        field = str(err["loc"][-1]) if err["loc"] else ""
        errors.setdefault(field, str(err["msg"]).removeprefix("Value error, "))
    return errors


def checked(build: Callable[[], T]) -> T:
    """``build()`` (a model from the form's fields), or ``FormRefused`` (400) naming the fields."""
    try:
        return build()
    except ValidationError as exc:
        raise FormRefused(400, field_errors(exc)) from None


def through_api(call: Callable[[], T]) -> T:
    """``call()`` (an API route function), or ``FormRefused`` with the API's own message: the
    page says what the API would have said (409 taken, 422 invalid, 404 gone)."""
    try:
        return call()
    except ApiError as exc:
        status = 400 if exc.status == 422 else exc.status
        raise FormRefused(status, {"": exc.message[:1].upper() + exc.message[1:] + "."}) from None
