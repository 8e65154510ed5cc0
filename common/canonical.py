"""The one canonical JSON form: what is signed (``signing``) and what is hashed (a program's digest,
a prescription's ``sha256``), so device and server, on any version, derive the same bytes."""

from __future__ import annotations

import json
from typing import Any


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
