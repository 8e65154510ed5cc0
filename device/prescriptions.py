"""The programs a clinician prescribed, as this device takes them (issue 20): which entries of a
signed desired state's ``programs`` it applies and which it refuses, and why; and which assigned
program a name or an id asks for. Pure: no I/O (the background files a program needs are fetched
by the applier, ``device/backgrounds.py``, after this review has passed the program).

Each entry is a ``PrescribedProgram`` (``common/prescription.py``) and ``check_prescribed`` is the one
check, under the person's profile as the same document makes it and this engine's capabilities.
An entry that fails is refused on its own and named in the report (library id, version, SHA-256);
the others apply. A list that cannot be one prescription refuses the whole document (nothing of it
is applied): ``programs`` not a list, more than ``MAX_PRESCRIBED_PROGRAMS``, an entry too broken
to be named in a report (no library id, version or SHA-256), a program twice or two names alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError

from resonera.common.desired import DesiredStateRejected
from resonera.common.errors import ResoneraError
from resonera.common.prescription import (
    MAX_PRESCRIBED_PROGRAMS,
    EngineCapabilities,
    PrescribedProgram,
    PrescriptionRefused,
    ProgramReport,
    check_prescribed,
    order_is_unique,
    parse_prescribed,
)
from resonera.common.profile import HearingProfile
from resonera.common.program import Program, parse_program

__all__ = [
    "BUILTIN_DEFAULT",
    "NOTHING_MAY_PLAY",
    "AssignedProgram",
    "NotPrescribed",
    "ProgramVerdict",
    "choose_program",
    "find_assigned",
    "refused",
    "review_programs",
]

#: What the play button and ``resonera-device play`` play when nothing is prescribed, if the
#: person's profile allows it (``HearingProfile.builtin_when_unassigned``).
BUILTIN_DEFAULT: Final = "demo-alpha"
#: Why nothing plays when nothing is prescribed and the profile forbids the built-in programs.
NOTHING_MAY_PLAY: Final = (
    "no program is prescribed here, and the clinician does not allow the built-in programs to play"
)


class NotPrescribed(ResoneraError):
    """A program was asked for that this person has not been prescribed (or nothing may play)."""


@dataclass(frozen=True)
class AssignedProgram:
    """A prescribed program this device applied: its entry as the clinician sent it (definition,
    library id and version, SHA-256), at ``position`` in the clinician's list (the document's
    index; refused entries leave gaps, the order stays the clinician's)."""

    position: int
    entry: PrescribedProgram

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def library_id(self) -> str:
        return self.entry.library_id

    @property
    def version(self) -> int:
        return self.entry.version

    @property
    def sha256(self) -> str:
        return self.entry.sha256

    def program(self) -> Program:
        """The program of the definition (checked when applied, sealed since: parsed again, as
        the model of this engine reads it)."""
        return parse_program(self.entry.definition, source=f"{self.name!r} (prescribed)")

    def to_json(self) -> dict[str, Any]:
        return {"position": self.position, "entry": self.entry.model_dump(mode="json")}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AssignedProgram:
        return cls(int(data["position"]), PrescribedProgram.model_validate(data["entry"]))


@dataclass(frozen=True)
class ProgramVerdict:
    """What became of one entry: ``program`` when this review passes it (its background files
    still to be had), else refused with ``reason``."""

    position: int
    library_id: str
    version: int
    sha256: str
    entry: PrescribedProgram | None = None
    program: Program | None = None
    reason: str = ""

    @property
    def passed(self) -> bool:
        return self.program is not None

    def report(self) -> ProgramReport:
        return ProgramReport(
            library_id=self.library_id,
            version=self.version,
            sha256=self.sha256,
            status="applied" if self.passed else "refused",
            reason=self.reason[:500],
        )

    def assigned(self) -> AssignedProgram:
        assert self.entry is not None and self.passed
        return AssignedProgram(self.position, self.entry)


def refused(verdict: ProgramVerdict, reason: str) -> ProgramVerdict:
    """``verdict`` refused after all (its background file could not be had)."""
    return ProgramVerdict(
        verdict.position, verdict.library_id, verdict.version, verdict.sha256, reason=reason
    )


def _named_refusal(raw: object, position: int, reason: str) -> ProgramVerdict | None:
    """A refusal of a malformed entry that still names itself well enough to be reported."""
    if not isinstance(raw, dict):
        return None
    try:
        named = ProgramReport(
            library_id=raw.get("library_id"),
            version=raw.get("version"),
            sha256=raw.get("sha256"),
            status="refused",
        )
    except ValidationError:
        return None
    return ProgramVerdict(position, named.library_id, named.version, named.sha256, reason=reason)


def review_programs(
    content: Mapping[str, Any], profile: HearingProfile, capabilities: EngineCapabilities
) -> list[ProgramVerdict]:
    """Each entry of ``content["programs"]``, in order, passed or refused with the reason;
    ``DesiredStateRejected`` when the list cannot be one prescription (see the module)."""
    items = content.get("programs", [])
    if not isinstance(items, list):
        raise DesiredStateRejected("programs must be a list of prescribed programs")
    if len(items) > MAX_PRESCRIBED_PROGRAMS:
        raise DesiredStateRejected(
            f"at most {MAX_PRESCRIBED_PROGRAMS} programs may be prescribed, not {len(items)}"
        )
    verdicts: list[ProgramVerdict] = []
    entries: list[PrescribedProgram] = []
    for position, raw in enumerate(items):
        try:
            entry = parse_prescribed(raw, f"programs[{position}]")
        except PrescriptionRefused as exc:
            verdict = _named_refusal(raw, position, str(exc))
            if verdict is None:
                raise DesiredStateRejected(
                    f"{exc} (an entry that does not name its library id, version and SHA-256)"
                ) from None
            verdicts.append(verdict)
            continue
        entries.append(entry)
        try:
            program = check_prescribed(entry, profile, capabilities)
        except PrescriptionRefused as exc:
            verdicts.append(
                ProgramVerdict(
                    position, entry.library_id, entry.version, entry.sha256, entry, reason=str(exc)
                )
            )
            continue
        verdicts.append(
            ProgramVerdict(
                position, entry.library_id, entry.version, entry.sha256, entry, program=program
            )
        )
    why = order_is_unique(entries)
    if why is not None:
        raise DesiredStateRejected(why)
    return verdicts


def find_assigned(assigned: Sequence[AssignedProgram], spec: str) -> AssignedProgram:
    """The assigned program ``spec`` names: its name (any case) or its library id.
    ``NotPrescribed`` lists the assigned names otherwise."""
    wanted = spec.strip()
    for program in assigned:
        if program.library_id == wanted or program.name.casefold() == wanted.casefold():
            return program
    names = ", ".join(repr(p.name) for p in assigned)
    raise NotPrescribed(f"{wanted!r} is not among the programs prescribed here: {names}")


def choose_program(
    assigned: Sequence[AssignedProgram],
    profile: HearingProfile,
    spec: str,
    own_program: Callable[[str], Program],
) -> tuple[Program, AssignedProgram | None]:
    """What ``play SPEC`` plays: among the prescribed programs ``assigned``, the one ``spec``
    names; with none prescribed, the device's own program ``own_program(spec)`` (a built-in, a
    file) if ``profile`` allows the built-in programs. ``NotPrescribed`` says why not otherwise."""
    if assigned:
        chosen = find_assigned(assigned, spec)
        return chosen.program(), chosen
    if not profile.builtin_when_unassigned:
        raise NotPrescribed(NOTHING_MAY_PLAY)
    return own_program(spec), None
