"""The program library: programs clinicians write, checked by the device's own code
(``program_documents``), versioned, audited, and previewed (``program_previews``).

``version`` grows by one per change; an update names the version it replaces and loses with
``VersionConflict`` when someone else changed the program first (a compare-and-set ``UPDATE``, so
two concurrent writers cannot both win). This module is the library's one import for its callers:
it names the documents' and the previews' public API too (``__all__``).
"""

from __future__ import annotations

from fastapi import Request
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from resonera.common.errors import VersionConflict
from resonera.common.ids import new_id
from resonera.server.audit import audit
from resonera.server.models import ProgramLibraryRow, UserRow
from resonera.server.program_documents import (
    FORMATS,
    MAX_DOCUMENT_CHARS,
    YAML_AVAILABLE,
    ProgramFormat,
    ProgramInvalid,
    ProgramNotFound,
    desired_program,
    parse_document,
    program_of,
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
    "desired_program",
    "engine_version",
    "get_program",
    "list_programs",
    "parse_document",
    "patient_profile",
    "preview_wav",
    "program_of",
    "render_preview",
    "update_program",
]


class NameTaken(ProgramInvalid):
    """Another library program has this name already."""


def list_programs(session: Session) -> list[ProgramLibraryRow]:
    return list(session.exec(select(ProgramLibraryRow).order_by(col(ProgramLibraryRow.name))))


def get_program(session: Session, program_id: str) -> ProgramLibraryRow | None:
    return session.get(ProgramLibraryRow, program_id)


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
) -> ProgramLibraryRow:
    """A new library program at version 1, committed with its audit row."""
    program = parse_document(document, fmt)
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
) -> ProgramLibraryRow:
    """The program's next version, if it is still at ``expected_version`` (``VersionConflict``
    otherwise; ``ProgramNotFound`` when there is no such program)."""
    row = get_program(session, program_id)
    if row is None:
        raise ProgramNotFound(program_id)
    program = parse_document(document, fmt)
    user = _actor(session, actor_user_id)
    if row.version != expected_version:
        raise VersionConflict(row.version, "the program")
    _name_free(session, program.name, program_id)
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
            updated_at=now_utc(),
        )
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        current = get_program(session, program_id)
        raise VersionConflict(
            current.version if current is not None else expected_version, "the program"
        )
    _audit(session, user, "update", program_id, request)
    _commit_named(session, program.name)
    session.refresh(row)
    return row
