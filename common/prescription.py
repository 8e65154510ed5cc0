"""A prescription: the library programs a clinician gives one person, as the signed desired state
carries them, and the one check that decides whether a device can play each of them.

The server writes each program's full definition (the JSON form of ``Program``) with its library id,
library version and the SHA-256 of the definition's canonical JSON (``signing.canonical_json``: sorted
keys, no spaces), so the device plays exactly the version the clinician chose, offline, for weeks,
and every session names that version. The hash is over the definition as sent, not over the model the
receiver parses it into: a device on an older engine still recognises the bytes the server hashed.

A background sound travels by content: the layer's ``path`` is ``sha256:<hex>`` and the entry lists
each such file with its size, which the device fetches (with its client certificate), bounds, checks
and keeps. The device reports what its engine can play (``EngineCapabilities``) in its reported state;
the server refuses to prescribe what a device cannot play, and the device refuses what arrives anyway.
Pure logic: device and server call the same functions.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from resonera.common.canonical import canonical_json
from resonera.common.errors import ProgramError, describe_validation_error
from resonera.common.profile import HearingProfile
from resonera.common.program import BackgroundLayer, LayerModel, Program, parse_program
from resonera.common.program_check import check_program_for

#: The shape of a prescribed entry; a device refuses a schema it does not know rather than guess.
PRESCRIPTION_SCHEMA = 1
#: A clinician prescribes at most this many programs: the button cycles through them all.
MAX_PRESCRIBED_PROGRAMS = 20
#: A background file may be at most this large (a 10-minute 48 kHz stereo 16-bit loop is 115 MB;
#: FLAC halves that). The device refuses a larger one before fetching a byte.
MAX_BACKGROUND_BYTES = 64 * 1024 * 1024
CONTENT_PREFIX = "sha256:"

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
_CONTENT_PATH = re.compile(r"^sha256:([0-9a-f]{64})$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BackgroundFile(_Strict):
    """A background sound a prescribed program plays, named by its content."""

    sha256: Sha256Hex
    size: int = Field(gt=0, le=MAX_BACKGROUND_BYTES)


class PrescribedProgram(_Strict):
    """One program of a prescription, in the clinician's order."""

    schema_version: int = Field(ge=1)
    library_id: str = Field(min_length=1, max_length=64)
    version: int = Field(ge=1)
    name: str = Field(min_length=1, max_length=120)
    sha256: Sha256Hex
    definition: dict[str, Any]
    backgrounds: tuple[BackgroundFile, ...] = ()


class EngineCapabilities(_Strict):
    """What a device's engine can play, as it reports it."""

    engine_version: str = Field(min_length=1, max_length=120)
    program_schemas: tuple[int, ...] = Field(min_length=1)
    layer_types: tuple[str, ...] = Field(min_length=1)
    sample_rates: tuple[int, ...] = Field(min_length=1)
    #: SHA-256 of the background files the device holds now (it can fetch others).
    backgrounds: tuple[Sha256Hex, ...] = ()
    #: False on a device that cannot fetch files: a program with a background it lacks is refused.
    fetches_backgrounds: bool = True


class ProgramReport(_Strict):
    """What a device did with one prescribed program (in a ``reported`` message)."""

    library_id: str = Field(min_length=1, max_length=64)
    version: int = Field(ge=1)
    sha256: Sha256Hex
    status: Literal["applied", "refused"]
    reason: str = Field(default="", max_length=500)


class PrescriptionRefused(ProgramError):
    """This program is not playable here; the message names it and says why."""


def definition_sha256(definition: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a program's definition."""
    return hashlib.sha256(canonical_json(definition)).hexdigest()


def content_path(sha256: str) -> str:
    """The ``path`` a background layer carries in a prescription."""
    return CONTENT_PREFIX + sha256


def content_hash(path: str) -> str | None:
    """The hash named by a content path, or None for an ordinary file path."""
    match = _CONTENT_PATH.match(path)
    return match.group(1) if match else None


class ContentMissing(PrescriptionRefused):
    """A background file a program names by content is not held where it is looked for."""

    def __init__(self, program: str, digest: str) -> None:
        super().__init__(f"{program!r}: its background file {digest[:12]}… is not held here")
        self.digest = digest


def resolve_content_paths(program: Program, locate: Callable[[str], Path | None]) -> Program:
    """``program`` with each background's content path (``sha256:<hex>``) replaced by the file
    ``locate`` finds for its hash, for the synthesis to read (device sessions, server previews);
    ``ContentMissing`` when it finds none. A program naming no content comes back as it is."""
    changed = False
    steps = []
    for step in program.steps:
        layers: list[LayerModel] = []
        for layer in step.layers:
            digest = content_hash(layer.path) if isinstance(layer, BackgroundLayer) else None
            if digest is None:
                layers.append(layer)
                continue
            found = locate(digest)
            if found is None:
                raise ContentMissing(program.name, digest)
            layers.append(layer.model_copy(update={"path": str(found)}))
            changed = True
        steps.append(step.model_copy(update={"layers": layers}))
    return program.model_copy(update={"steps": steps}) if changed else program


def layer_types(program: Program) -> set[str]:
    return {layer.type for step in program.steps for layer in step.layers}


def background_hashes(program: Program) -> list[str]:
    """The content hashes the program's background layers name, in order, without repeats; a
    background given as a plain path is ``PrescriptionRefused`` (only content travels)."""
    found: list[str] = []
    for i, step in enumerate(program.steps, start=1):
        for j, layer in enumerate(step.layers, start=1):
            if not isinstance(layer, BackgroundLayer):
                continue
            digest = content_hash(layer.path)
            if digest is None:
                raise PrescriptionRefused(
                    f"{program.name!r}: step {i} layer {j}: a prescribed background names its "
                    f"file by content (sha256:<hex>), not by the path {layer.path!r}"
                )
            if digest not in found:
                found.append(digest)
    return found


def prescribe(
    library_id: str,
    version: int,
    program: Program,
    backgrounds: Iterable[BackgroundFile] = (),
) -> PrescribedProgram:
    """The entry the server signs into a desired state; ``backgrounds`` are the files its background
    layers name (exactly those: one missing or extra is ``PrescriptionRefused``)."""
    files = tuple(backgrounds)
    named = background_hashes(program)
    if sorted(named) != sorted(f.sha256 for f in files):
        raise PrescriptionRefused(
            f"{program.name!r}: its background layers name {len(named)} file(s) but "
            f"{len(files)} were given"
        )
    definition = program.model_dump(mode="json")
    return PrescribedProgram(
        schema_version=PRESCRIPTION_SCHEMA,
        library_id=library_id,
        version=version,
        name=program.name,
        sha256=definition_sha256(definition),
        definition=definition,
        backgrounds=files,
    )


def parse_prescribed(entry: object, where: str) -> PrescribedProgram:
    """An entry of a desired state's ``programs``; ``PrescriptionRefused`` when malformed."""
    try:
        return PrescribedProgram.model_validate(entry)
    except ValidationError as exc:
        raise PrescriptionRefused(f"{where}: {describe_validation_error(exc)}") from None


def unmet_needs(program: Program, capabilities: EngineCapabilities) -> list[str]:
    """What ``program`` needs that an engine with ``capabilities`` lacks, in words (empty: none)."""
    needs: list[str] = []
    missing_types = sorted(layer_types(program) - set(capabilities.layer_types))
    if missing_types:
        needs.append(
            f"layer type(s) {', '.join(missing_types)} (engine {capabilities.engine_version} "
            f"plays {', '.join(sorted(capabilities.layer_types))})"
        )
    if not capabilities.fetches_backgrounds:
        held = set(capabilities.backgrounds)
        lacking = [h for h in background_hashes(program) if h not in held]
        if lacking:
            needs.append(f"background file(s) {', '.join(h[:12] for h in lacking)} it cannot fetch")
    return needs


def check_prescribed(
    entry: PrescribedProgram, profile: HearingProfile, capabilities: EngineCapabilities
) -> Program:
    """The program of ``entry`` if this device may play it for this person: the schema is known,
    the hash matches the definition, the definition passes the program model and this person's
    limits on their output, and the engine has what it needs. ``PrescriptionRefused`` names the
    program, its version and the first reason otherwise."""
    label = f"{entry.name!r} (library {entry.library_id} v{entry.version})"
    if entry.schema_version not in capabilities.program_schemas:
        raise PrescriptionRefused(
            f"{label}: prescription schema {entry.schema_version} is not one this device knows "
            f"({', '.join(map(str, capabilities.program_schemas))})"
        )
    actual = definition_sha256(entry.definition)
    if actual != entry.sha256:
        raise PrescriptionRefused(
            f"{label}: the definition's SHA-256 is {actual[:12]}…, not the {entry.sha256[:12]}… "
            "it was sent with (altered or damaged on the way)"
        )
    try:
        program = parse_program(entry.definition, source=label)
        if program.name != entry.name:
            raise PrescriptionRefused(f"{label}: the definition is named {program.name!r}")
        named = set(background_hashes(program))
        listed = {f.sha256 for f in entry.backgrounds}
        if named != listed:
            raise PrescriptionRefused(
                f"{label}: its background layers and its list of background files disagree"
            )
        check_program_for(program, profile, profile.output)
    except PrescriptionRefused:
        raise
    except ProgramError as exc:
        raise PrescriptionRefused(f"{label}: {exc}") from None
    needs = unmet_needs(program, capabilities)
    if needs:
        raise PrescriptionRefused(f"{label}: this device's engine lacks " + "; ".join(needs))
    return program


def order_is_unique(entries: Sequence[PrescribedProgram]) -> str | None:
    """Why a list of entries cannot be one prescription (a program twice, too many), or None."""
    if len(entries) > MAX_PRESCRIBED_PROGRAMS:
        return f"at most {MAX_PRESCRIBED_PROGRAMS} programs may be prescribed, not {len(entries)}"
    seen: set[str] = set()
    for entry in entries:
        if entry.library_id in seen:
            return f"{entry.name!r} (library {entry.library_id}) is prescribed twice"
        seen.add(entry.library_id)
    names = [e.name.casefold() for e in entries]
    if len(set(names)) != len(names):
        return "two prescribed programs share a name: the device speaks each name, so each differs"
    return None
