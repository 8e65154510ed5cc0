"""The program library: programs clinicians write, checked by the device's own code
(``program_documents``), versioned, audited, and previewed (``program_previews``).

``version`` grows by one per change, and every version is kept (``ProgramVersionRow``: the
document, its checked definition and SHA-256, author and time), so a patient keeps the version
prescribed to them; an update names the version it replaces and loses with ``VersionConflict``
when someone else changed the program first (a compare-and-set ``UPDATE``, and the unique
(program, version) of the version rows, so two concurrent writers cannot both win). Tags
(``normalise_tags``) describe the library entry, not the sound: changing only them keeps the
version (what a patient was prescribed is unchanged) and is audited as ``update_tags``. The
library is small and searched, not paged (``search_programs``). This module
is the library's one import for its callers: it names the documents' and the previews' public API
too (``__all__``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Final

from fastapi import Request
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from resonera.common.errors import VersionConflict
from resonera.common.ids import new_id
from resonera.common.program import Program
from resonera.server.audit import audit
from resonera.server.backgrounds import BackgroundStore
from resonera.server.models import ProgramLibraryRow, ProgramVersionRow, UserRow
from resonera.server.program_documents import (
    FORMATS,
    MAX_DOCUMENT_CHARS,
    YAML_AVAILABLE,
    ProgramFormat,
    ProgramInvalid,
    ProgramNotFound,
    parse_document,
    program_of,
    program_of_version,
)
from resonera.server.program_previews import (
    PREVIEW_SAMPLE_RATE,
    Preview,
    PreviewRefused,
    audit_preview,
    engine_version,
    patient_profile,
    preview_wav,
    render_preview,
)
from resonera.server.security import now_utc

__all__ = [
    "FORMATS",
    "MAX_DOCUMENT_CHARS",
    "MAX_TAGS",
    "MAX_TAG_CHARS",
    "PREVIEW_SAMPLE_RATE",
    "YAML_AVAILABLE",
    "NameTaken",
    "Preview",
    "PreviewRefused",
    "ProgramFormat",
    "ProgramInvalid",
    "ProgramNotFound",
    "audit_preview",
    "create_program",
    "engine_version",
    "get_program",
    "get_version",
    "list_programs",
    "list_versions",
    "normalise_tags",
    "parse_document",
    "patient_profile",
    "preview_wav",
    "program_of",
    "program_of_version",
    "render_preview",
    "search_programs",
    "tags_of_text",
    "update_program",
]

#: Tags per program: enough to describe an entry, few enough to read at a glance in a search.
MAX_TAGS: Final = 10
MAX_TAG_CHARS: Final = 32
# Letters and digits of any script (a clinician may tag in Swedish), spaces and hyphens; ``\w``
# without the underscore.
_TAG: Final = re.compile(r"(?:[^\W_]|[ -])+")


class NameTaken(ProgramInvalid):
    """Another library program has this name already."""


def normalise_tags(tags: Iterable[str]) -> list[str]:
    """``tags`` trimmed (inner runs of spaces made one), lowercased and de-duplicated in their
    order; ``ProgramInvalid`` (field ``tags``) naming the first one that is empty, too long or has
    another character, or when more than ``MAX_TAGS`` remain."""
    out: list[str] = []
    for raw in tags:
        tag = " ".join(raw.split()).lower()
        shown = tag if len(tag) <= 40 else tag[:40] + "…"  # a hostile length stays readable
        if not tag:
            raise ProgramInvalid("tags", "a tag is empty")
        if len(tag) > MAX_TAG_CHARS:
            raise ProgramInvalid("tags", f"tag {shown!r} is longer than {MAX_TAG_CHARS} characters")
        if _TAG.fullmatch(tag) is None:
            raise ProgramInvalid(
                "tags", f"tag {shown!r} may hold only letters, digits, spaces and hyphens"
            )
        if tag not in out:
            out.append(tag)
    if len(out) > MAX_TAGS:
        raise ProgramInvalid("tags", f"at most {MAX_TAGS} tags, not {len(out)}")
    return out


def tags_of_text(text: str) -> list[str]:
    """The tags of a comma-separated text field (the dashboard's), normalised; empty pieces are
    skipped, so a trailing comma is no error."""
    return normalise_tags(piece for piece in text.split(",") if piece.strip())


def list_programs(session: Session) -> list[ProgramLibraryRow]:
    return list(session.exec(select(ProgramLibraryRow).order_by(col(ProgramLibraryRow.name))))


def search_programs(
    session: Session, *, q: str | None = None, tag: str | None = None
) -> list[tuple[ProgramLibraryRow, Program]]:
    """Library programs (by name, each with its checked program) that have the tag ``tag``
    (exactly, in any case) and whose name, description or a tag holds ``q`` (any case); None or
    an empty ``q`` matches all. Filtered here, not in SQL: the library is small, the description
    lives in the document, and tags are JSON, which SQLite and PostgreSQL query differently."""
    needle = (q or "").strip().casefold()
    wanted = " ".join(tag.split()).lower() if tag is not None else None
    found: list[tuple[ProgramLibraryRow, Program]] = []
    for row in list_programs(session):
        if wanted is not None and wanted not in row.tags:
            continue
        program = program_of(row)
        fields = (program.name, program.description, *row.tags)
        if needle and not any(needle in text.casefold() for text in fields):
            continue
        found.append((row, program))
    return found


def get_program(session: Session, program_id: str) -> ProgramLibraryRow | None:
    return session.get(ProgramLibraryRow, program_id)


def list_versions(session: Session, program_id: str) -> list[ProgramVersionRow]:
    """Every version of a program, the first first."""
    return list(
        session.exec(
            select(ProgramVersionRow)
            .where(ProgramVersionRow.program_id == program_id)
            .order_by(col(ProgramVersionRow.version))
        )
    )


def get_version(session: Session, program_id: str, version: int) -> ProgramVersionRow | None:
    return session.exec(
        select(ProgramVersionRow).where(
            ProgramVersionRow.program_id == program_id, ProgramVersionRow.version == version
        )
    ).first()


def _version_row(
    program_id: str,
    version: int,
    program: Program,
    document: str,
    fmt: ProgramFormat,
    *,
    actor_user_id: int,
    at: datetime,
) -> ProgramVersionRow:
    definition = program.model_dump(mode="json")
    return ProgramVersionRow(
        program_id=program_id,
        version=version,
        name=program.name,
        document=document,
        format=fmt,
        definition=definition,
        sha256=program.digest(),
        created_by=actor_user_id,
        created_at=at,
    )


def _audit(
    session: Session, user: UserRow, action: str, program_id: str, request: Request | None
) -> None:
    audit(session, request, user, action, "program", resource_id=program_id)


def _actor(session: Session, user_id: int) -> UserRow:
    user = session.get(UserRow, user_id)
    if user is None:
        raise ValueError(f"no user {user_id}")
    return user


def _name_free(session: Session, name: str, program_id: str | None) -> None:
    other = session.exec(select(ProgramLibraryRow).where(ProgramLibraryRow.name == name)).first()
    if other is not None and other.id != program_id:
        raise NameTaken("name", f"a library program named {name!r} exists already")


def _commit_named(session: Session, name: str) -> None:
    """Commit; a concurrent writer who took the same name first makes this ``NameTaken``."""
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise NameTaken("name", f"a library program named {name!r} exists already") from None


def create_program(
    session: Session,
    *,
    actor_user_id: int,
    document: str,
    fmt: ProgramFormat,
    tags: Sequence[str] = (),
    request: Request | None = None,
    backgrounds: BackgroundStore | None = None,
) -> ProgramLibraryRow:
    """A new library program at version 1, committed with its audit row; its background files
    must be in ``backgrounds`` (without a store, it may have none)."""
    program = parse_document(document, fmt, backgrounds=backgrounds)
    normalised = normalise_tags(tags)
    user = _actor(session, actor_user_id)
    _name_free(session, program.name, None)
    now = now_utc()
    row = ProgramLibraryRow(
        id=new_id(),
        name=program.name,
        version=1,
        document=document,
        format=fmt,
        content_hash=program.digest(),
        tags=normalised,
        created_by=actor_user_id,
        created_at=now,
        updated_by=actor_user_id,
        updated_at=now,
    )
    session.add(row)
    # the unit of work inserts the program before its version (the foreign key orders them)
    session.add(
        _version_row(row.id, 1, program, document, fmt, actor_user_id=actor_user_id, at=now)
    )
    _audit(session, user, "create", row.id, request)
    _commit_named(session, program.name)
    session.refresh(row)  # loaded, so it stays readable in a session that expires on commit
    return row


def update_program(
    session: Session,
    program_id: str,
    *,
    actor_user_id: int,
    document: str,
    fmt: ProgramFormat,
    expected_version: int,
    tags: Sequence[str] | None = None,
    request: Request | None = None,
    backgrounds: BackgroundStore | None = None,
) -> ProgramLibraryRow:
    """The program's next version, if it is still at ``expected_version`` (``VersionConflict``
    otherwise; ``ProgramNotFound`` when there is no such program); backgrounds as for
    ``create_program``. ``tags`` None keeps them. The same document and format make no version:
    only changed tags are saved (audited ``update_tags``), and nothing changed saves nothing."""
    row = get_program(session, program_id)
    if row is None:
        raise ProgramNotFound(program_id)
    program = parse_document(document, fmt, backgrounds=backgrounds)
    new_tags = list(row.tags) if tags is None else normalise_tags(tags)
    user = _actor(session, actor_user_id)
    if row.version != expected_version:
        raise VersionConflict(row.version, "the program")
    content_changed = (document, fmt) != (row.document, row.format)
    if not content_changed and new_tags == row.tags:
        return row
    now = now_utc()
    values: dict[str, Any] = {"tags": new_tags, "updated_by": actor_user_id, "updated_at": now}
    if content_changed:
        _name_free(session, program.name, program_id)
        values |= {
            "name": program.name,
            "version": expected_version + 1,
            "document": document,
            "format": fmt,
            "content_hash": program.digest(),
        }
    # Compare-and-set on the version for a tags-only change too, so it cannot land on a program
    # someone re-versioned since it was read.
    result = session.execute(
        update(ProgramLibraryRow)
        .where(
            col(ProgramLibraryRow.id) == program_id,
            col(ProgramLibraryRow.version) == expected_version,
        )
        .values(**values)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        current = get_program(session, program_id)
        raise VersionConflict(
            current.version if current is not None else expected_version, "the program"
        )
    if content_changed:
        session.add(
            _version_row(
                program_id,
                expected_version + 1,
                program,
                document,
                fmt,
                actor_user_id=actor_user_id,
                at=now,
            )
        )
    _audit(session, user, "update" if content_changed else "update_tags", program_id, request)
    _commit_named(session, program.name)
    session.refresh(row)
    return row
