"""The wall clock as a value: code that stamps or checks dates takes a ``Clock`` and reads only it,
so whoever builds it (the process's composition, or a test) decides which clock every part reads.
A test then runs wholly on its own clock or wholly on the real one, never on a mix of both."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

__all__ = ["CLOCK_FLOOR", "Clock", "utc_now"]

#: No earlier wall clock can be right: this release's date (a board without a real-time clock
#: boots in 1970). The device's dose clock never dates a second before it
#: (``device/trusted_time.py``).
CLOCK_FLOOR: Final = datetime(2026, 1, 1, tzinfo=UTC).timestamp()

#: Returns the current time, timezone-aware.
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The real wall clock, in UTC."""
    return datetime.now(UTC)
