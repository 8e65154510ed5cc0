"""The wall clock as a value: code that stamps or checks dates takes a ``Clock`` and reads only it,
so whoever builds it (the process's composition, or a test) decides which clock every part reads.
A test then runs wholly on its own clock or wholly on the real one, never on a mix of both."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["Clock", "utc_now"]

#: Returns the current time, timezone-aware.
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The real wall clock, in UTC."""
    return datetime.now(UTC)
