"""One exception family for the whole product, so CLIs can turn any of them into one clear line."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class ResoneraError(Exception):
    """Base of every error we raise on purpose; its message is meant for a person."""


class ConfigError(ResoneraError):
    """A settings file or environment variable is missing, malformed or out of range."""


class ProtocolError(ResoneraError):
    """A peer sent bytes or a message that breaks the protocol (the peer's fault, not ours)."""


class ProgramError(ResoneraError):
    """A program is malformed or outside the ranges that keep the person safe."""


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each bad field and what is wrong with it."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(message)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class VersionConflict(ResoneraError):
    """A compare-and-set on a versioned document lost (an If-Match that is not the current version,
    someone else's edit first): ``current`` is the version now."""

    def __init__(self, current: int, what: str = "the document") -> None:
        super().__init__(f"{what} is at version {current} now")
        self.current = current
