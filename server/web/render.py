"""Page rendering (Jinja2, autoescaped), the HTML error pages, and the headers every page carries.

Errors on dashboard pages are pages too: ``PageError`` (raised by the page routes) and, for a browser
asking for HTML outside ``/api``, FastAPI's own 404/405/422 and unexpected errors. API callers keep
the JSON error shape of ``api/errors.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from resonera.server.analytics import ear_level_dba, is_silent
from resonera.server.api.errors import log_unhandled
from resonera.server.web.glance import readings, session_level
from resonera.server.web.web_user import optional_web_user

log = logging.getLogger(__name__)

#: Resolved: in an editable install the module is a link into the source tree, where the
#: templates and static files are.
HERE: Final = Path(__file__).resolve().parent
STATIC_DIR: Final = HERE / "static"
#: Not under /api, not the health routes: what a browser on the dashboard navigates to.
_NOT_PAGES: Final = ("/api/", "/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi")
#: Patient data: no caching, no outside resources, no framing.
PAGE_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; "
        "base-uri 'none'; object-src 'none'"
    ),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
_TITLES: Final = {
    400: "The request is not valid",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed here",
    409: "Changed meanwhile",
    413: "Too large",
    500: "Something went wrong",
}


def percent_text(fraction: float) -> str:
    """A share as a percentage: one decimal, two below 0.05 % (which one decimal shows as 0.0),
    and "< 0.01 %" for a dose that is there but smaller: "0.0 %" would say there is none."""
    percent = fraction * 100
    if 0 < percent < 0.01:
        return "< 0.01 %"
    if 0 < percent < 0.05:
        return f"{percent:.2f} %"
    return f"{percent:.1f} %"


def dbfs_text(value: float) -> str:
    """A signal level; "silent" for the meter's placeholder, which is no level at all."""
    return "silent" if is_silent(value) else f"{value:.1f} dBFS"


def dba_text(value: float | None) -> str:
    """A level at the ear; "—" when nothing was heard."""
    return "—" if value is None else f"{value:.1f} dB(A)"


def _when(value: datetime | None) -> str:
    return "never" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _number(value: float | None, digits: int = 2, signed: bool = False) -> str:
    """A figure for a table cell; "—" for none (no answers, no interval)."""
    if value is None:
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(
    percent=percent_text,
    when=_when,
    duration=_duration,
    number=_number,
    dbfs=dbfs_text,
    dba=dba_text,
)
_env.globals.update(readings=readings, session_level=session_level, ear_level=ear_level_dba)


class PageError(Exception):
    """A page that cannot be shown: answered with the error page for ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class SignInNeeded(Exception):
    """No valid dashboard session: the browser goes to the sign-in page (and back afterwards)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


def render(
    template: str,
    context: Mapping[str, Any],
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    html = _env.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    # The navigation of a signed-in person stays usable on an error page.
    web = optional_web_user(request)
    return render(
        "error.html",
        {
            "title": _TITLES.get(status, "Error"),
            "status": status,
            "message": message,
            "web": web,
        },
        status=status,
    )


def wants_page(request: Request) -> bool:
    path = request.url.path
    if any(path.startswith(prefix) for prefix in _NOT_PAGES):
        return False
    return "text/html" in request.headers.get("accept", "")


Handler = Callable[[Request, Exception], Awaitable[Response]]


def _html_for_browsers(original: Handler | None, status_of: Callable[[Exception], int]) -> Handler:
    async def handle(request: Request, exc: Exception) -> Response:
        if wants_page(request) or original is None:
            status = status_of(exc)
            if status >= 500:
                log_unhandled(log, request, exc)
                return error_page(request, 500, "An internal error was logged on the server.")
            message = exc.detail if isinstance(exc, StarletteHTTPException) else ""
            if isinstance(exc, RequestValidationError):
                where = ", ".join(
                    ".".join(str(p) for p in err.get("loc", ())[1:]) for err in exc.errors()[:5]
                )
                message = f"Some values in the address or form are not valid: {where}."
            return error_page(request, status, str(message) or _TITLES.get(status, "Error"))
        return await original(request, exc)

    return handle


async def _page_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageError)
    return error_page(request, exc.status, exc.message)


async def _sign_in_needed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInNeeded)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    query = f"?next={quote(target, safe='')}" if request.method == "GET" else ""
    if exc.reason:
        query += ("&" if query else "?") + "reason=" + quote(exc.reason, safe="")
    return RedirectResponse(f"/login{query}", status_code=303, headers=dict(PAGE_HEADERS))


def install_page_errors(app: FastAPI) -> None:
    """Call after ``install_error_handlers``: browsers get HTML pages, API callers JSON."""
    handlers: dict[Any, Handler] = dict(app.exception_handlers)

    def status_of_http(exc: Exception) -> int:
        return exc.status_code if isinstance(exc, StarletteHTTPException) else 500

    app.add_exception_handler(
        StarletteHTTPException,
        _html_for_browsers(handlers.get(StarletteHTTPException), status_of_http),
    )
    app.add_exception_handler(
        RequestValidationError,
        _html_for_browsers(handlers.get(RequestValidationError), lambda _exc: 400),
    )
    app.add_exception_handler(
        Exception, _html_for_browsers(handlers.get(Exception), lambda _exc: 500)
    )
    app.add_exception_handler(PageError, _page_error)
    app.add_exception_handler(SignInNeeded, _sign_in_needed)
