"""Background sound files: uploaded by clinicians and admins (``POST /backgrounds``), fetched by
devices with their client certificate (``GET /device/backgrounds/{sha256}``); see
``server/backgrounds.py`` for the store and ``server/tls_peer.py`` for the certificate.

An upload is streamed to the store as it arrives (the body limit of other routes does not apply:
``UPLOAD_PATH`` is bounded by ``MAX_BACKGROUND_BYTES`` instead), checked, kept under its SHA-256
and audited. A device's fetch is answered only to a registered, unrevoked device (401 without a
certificate or with one the server does not know, 403 revoked, 404 no such file), and audited
with the device as the actor.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from resonera.common.prescription import content_path
from resonera.server.api.deps import AdminOrClinician, SessionDep, StateDep, requesting_device
from resonera.server.api.errors import ApiError
from resonera.server.audit import audit, audit_device_fetch
from resonera.server.backgrounds import BackgroundInvalid

router = APIRouter(tags=["backgrounds"])
#: Under the API prefix; ``BodyLimit`` lets this path's body through unbuffered.
UPLOAD_PATH = "/backgrounds"
Sha256Path = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="SHA-256 in hex")]


class BackgroundPublic(BaseModel):
    sha256: str = Field(description="SHA-256 of the file's bytes, its name in the store")
    size: int
    path: str = Field(description="what a library program's background layer names: sha256:<hex>")


@router.post(
    UPLOAD_PATH,
    response_model=BackgroundPublic,
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"audio/wav": {}, "audio/flac": {}, "application/octet-stream": {}},
        }
    },
)
async def upload_background(
    *, request: Request, user: AdminOrClinician, state: StateDep, session: SessionDep
) -> BackgroundPublic:
    """A WAV or FLAC file as the request body, at most ``MAX_BACKGROUND_BYTES`` (413 beyond);
    kept under its SHA-256 (the same bytes again: the same file). 422 when it is not a sound file
    the engine plays."""
    # The chunks go to a local file as they come; each write is short, so the event loop is
    # not held up longer than a buffered body would hold it.
    with state.backgrounds.writer() as writer:
        try:
            async for chunk in request.stream():
                writer.write(chunk)
            held = writer.finish()
        except BackgroundInvalid as exc:
            raise ApiError(413 if exc.too_large else 422, f"background file: {exc}") from None
    audit(session, request, user, "create", "background", resource_id=held.sha256)
    session.commit()
    return BackgroundPublic(sha256=held.sha256, size=held.size, path=content_path(held.sha256))


@router.get(
    "/device/backgrounds/{sha256}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the file"}},
)
def fetch_background(
    *, sha256: Sha256Path, request: Request, state: StateDep, session: SessionDep
) -> Response:
    """The file named ``sha256``, to a device presenting its client certificate."""
    device_id = requesting_device(state, session, request)
    held = state.backgrounds.file(sha256)
    if held is None:
        raise ApiError(404, f"no background file {sha256} on this server")
    audit_device_fetch(session, request, device_id, "background", sha256)
    return FileResponse(
        state.backgrounds.path_for(sha256),
        media_type="application/octet-stream",
        headers={"Cache-Control": "private, max-age=31536000, immutable"},
    )
