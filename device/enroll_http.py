"""The enrollment client's one HTTP call: POST JSON over HTTPS, the answer's JSON back.

The server's certificate must verify against the CA file given (or the system's CAs); an error
answer, an unreachable server or an answer that is not a JSON object becomes ``EnrollError`` with
what went wrong. The standard library's ``urllib`` carries it: enrollment is rare, and the device
needs no HTTP client besides.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Final

from resonera.device.identity import EnrollError

TIMEOUT_S: Final = 30.0
MAX_ANSWER_BYTES: Final = 256 * 1024


def _context(ca_file: Path | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise EnrollError(f"CA file {ca_file} cannot be used: {exc}") from None


def post_json(url: str, body: dict[str, Any], ca_file: Path | None) -> dict[str, Any]:
    """POST ``body``; the answer's JSON. The server's certificate must verify against
    ``ca_file`` (or the system's CAs); an error answer becomes ``EnrollError`` with its message."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, context=_context(ca_file), timeout=TIMEOUT_S) as r:
            data = r.read(MAX_ANSWER_BYTES)
    except urllib.error.HTTPError as exc:
        raise EnrollError(f"the server refused ({exc.code}): {_error_message(exc)}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise EnrollError(
                f"the server's certificate does not verify against "
                f"{ca_file or 'the system CAs'}: {reason.verify_message}"
            ) from None
        raise EnrollError(f"cannot reach {url}: {reason}") from None
    except (TimeoutError, OSError) as exc:
        raise EnrollError(f"cannot reach {url}: {exc}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise EnrollError(f"{url} did not answer with JSON") from None
    if not isinstance(answer, dict):
        raise EnrollError(f"{url} did not answer with a JSON object")
    return answer


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read(MAX_ANSWER_BYTES))
        message = str(body["error"]["message"])
    except (ValueError, KeyError, TypeError, OSError):
        return str(exc.reason)
    retry = exc.headers.get("Retry-After")
    return f"{message} (retry after {retry} s)" if retry and exc.code == 429 else message
