"""``/programs``: the program library (``server/programs.py``) and its audio previews.

Every signed-in user reads the library (programs are not patient data); clinicians and admins write.
``GET /programs/{id}`` answers an ``ETag`` (the version); ``PUT`` needs it in ``If-Match``: 428
without it, 412 when the program changed meanwhile. Every version is kept: ``GET
/programs/{id}/versions`` lists them, ``GET /programs/{id}/versions/{n}`` reads one. A document
the device would refuse is 422 naming the field or line; another program's name is 409.

Programs have tags (``programs.normalise_tags``; a bad one is 422 naming it): ``PUT`` without
``tags`` keeps them, and a ``PUT`` of the same document changing only them makes no new version.
``GET /programs?tag=&q=`` filters by a tag (exact, any case) and text in name, description or tags.

``GET /programs/{id}/preview.wav`` is the program as the device would play it (engine and safety
chain), at most ``preview_max_s`` seconds: with ``?patient=ID`` for that patient's profile and
limits (a clinician's own patients only, and audited), otherwise for the default profile. The
file is cached by content, so the URL stays and the ``ETag`` changes when the program does.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from fastapi.responses import FileResponse

from resonera.common.errors import VersionConflict
from resonera.common.program import Program
from resonera.server import programs
from resonera.server.api.deps import (
    AdminOrClinician,
    CurrentUser,
    SessionDep,
    StateDep,
    own_patient,
)
from resonera.server.api.deps import (
    RowId as ProgramId,
)
from resonera.server.api.errors import ApiError
from resonera.server.api.paging import PAGED_RESPONSES, PageDep
from resonera.server.models import ProgramLibraryRow, ProgramVersionRow
from resonera.server.schemas import (
    INT32_MAX,
    PatientIdStr,
    ProgramIn,
    ProgramPublic,
    ProgramVersionPublic,
    ProgramVersionSummary,
)

router = APIRouter(prefix="/programs", tags=["programs"])


def _etag(row: ProgramLibraryRow) -> str:
    return f'"{row.version}"'


def _public(row: ProgramLibraryRow, program: Program | None = None) -> ProgramPublic:
    program = program if program is not None else programs.program_of(row)
    return ProgramPublic(
        id=row.id,
        name=row.name,
        version=row.version,
        format=row.format,
        document=row.document,
        content_hash=row.content_hash,
        tags=row.tags,
        duration_s=program.duration_s,
        program=program.model_dump(mode="json"),
        created_by=row.created_by,
        created_at=row.created_at,
        updated_by=row.updated_by,
        updated_at=row.updated_at,
    )


def _invalid(exc: programs.ProgramInvalid) -> ApiError:
    status_code = 409 if isinstance(exc, programs.NameTaken) else 422
    return ApiError(status_code, str(exc), details={"field": exc.field, "reason": exc.reason})


def _found(session: SessionDep, program_id: str) -> ProgramLibraryRow:
    row = programs.get_program(session, program_id)
    if row is None:
        raise ApiError(404, f"no library program {program_id}")
    return row


@router.get("", response_model=list[ProgramPublic], responses=PAGED_RESPONSES)
def list_programs(
    *,
    user: CurrentUser,
    session: SessionDep,
    request: Request,
    response: Response,
    page: PageDep,
    tag: Annotated[
        str | None, Query(max_length=64, description="only programs with this tag (any case)")
    ] = None,
    q: Annotated[
        str | None,
        Query(max_length=200, description="only programs whose name, description or tags hold it"),
    ] = None,
) -> Any:
    """The library programs, by name; with ``tag`` and/or ``q``, those that match both."""
    found = programs.search_programs(session, q=q, tag=tag)
    page.describe(request, response, len(found))
    return [_public(row, program) for row, program in page.slice_of(found)]


@router.post("", response_model=ProgramPublic, status_code=status.HTTP_201_CREATED)
def create_program(
    *,
    body: ProgramIn,
    user: AdminOrClinician,
    state: StateDep,
    session: SessionDep,
    request: Request,
    response: Response,
) -> ProgramPublic:
    """A new program, checked as the device checks programs; a background layer names a file
    the server holds by its SHA-256 (``sha256:<hex>``, from ``POST /backgrounds``)."""
    assert user.id is not None
    try:
        row = programs.create_program(
            session,
            actor_user_id=user.id,
            document=body.document,
            fmt=body.format,
            tags=body.tags or (),
            request=request,
            backgrounds=state.backgrounds,
        )
    except programs.ProgramInvalid as exc:
        raise _invalid(exc) from None
    response.headers["ETag"] = _etag(row)
    response.headers["Location"] = f"{request.url.path}/{row.id}"
    return _public(row)


@router.get("/{program_id}", response_model=ProgramPublic)
def get_program(
    *, program_id: ProgramId, user: CurrentUser, session: SessionDep, response: Response
) -> ProgramPublic:
    """One program; ``ETag`` is its version (for ``If-Match`` on ``PUT``)."""
    row = _found(session, program_id)
    response.headers["ETag"] = _etag(row)
    return _public(row)


def _version_summary(row: ProgramVersionRow) -> ProgramVersionSummary:
    return ProgramVersionSummary(
        version=row.version,
        name=row.name,
        sha256=row.sha256,
        created_by=row.created_by,
        created_at=row.created_at,
    )


@router.get(
    "/{program_id}/versions",
    response_model=list[ProgramVersionSummary],
    responses=PAGED_RESPONSES,
)
def list_versions(
    *,
    program_id: ProgramId,
    user: CurrentUser,
    session: SessionDep,
    request: Request,
    response: Response,
    page: PageDep,
) -> Any:
    """Every version of the program, the first first."""
    _found(session, program_id)
    versions = programs.list_versions(session, program_id)
    page.describe(request, response, len(versions))
    return [_version_summary(row) for row in page.slice_of(versions)]


@router.get("/{program_id}/versions/{version}", response_model=ProgramVersionPublic)
def get_version(
    *,
    program_id: ProgramId,
    version: Annotated[int, Path(ge=1, le=INT32_MAX)],
    user: CurrentUser,
    session: SessionDep,
) -> ProgramVersionPublic:
    """One version of the program, as a patient prescribed it plays it."""
    _found(session, program_id)
    row = programs.get_version(session, program_id, version)
    if row is None:
        raise ApiError(404, f"library program {program_id} has no version {version}")
    return ProgramVersionPublic(
        **_version_summary(row).model_dump(),
        program_id=row.program_id,
        format=row.format,
        document=row.document,
        duration_s=programs.program_of_version(row).duration_s,
        definition=row.definition,
    )


def _if_match_version(value: str | None) -> int | None:
    """The version ``If-Match`` names; None when it names none (which never matches)."""
    if value is None:
        raise ApiError(428, 'send If-Match with the ETag from GET (e.g. If-Match: "3")')
    text = value.strip().removeprefix("W/").strip('"')
    return int(text) if text.isdigit() and len(text) <= 9 else None


def _stale(current: int) -> ApiError:
    return ApiError(
        412,
        f"the program changed meanwhile (now version {current}); reload it",
        code="precondition_failed",
        details={"current_version": current},
        headers={"ETag": f'"{current}"'},
    )


@router.put("/{program_id}", response_model=ProgramPublic)
def update_program(
    *,
    program_id: ProgramId,
    body: ProgramIn,
    user: AdminOrClinician,
    state: StateDep,
    session: SessionDep,
    request: Request,
    response: Response,
    if_match: Annotated[str | None, Header(max_length=64)] = None,
) -> ProgramPublic:
    """The program's next version; ``If-Match`` must carry the version being replaced. The same
    document (and format) with other ``tags`` changes only the tags, in the same version."""
    expected = _if_match_version(if_match)
    row = _found(session, program_id)
    if expected is None:
        raise _stale(row.version)
    assert user.id is not None
    try:
        row = programs.update_program(
            session,
            program_id,
            actor_user_id=user.id,
            document=body.document,
            fmt=body.format,
            expected_version=expected,
            tags=body.tags,
            request=request,
            backgrounds=state.backgrounds,
        )
    except programs.ProgramInvalid as exc:
        raise _invalid(exc) from None
    except VersionConflict as exc:
        raise _stale(exc.current) from None
    except programs.ProgramNotFound:
        raise ApiError(404, f"no library program {program_id}") from None
    response.headers["ETag"] = _etag(row)
    return _public(row)


@router.get(
    "/{program_id}/preview.wav",
    response_class=FileResponse,
    responses={200: {"content": {"audio/wav": {}}, "description": "a 16-bit stereo WAV"}},
)
def preview(
    *,
    program_id: ProgramId,
    user: CurrentUser,
    state: StateDep,
    session: SessionDep,
    request: Request,
    patient: Annotated[PatientIdStr | None, Query(description="render for this patient")] = None,
    if_none_match: Annotated[str | None, Header(max_length=200)] = None,
) -> Response:
    """The program rendered as the device would play it, at most ``preview_max_s`` seconds
    (``X-Preview-Seconds``, ``X-Program-Seconds``, ``X-Preview-Truncated`` say how much)."""
    _found(session, program_id)
    if patient is not None:
        own_patient(session, user, patient)
    try:
        result = programs.render_preview(state.settings, session, program_id, patient_id=patient)
    except programs.PreviewRefused as exc:
        raise ApiError(422, f"this program cannot play for this patient: {exc}") from None
    except programs.ProgramNotFound as exc:
        raise ApiError(404, f"not found: {exc}") from None
    except OSError as exc:
        raise ApiError(503, f"the preview could not be stored: {exc}") from None
    programs.audit_preview(session, request, user, program_id, patient)
    etag = f'"{result.path.stem}"'
    headers = {
        "ETag": etag,
        # The URL stays when the program changes: revalidate each time (the ETag is cheap).
        "Cache-Control": "private, no-cache",
        "X-Preview-Seconds": f"{result.seconds:g}",
        "X-Program-Seconds": f"{result.program_s:g}",
        "X-Preview-Truncated": "true" if result.truncated else "false",
        "X-Preview-Max-Seconds": f"{state.settings.preview_max_s:g}",
    }
    if if_none_match is not None and etag in {t.strip() for t in if_none_match.split(",")}:
        return Response(status_code=304, headers=headers)
    return FileResponse(
        result.path,
        media_type="audio/wav",
        filename=f"preview-{program_id}.wav",
        content_disposition_type="inline",
        headers=headers,
    )
