"""One error shape for every failure: an RFC 9457 problem document (``application/problem+json``:
``type``, ``title``, ``status``, ``detail``) that also carries, as its extension member ``error``, the
shape clients read before it, ``{"code", "message", "details"}``.

``ApiError`` is what routes raise; FastAPI's own 404/405/422 and anything unexpected are turned
into the same shape here. ``BodyLimit`` refuses oversized request bodies (413) before a route
reads them, whether or not the client sent a Content-Length.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    423: "locked",
    428: "precondition_required",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


#: RFC 9457's media type of a problem document.
PROBLEM_JSON: Final = "application/problem+json"
#: RFC 9457, 4.2.1: no type of our own beyond the status; ``error.code`` tells them apart.
PROBLEM_TYPE: Final = "about:blank"


def problem_document(
    status: int, message: str, *, code: str | None = None, details: Any = None
) -> dict[str, Any]:
    """The body of an error answer: RFC 9457's members, and ``error`` as clients read it."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return {
        "type": PROBLEM_TYPE,
        "title": title,
        "status": status,
        "detail": message,
        "error": {
            "code": code or _CODES.get(status, "error"),
            "message": message,
            "details": details,
        },
    }


class ApiError(Exception):
    """An answer other than success, with a status, a code and a message for a person."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.details = details
        self.headers = dict(headers or {})


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = problem_document(status, message, code=code, details=details)
    return JSONResponse(
        body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_JSON
    )


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(
        exc.status, exc.message, code=exc.code, details=exc.details, headers=exc.headers
    )


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else _CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, message, headers=exc.headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {
            "loc": [str(part) for part in err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        for err in exc.errors()
    ]
    where = ", ".join(".".join(d["loc"]) for d in details[:5])
    return error_response(422, f"the request is not valid: {where}", details=details)


def log_unhandled(logger: logging.Logger, request: Request, exc: Exception) -> None:
    """The traceback of an unexpected error to the log, tied to the request (never to the caller)."""
    logger.error(
        "unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc
    )


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log_unhandled(log, request, exc)
    return error_response(500, "internal error (logged on the server)")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: bodies above ``max_bytes`` get 413 and never reach a route. A path of
    ``streamed`` (path → its own limit) is passed on unbuffered, its route bounding what it reads;
    a larger declared ``Content-Length`` is refused here all the same."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, streamed: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.streamed = streamed or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        own_limit = self.streamed.get(scope.get("path", ""))
        limit = own_limit if own_limit is not None else self.max_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit or declared < 0:
                    await self._refuse(scope, receive, send, limit)
                    return
        if own_limit is not None:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, self.max_bytes)
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = error_response(413, f"the request body is larger than {limit} bytes")
        await response(scope, receive, send)


ERROR_STATUSES: Final = (400, 401, 403, 404, 409, 413, 422, 423, 428, 429)


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Every operation may answer the error statuses, all in the ``ErrorResponse`` shape (as
    ``application/problem+json``)."""
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for response in responses.values():  # a route's own error statuses (e.g. 503)
                content = response.get("content", {})
                if content.get("application/json", {}).get("schema") == ref:
                    content[PROBLEM_JSON] = content.pop("application/json")
            for status in ERROR_STATUSES:
                responses[str(status)] = {
                    "description": _CODES[status].replace("_", " "),
                    "content": {PROBLEM_JSON: {"schema": ref}},
                }
            responses["500"] = {
                "description": "internal error",
                "content": {PROBLEM_JSON: {"schema": ref}},
            }
    components = schema.get("components", {}).get("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    return schema
