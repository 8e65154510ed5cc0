"""Time-ordered unique identifiers (UUIDv7, RFC 9562) for messages, sessions and events."""

from __future__ import annotations

import re

import uuid6

_UUID7_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def new_id() -> str:
    """A fresh UUIDv7 as canonical lowercase text; ids sort by creation time (ms resolution)."""
    return str(uuid6.uuid7())


def is_time_ordered_id(value: str) -> bool:
    """True when ``value`` is a canonical lowercase UUIDv7 string."""
    return bool(_UUID7_RE.match(value))
