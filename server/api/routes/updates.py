"""Agent updates (issue 25, ``server/updates.py``): admins upload bundles, roll them out to a cohort
or a share of the fleet, pause, resume and cancel rollouts, put devices in cohorts, and see per
version how many devices run it, update to it, or failed; devices fetch a bundle with their client
certificate (``GET /device/updates/{sha256}``, resumable with ``Range``).

An upload is streamed to the bundle store as it arrives (the body limit of other routes does not
apply: ``UPLOAD_PATH`` is bounded by ``MAX_BUNDLE_BYTES``), checked (its manifest's signature
against ``update_public_keys``, every member against the manifest), kept under its SHA-256 and
audited. Every change re-issues the desired documents it changes (committed first, then published).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request, Response, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlmodel import Session

from resonera.common.topics import DEVICE_ID_PATTERN
from resonera.server import updates
from resonera.server.api.deps import AdminUser, AppState, SessionDep, StateDep, requesting_device
from resonera.server.api.errors import ApiError
from resonera.server.api.paging import PAGED_RESPONSES, PageDep
from resonera.server.audit import audit, audit_device_fetch
from resonera.server.models import COHORT_MAX, AgentBundleRow, RolloutRow, UserRow
from resonera.server.security import now_utc

router = APIRouter(tags=["updates"])
#: Under the API prefix; ``BodyLimit`` lets this path's body through unbuffered.
UPLOAD_PATH = "/updates/bundles"
Sha256Path = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="SHA-256 in hex")]
RolloutIdPath = Annotated[str, Path(min_length=1, max_length=36, pattern=r"^[0-9a-f-]{1,36}$")]
DeviceIdPath = Annotated[str, Path(pattern=f"^{DEVICE_ID_PATTERN}$", max_length=64)]
#: A cohort's name: the device-id rules (letters, digits, '_', '.', '-').
COHORT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class BundlePublic(BaseModel):
    version: str
    sha256: str = Field(description="SHA-256 of the tar, its name in the store")
    size: int = Field(description="bytes")
    min_previous_version: str | None = Field(
        description="the oldest version a device may update from (None: any)"
    )
    files: int = Field(description="files the manifest lists")
    uploaded_by: str
    uploaded_at: datetime

    @classmethod
    def of(cls, row: AgentBundleRow) -> BundlePublic:
        files = row.manifest.get("files")
        return cls(
            version=row.version,
            sha256=row.sha256,
            size=row.size,
            min_previous_version=row.min_previous_version,
            files=len(files) if isinstance(files, list) else 0,
            uploaded_by=row.uploaded_by_email,
            uploaded_at=row.uploaded_at,
        )


class RolloutCreate(BaseModel):
    """A rollout of an uploaded version: to a cohort, or to a share of the fleet."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=64)
    cohort: str | None = Field(default=None, pattern=COHORT_PATTERN, max_length=COHORT_MAX)
    percentage: int | None = Field(default=None, ge=1, le=100)
    failure_threshold: float = Field(
        default=updates.DEFAULT_FAILURE_THRESHOLD,
        gt=0,
        le=1,
        description="paused when more than this share of the targeted devices fail",
    )
    min_failures: int = Field(
        default=updates.DEFAULT_MIN_FAILURES,
        ge=1,
        le=100_000,
        description="... and at least this many",
    )

    @model_validator(mode="after")
    def _one_target(self) -> RolloutCreate:
        if (self.cohort is None) == (self.percentage is None):
            raise ValueError("give either a cohort or a percentage, not both and not neither")
        return self


class RolloutPublic(BaseModel):
    id: str
    version: str
    cohort: str | None
    percentage: int | None
    failure_threshold: float
    min_failures: int
    state: Literal["active", "paused", "completed", "cancelled"]
    paused_reason: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    targeted: int = Field(description="devices the rollout is for (not revoked, updatable)")
    installed: int = Field(description="of those, running its version")
    failed: int = Field(description="of those, failed or rolled back this version")
    pending: int = Field(description="of those, still to update")

    @classmethod
    def of(cls, row: RolloutRow, counts: updates.RolloutCounts) -> RolloutPublic:
        return cls(
            id=row.id,
            version=row.version,
            cohort=row.cohort,
            percentage=row.percentage,
            failure_threshold=row.failure_threshold,
            min_failures=row.min_failures,
            state=row.state,
            paused_reason=row.paused_reason,
            created_by=row.created_by_email,
            created_at=row.created_at,
            updated_at=row.updated_at,
            targeted=counts.targeted,
            installed=counts.installed,
            failed=counts.failed,
            pending=counts.pending,
        )


class DeviceStepPublic(BaseModel):
    device_id: str
    state: str = Field(description="the step of the device's latest update report")
    reason: str
    at: datetime | None = Field(description="when the server received that report")


class VersionPublic(BaseModel):
    version: str = Field(description='an agent version ("unknown": devices that never said)')
    uploaded: bool = Field(description="a bundle of this version is on the server")
    running: int
    running_devices: list[str]
    updating: list[DeviceStepPublic]
    failed: list[DeviceStepPublic]


class CohortIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cohort: str | None = Field(pattern=COHORT_PATTERN, max_length=COHORT_MAX)


class DeviceCohortPublic(BaseModel):
    device_id: str
    cohort: str | None


def _refused(exc: updates.UpdateRefused) -> ApiError:
    return ApiError(exc.status, str(exc))


def publish_after_commit(
    state: AppState, session: Session, device_ids: Iterable[str] | None = None
) -> None:
    """Re-issue the documents the change made stale (of ``device_ids``; None: of every device),
    commit, then publish them (a document is never out before its row)."""
    outgoing = state.desired.reconcile(session, now_utc(), device_ids)
    session.commit()
    state.desired.publish(outgoing)


@router.post(
    UPLOAD_PATH,
    response_model=BundlePublic,
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/x-tar": {}, "application/octet-stream": {}},
        }
    },
)
async def upload_bundle(
    *, request: Request, admin: AdminUser, state: StateDep, session: SessionDep
) -> BundlePublic:
    """An agent bundle (``resonera-agent-<version>.tar``) as the request body, at most
    ``MAX_BUNDLE_BYTES`` (413 beyond). 422 when its manifest is not signed by one of the server's
    ``update_public_keys`` or its members are not the manifest's (missing, extra, corrupt); 409
    when its version (or the same bytes) was uploaded already."""
    store = updates.BundleStore.for_settings(state.settings)
    with store.writer() as writer:
        try:
            async for chunk in request.stream():
                writer.write(chunk)
            checked = writer.finish()
        except updates.UpdateRefused as exc:
            raise ApiError(exc.status, f"bundle: {exc}") from None
    return keep_bundle(session, request, admin, store, checked)


def keep_bundle(
    session: Session,
    request: Request,
    user: UserRow,
    store: updates.BundleStore,
    checked: updates.CheckedBundle,
) -> BundlePublic:
    """The checked bundle's row, audited and committed; a refused one leaves no file behind."""
    try:
        row = updates.add_bundle(session, checked, user, now_utc())
    except updates.UpdateRefused as exc:
        session.rollback()
        if exc.status == 409 and updates.bundle_of(session, checked.sha256) is None:
            store.path_for(checked.sha256).unlink(missing_ok=True)
        raise ApiError(exc.status, f"bundle: {exc}") from None
    audit(session, request, user, "create", "agent_bundle", resource_id=checked.version)
    session.commit()
    return BundlePublic.of(row)


@router.get(UPLOAD_PATH, response_model=list[BundlePublic], responses=PAGED_RESPONSES)
def list_bundles(
    *, request: Request, response: Response, admin: AdminUser, session: SessionDep, page: PageDep
) -> list[BundlePublic]:
    """The uploaded bundles, newest first."""
    rows = updates.list_bundles(session)
    page.describe(request, response, len(rows))
    return [BundlePublic.of(row) for row in page.slice_of(rows)]


@router.post("/updates/rollouts", response_model=RolloutPublic, status_code=201)
def create_rollout(
    *, body: RolloutCreate, request: Request, admin: AdminUser, state: StateDep, session: SessionDep
) -> RolloutPublic:
    """Start a rollout (at once: the targeted devices' documents carry the update). A rollout of
    the version the current rollout rolls out supersedes it (widening it keeps the devices already
    in); another version is 409 while a rollout is active or paused: cancel that one first."""
    try:
        row, superseded = updates.create_rollout(
            session,
            admin,
            version=body.version,
            cohort=body.cohort,
            percentage=body.percentage,
            failure_threshold=body.failure_threshold,
            min_failures=body.min_failures,
            now=now_utc(),
        )
    except updates.UpdateRefused as exc:
        raise _refused(exc) from None
    if superseded is not None:
        audit(session, request, admin, "cancel", "rollout", resource_id=superseded.id)
    audit(session, request, admin, "create", "rollout", resource_id=row.id)
    publish_after_commit(state, session)
    return RolloutPublic.of(row, updates.rollout_counts(session, [row])[row.id])


@router.post("/updates/rollouts/{rollout_id}/{action}", response_model=RolloutPublic)
def change_rollout(
    *,
    rollout_id: RolloutIdPath,
    action: Literal["pause", "resume", "cancel"],
    request: Request,
    admin: AdminUser,
    state: StateDep,
    session: SessionDep,
) -> RolloutPublic:
    """Pause (the devices not yet switched lose their target), resume (failures so far no longer
    count toward a pause) or cancel a rollout; 409 when its state does not allow it."""
    try:
        row = updates.move_rollout(session, rollout_id, action, now_utc())
    except updates.UpdateRefused as exc:
        raise _refused(exc) from None
    audit(session, request, admin, action, "rollout", resource_id=row.id)
    publish_after_commit(state, session)
    return RolloutPublic.of(row, updates.rollout_counts(session, [row])[row.id])


@router.get("/updates/rollouts", response_model=list[RolloutPublic], responses=PAGED_RESPONSES)
def list_rollouts(
    *, request: Request, response: Response, admin: AdminUser, session: SessionDep, page: PageDep
) -> list[RolloutPublic]:
    """Every rollout, newest first, with its devices counted now."""
    rows = updates.list_rollouts(session)
    page.describe(request, response, len(rows))
    shown = page.slice_of(rows)
    counts = updates.rollout_counts(session, shown)
    return [RolloutPublic.of(row, counts[row.id]) for row in shown]


@router.get("/updates/versions", response_model=list[VersionPublic], responses=PAGED_RESPONSES)
def list_versions(
    *, request: Request, response: Response, admin: AdminUser, session: SessionDep, page: PageDep
) -> list[VersionPublic]:
    """Per agent version, newest first: the devices running it, updating to it (with their step)
    and those that failed or rolled back (with the reason they gave); revoked devices left out."""
    lines = updates.version_lines(session)
    page.describe(request, response, len(lines))
    return [
        VersionPublic(
            version=line.version,
            uploaded=line.bundle is not None,
            running=len(line.running),
            running_devices=line.running,
            updating=[DeviceStepPublic(**vars(s)) for s in line.updating],
            failed=[DeviceStepPublic(**vars(s)) for s in line.failed],
        )
        for line in page.slice_of(lines)
    ]


@router.put("/devices/{device_id}/cohort", response_model=DeviceCohortPublic)
def set_cohort(
    *,
    device_id: DeviceIdPath,
    body: CohortIn,
    request: Request,
    admin: AdminUser,
    state: StateDep,
    session: SessionDep,
) -> DeviceCohortPublic:
    """Put the device in a cohort (null: in none); a rollout to that cohort takes it at once."""
    try:
        device = updates.set_cohort(session, device_id, body.cohort)
    except updates.UpdateRefused as exc:
        raise _refused(exc) from None
    audit(session, request, admin, "update", "device_cohort", resource_id=device_id)
    publish_after_commit(state, session, [device_id])
    return DeviceCohortPublic(device_id=device.id, cohort=device.cohort)


@router.get(
    "/device/updates/{sha256}",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/x-tar": {}}, "description": "the bundle"},
        206: {"content": {"application/x-tar": {}}, "description": "the part asked for (Range)"},
        416: {"description": "the range asked for is not within the bundle"},
    },
)
def fetch_bundle(
    *, sha256: Sha256Path, request: Request, state: StateDep, session: SessionDep
) -> Response:
    """The bundle named ``sha256``, to a device presenting its client certificate (as background
    files: 401 without one, 403 revoked, 404 unknown). ``Range: bytes=N-`` resumes a download
    (206 with ``Content-Range``; 416 beyond the end). Audited once per download: the request that
    starts at byte 0."""
    device_id = requesting_device(state, session, request)
    store = updates.BundleStore.for_settings(state.settings)
    if store.file(sha256) is None:
        raise ApiError(404, f"no update bundle {sha256} on this server")
    if _starts_at_zero(request.headers.get("range")):
        audit_device_fetch(session, request, device_id, "agent_bundle", sha256)
    return FileResponse(
        store.path_for(sha256),
        media_type="application/x-tar",
        headers={"Cache-Control": "private, max-age=31536000, immutable"},
    )


def _starts_at_zero(header: str | None) -> bool:
    """Whether a request reads a bundle from its start (no range, or one from byte 0): a new
    download, where a resumed one asks from where it stopped."""
    if header is None:
        return True
    first = header.removeprefix("bytes=").split(",")[0].strip()
    return first.startswith("0-")
