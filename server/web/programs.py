"""The program library pages: list, create, edit (validated by the device's own code, through
``resonera.server.programs`` as the API's ``/programs`` is) and an ``<audio>`` preview served here
with the dashboard's cookie session. Everyone signed in reads the library (programs are not patient
data); clinicians and admins write. Tags are one comma-separated field; changing only them keeps
the program's version."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sqlmodel import Session

from resonera.common.errors import VersionConflict
from resonera.server import programs
from resonera.server.api.deps import RowId as ProgramId
from resonera.server.api.deps import SessionDep, StateDep
from resonera.server.models import ProgramLibraryRow
from resonera.server.schemas import PatientIdStr
from resonera.server.web.auth import WebUserDep, check_csrf, own_patient_page
from resonera.server.web.render import PAGE_HEADERS, PageError, render
from resonera.server.web.web_user import WebUser

router = APIRouter(include_in_schema=False)
Document = Annotated[str, Form(max_length=programs.MAX_DOCUMENT_CHARS)]
#: Room for ten tags of the longest kind with their commas, and some slack for spaces.
TagsText = Annotated[str, Form(max_length=500)]
WRITERS: Final = ("clinician", "admin")
EXAMPLE: Final = """\
name = "Alpha drift"
description = "ten minutes of alpha"

[[steps]]
duration_s = 600
[[steps.layers]]
type = "binaural"
carrier_hz = 200
beat_hz = 10
gain = 0.3
"""


def _writer(web: WebUser) -> None:
    if web.role not in WRITERS:
        raise PageError(403, "Only clinicians and admins change the program library.")


def _found(session: Session, program_id: str) -> ProgramLibraryRow:
    row = programs.get_program(session, program_id)
    if row is None:
        raise PageError(404, f"There is no library program {program_id}.")
    return row


def _duration(row: ProgramLibraryRow) -> float:
    return programs.program_of(row).duration_s


def _library(
    web: WebUser,
    session: Session,
    *,
    status: int = 200,
    error: str = "",
    form: dict[str, Any] | None = None,
) -> HTMLResponse:
    rows = programs.list_programs(session)
    return render(
        "programs.html",
        {
            "web": web,
            "title": "Program library",
            "rows": [(row, _duration(row)) for row in rows],
            "can_write": web.role in WRITERS,
            "error": error,
            "form": form or {"document": EXAMPLE, "format": "toml", "tags": ""},
        },
        status=status,
    )


def _program_page(
    web: WebUser,
    state: StateDep,
    row: ProgramLibraryRow,
    *,
    status: int = 200,
    error: str = "",
    form: dict[str, Any] | None = None,
    notice: str = "",
) -> HTMLResponse:
    return render(
        "program.html",
        {
            "web": web,
            "title": row.name,
            "row": row,
            "duration_s": _duration(row),
            "preview_max_s": state.settings.preview_max_s,
            "can_write": web.role in WRITERS,
            "error": error,
            "form": form
            or {"document": row.document, "format": row.format, "tags": ", ".join(row.tags)},
            "notice": notice,
        },
        status=status,
    )


def _invalid_message(exc: programs.ProgramInvalid) -> str:
    return f"Not saved: {exc.field}: {exc.reason}"


@router.get("/programs")
def library_page(web: WebUserDep, session: SessionDep) -> HTMLResponse:
    return _library(web, session)


@router.post("/programs", response_model=None)
def create_program(
    *,
    request: Request,
    web: WebUserDep,
    state: StateDep,
    session: SessionDep,
    document: Document = "",
    fmt: Annotated[Literal["toml", "yaml"], Form(alias="format")] = "toml",
    tags: TagsText = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    check_csrf(web, csrf_token)
    _writer(web)
    assert web.user.id is not None
    form = {"document": document, "format": fmt, "tags": tags}
    if not document.strip():
        return _library(
            web, session, status=400, error="Not saved: the document is empty.", form=form
        )
    try:
        row = programs.create_program(
            session,
            actor_user_id=web.user.id,
            document=document,
            fmt=fmt,
            tags=programs.tags_of_text(tags),
            request=request,
            backgrounds=state.backgrounds,
        )
    except programs.ProgramInvalid as exc:
        status = 409 if isinstance(exc, programs.NameTaken) else 400
        return _library(web, session, status=status, error=_invalid_message(exc), form=form)
    return RedirectResponse(
        f"/programs/{row.id}?saved={row.version}", status_code=303, headers=dict(PAGE_HEADERS)
    )


@router.get("/programs/{program_id}")
def program_page(
    *,
    program_id: ProgramId,
    web: WebUserDep,
    state: StateDep,
    session: SessionDep,
    saved: int | None = None,
    unchanged: bool = False,
) -> HTMLResponse:
    row = _found(session, program_id)
    notice = f"Saved as version {saved}." if saved is not None else ""
    if unchanged:  # tags alone are not the program's content: no version was made
        notice = f"Saved. The document is unchanged, so the program stays version {row.version}."
    return _program_page(web, state, row, notice=notice)


@router.post("/programs/{program_id}", response_model=None)
def update_program(
    *,
    request: Request,
    program_id: ProgramId,
    web: WebUserDep,
    state: StateDep,
    session: SessionDep,
    document: Document = "",
    fmt: Annotated[Literal["toml", "yaml"], Form(alias="format")] = "toml",
    tags: TagsText = "",
    version: Annotated[int, Form(ge=0, le=2**31 - 1)] = 0,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """The program's next version if it is still at ``version`` (the form's If-Match); the same
    document with other tags saves only them, in the same version."""
    check_csrf(web, csrf_token)
    _writer(web)
    row = _found(session, program_id)
    before = row.version
    assert web.user.id is not None
    form = {"document": document, "format": fmt, "tags": tags}
    try:
        row = programs.update_program(
            session,
            program_id,
            actor_user_id=web.user.id,
            document=document,
            fmt=fmt,
            expected_version=version,
            tags=programs.tags_of_text(tags),
            request=request,
            backgrounds=state.backgrounds,
        )
    except programs.ProgramInvalid as exc:
        status = 409 if isinstance(exc, programs.NameTaken) else 400
        return _program_page(web, state, row, status=status, error=_invalid_message(exc), form=form)
    except VersionConflict as exc:
        session.rollback()
        current = _found(session, program_id)
        return _program_page(
            web,
            state,
            current,
            status=409,
            error=f"Not saved: someone saved version {exc.current} meanwhile; this is it now.",
        )
    done = f"saved={row.version}" if row.version != before else "unchanged=1"
    return RedirectResponse(
        f"/programs/{row.id}?{done}", status_code=303, headers=dict(PAGE_HEADERS)
    )


@router.get("/programs/{program_id}/preview.wav", response_model=None)
def preview(
    *,
    request: Request,
    program_id: ProgramId,
    web: WebUserDep,
    state: StateDep,
    session: SessionDep,
    patient: Annotated[PatientIdStr | None, Query()] = None,
) -> Response:
    """The program as the device would play it (engine and safety chain), at most
    ``preview_max_s`` seconds; with ``patient``, as that patient's device would (their profile
    narrowed by their limits; one of a clinician's own patients, audited). Rendered once per
    content and cached (``programs.preview_wav``)."""
    _found(session, program_id)
    if patient is not None:
        if web.role != "clinician":
            raise PageError(403, "Previews for a patient are for the patient's clinicians.")
        own_patient_page(session, web, patient)
    try:
        path = programs.preview_wav(state.settings, session, program_id, patient_id=patient)
    except programs.PreviewRefused as exc:
        raise PageError(422, f"This program cannot be previewed: {exc}") from None
    except programs.ProgramNotFound:
        raise PageError(404, f"There is no library program {program_id}.") from None
    except OSError as exc:
        raise PageError(503, f"The preview could not be stored: {exc}") from None
    programs.audit_preview(session, request, web.user, program_id, patient)
    return FileResponse(
        path,
        media_type="audio/wav",
        headers={"Cache-Control": "private, no-cache", "X-Content-Type-Options": "nosniff"},
    )
