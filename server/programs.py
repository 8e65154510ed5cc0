"""The program library: programs clinicians write, checked by the device's own code
(``program_documents``), versioned, audited, and previewed (``program_previews``).

``version`` grows by one per change, and every version is kept (``ProgramVersionRow``: the
document, its checked definition and SHA-256, author and time), so a patient keeps the version
prescribed to them; an update names the version it replaces and loses with ``VersionConflict``
when someone else changed the program first (a compare-and-set ``UPDATE``, and the unique
(program, version) of the version rows, so two concurrent writers cannot both win). This module
is the library's one import for its callers: it names the documents' and the previews' public API
too (``__all__``).
"""

from __future__ import annotations

from datetime import datetime

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
    "parse_document",
    "patient_profile",
    "preview_wav",
    "program_of",
    "program_of_version",
    "render_preview",
    "update_program",
]


class NameTaken(ProgramInvalid):
    """Another library program has this name already."""


def list_programs(session: Session) -> list[ProgramLibraryRow]:
    return list(session.exec(select(ProgramLibraryRow).order_by(col(ProgramLibraryRow.name))))


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
    request: Request | None = None,
    backgrounds: BackgroundStore | None = None,
) -> ProgramLibraryRow:
    """A new library program at version 1, committed with its audit row; its background files
    must be in ``backgrounds`` (without a store, it may have none)."""
    program = parse_document(document, fmt, backgrounds=backgrounds)
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
    request: Request | None = None,
    backgrounds: BackgroundStore | None = None,
) -> ProgramLibraryRow:
    """The program's next version, if it is still at ``expected_version`` (``VersionConflict``
    otherwise; ``ProgramNotFound`` when there is no such program); backgrounds as for
    ``create_program``."""
    row = get_program(session, program_id)
    if row is None:
        raise ProgramNotFound(program_id)
    program = parse_document(document, fmt, backgrounds=backgrounds)
    user = _actor(session, actor_user_id)
    if row.version != expected_version:
        raise VersionConflict(row.version, "the program")
    _name_free(session, program.name, program_id)
    now = now_utc()
    result = session.execute(
        update(ProgramLibraryRow)
        .where(
            col(ProgramLibraryRow.id) == program_id,
            col(ProgramLibraryRow.version) == expected_version,
        )
        .values(
            name=program.name,
            version=expected_version + 1,
            document=document,
            format=fmt,
            content_hash=program.digest(),
            updated_by=actor_user_id,
            updated_at=now,
        )
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        current = get_program(session, program_id)
        raise VersionConflict(
            current.version if current is not None else expected_version, "the program"
        )
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
    _audit(session, user, "update", program_id, request)
    _commit_named(session, program.name)
    session.refresh(row)
    return row
