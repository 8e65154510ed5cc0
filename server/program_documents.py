"""Program documents as clinicians write them (TOML or YAML), read and checked with the device's
own code (``common.program``, ``common.program_check``): a document is refused, with the field (or
line) and the reason, by the very model the device plays from. A background layer names its file
by content (``sha256:<hex>``), only one the server's store holds (``backgrounds.py``): a path in a
program must never read a server file, and a device fetches the file by that hash."""

from __future__ import annotations

import tomllib
from typing import Final, Literal

from pydantic import ValidationError

from resonera.common.errors import ProgramError, describe_validation_error
from resonera.common.prescription import content_hash
from resonera.common.profile import HearingProfile
from resonera.common.program import Program
from resonera.common.program_check import check_program_for
from resonera.server.backgrounds import BackgroundStore
from resonera.server.models import ProgramLibraryRow, ProgramVersionRow

try:
    import yaml  # type: ignore[import-untyped,unused-ignore]

    YAML_AVAILABLE = True
except ImportError:  # PyYAML is in the server's dependencies; a trimmed install may lack it
    YAML_AVAILABLE = False

ProgramFormat = Literal["toml", "yaml"]
FORMATS: Final = ("toml", "yaml")
#: A program document above this is refused (hand-written programs are a few KiB).
MAX_DOCUMENT_CHARS: Final = 64 * 1024


class ProgramInvalid(Exception):
    """A document the device would refuse: ``field`` (a dotted path, ``document`` or ``name``) and
    the ``reason``, with the line for syntax errors."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ProgramNotFound(LookupError):
    """No such program (or patient) in the library."""


def _yaml_data(document: str) -> object:
    if not YAML_AVAILABLE:
        raise ProgramInvalid("format", "YAML is not available on this server; use TOML")
    try:
        # Aliases would let a few lines expand into a huge structure: hand-written programs need none.
        for event in yaml.parse(document, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise ProgramInvalid("document", "YAML aliases (*name) are not allowed")
        return yaml.safe_load(document)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ProgramInvalid("document", f"not valid YAML{where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ProgramInvalid("document", f"not valid YAML: {exc}") from None


def parse_document(
    document: str, fmt: ProgramFormat, *, backgrounds: BackgroundStore | None = None
) -> Program:
    """The program a document describes, checked as a device checks it for a default profile on
    headphones; ``ProgramInvalid`` naming the field (or line) otherwise. A background layer names
    its file by content (``sha256:<hex>``), which ``backgrounds`` must hold (without a store, no
    background is accepted)."""
    program = _program_in(document, fmt)
    for field, path in program.background_paths():
        digest = content_hash(path)
        if digest is None:
            # a path would read a file of the server's, or one no device has
            raise ProgramInvalid(
                field,
                f"a library program names its background file by content, sha256:<hex> (upload "
                f"the file with POST /backgrounds), not by the path {path!r}",
            )
        if backgrounds is None or not backgrounds.holds(digest):
            raise ProgramInvalid(
                field,
                f"background file {path} is not in the server's store (upload it with "
                "POST /backgrounds)",
            )
    return _checked(program)


def _program_in(document: str, fmt: ProgramFormat) -> Program:
    if fmt not in FORMATS:
        raise ProgramInvalid("format", f"{fmt!r} is not one of {', '.join(FORMATS)}")
    if len(document) > MAX_DOCUMENT_CHARS:
        raise ProgramInvalid(
            "document", f"{len(document)} characters; at most {MAX_DOCUMENT_CHARS} are allowed"
        )
    if fmt == "toml":
        try:
            data: object = tomllib.loads(document)
        except tomllib.TOMLDecodeError as exc:
            raise ProgramInvalid("document", f"not valid TOML: {exc}") from None
    else:
        data = _yaml_data(document)
    try:
        return Program.model_validate(data)
    except ValidationError as exc:
        field = ".".join(str(p) for p in exc.errors()[0]["loc"]) or "document"
        reason = describe_validation_error(exc)
        raise ProgramInvalid(field, reason.removeprefix(f"{field}: ")) from None


def _checked(program: Program) -> Program:
    try:
        return check_program_for(program, HearingProfile(), "headphones")
    except ProgramError as exc:
        raise ProgramInvalid("document", str(exc)) from None


def program_of(row: ProgramLibraryRow) -> Program:
    """The stored program (checked when it was stored, its backgrounds held then)."""
    return _checked(_program_in(row.document, "yaml" if row.format == "yaml" else "toml"))


def program_of_version(row: ProgramVersionRow) -> Program:
    """The program of a stored version, from its definition (checked when it was stored)."""
    return Program.model_validate(row.definition)
