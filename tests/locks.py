"""The locks in ``requirements/`` read as pins, for the packaging tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

LOCKS = Path(__file__).resolve().parents[1] / "requirements"


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    marker: Marker | None
    hashes: int

    def applies_here(self) -> bool:
        return self.marker is None or self.marker.evaluate()


def read_lock(name: str) -> list[Pin]:
    """The pins of ``requirements/NAME.txt``: continuation lines joined, comments dropped."""
    text = (LOCKS / f"{name}.txt").read_text().replace("\\\n", " ")
    pins = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *hashes = line.split("--hash=")
        requirement = Requirement(spec.strip())
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{name}.txt: {spec!r} is not an exact pin"
        pins.append(
            Pin(
                canonicalize_name(requirement.name),
                Version(specifier.version),
                requirement.marker,
                len(hashes),
            )
        )
    return pins


def pins_here(name: str) -> dict[str, Version]:
    return {pin.name: pin.version for pin in read_lock(name) if pin.applies_here()}
