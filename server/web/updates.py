"""The admin's Updates page (``/updates``, issue 25): per agent version the devices running it,
updating to it (with their step) and failed (with the reason each gave, each device linked to its
row on the devices page); per safety-MCU firmware version the devices running it (their telemetry's
``firmware_version``) and those whose update to it failed; the rollouts, with a form to start
one and buttons to pause, resume and cancel; the uploaded bundles, with an upload form; and a form
to put a device in a cohort.

Every change goes through the API's route functions (``api/routes/updates.py``: the same checks,
audit rows and re-issued documents); a refusal shows the page again with the API's reason. The
upload is a multipart form (a browser's file field): its file is copied into the bundle store's
streamed writer, so it is bounded and checked exactly as the API's raw upload.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlmodel import Session

from resonera.common.agent_update import MAX_BUNDLE_BYTES
from resonera.server import updates
from resonera.server.api.deps import SessionDep, StateDep
from resonera.server.api.errors import ApiError
from resonera.server.api.routes import updates as api_updates
from resonera.server.models import AgentBundleRow, DeviceRow, RolloutRow
from resonera.server.web.admin_forms import FormRefused, checked, field_errors, through_api
from resonera.server.web.auth import AdminPage, check_csrf
from resonera.server.web.device_views import latest_telemetry
from resonera.server.web.render import PAGE_HEADERS, render
from resonera.server.web.web_user import WebUser

router = APIRouter(include_in_schema=False)
#: The upload form's action; ``BodyLimit`` lets its body through unbuffered (``app.py``).
UPLOAD_PATH: Final = "/updates/bundles"
_CHUNK: Final = 1024 * 1024
#: What a change's redirect says (fixed texts; the rollout or bundle is named from its row).
DONE: Final = {
    "uploaded": "The bundle is checked and kept: version {name}.",
    "created": "Rollout of version {name} started: the devices it targets are asked to update.",
    "pause": "Rollout of version {name} paused: the devices not yet switched lose their target.",
    "resume": "Rollout of version {name} resumed.",
    "cancel": "Rollout of version {name} cancelled.",
    "cohort": "Device {name} is in its new cohort.",
}


def _page(
    web: WebUser,
    session: Session,
    *,
    notice: str = "",
    status: int = 200,
    errors: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
) -> HTMLResponse:
    rollouts = updates.list_rollouts(session)
    bundles = updates.list_bundles(session)
    devices = updates.device_facts(session)
    return render(
        "updates.html",
        {
            "web": web,
            "title": "Updates",
            "versions": updates.version_lines(session),
            "firmware": updates.firmware_lines(session, _firmware_of(session, devices)),
            "rollouts": rollouts,
            "counts": updates.rollout_counts(session, rollouts),
            "bundles": bundles,
            "devices": [d for d in devices if not d.revoked],
            "cohorts": sorted({d.cohort for d in devices if d.cohort}),
            "notice": notice,
            "errors": errors or {},
            "form": {
                "version": bundles[0].version if bundles else "",
                "target": "percentage",
                "percentage": "10",
                "cohort": "",
                "threshold": "20",
                "min_failures": str(updates.DEFAULT_MIN_FAILURES),
                **(form or {}),
            },
            "max_bundle_mib": MAX_BUNDLE_BYTES // (1024 * 1024),
        },
        status=status,
    )


def _firmware_of(session: Session, devices: list[updates.DeviceFacts]) -> dict[str, str | None]:
    """Each device's (not revoked) safety-MCU firmware, as its latest telemetry says."""
    found: dict[str, str | None] = {}
    for device in devices:
        if device.revoked:
            continue
        _row, body = latest_telemetry(session, device.device_id)
        version = body.get("firmware_version") if isinstance(body, dict) else None
        found[device.device_id] = version if isinstance(version, str) and version else None
    return found


def _go(done: str, name: str) -> RedirectResponse:
    query = urlencode({"done": done, "name": name})
    return RedirectResponse(f"/updates?{query}", status_code=303, headers=dict(PAGE_HEADERS))


def _named(session: Session, done: str, name: str) -> str:
    """The notice for ``done``, naming what the database knows by ``name`` (never the address's
    text as it came)."""
    if done not in DONE:
        return ""
    if done == "cohort":
        known = session.get(DeviceRow, name)
        shown = known.id if known is not None else ""
    elif done in ("uploaded", "created"):
        bundle = session.get(AgentBundleRow, name)
        shown = bundle.version if bundle is not None else ""
    else:
        rollout = session.get(RolloutRow, name)
        shown = rollout.version if rollout is not None else ""
    return DONE[done].format(name=shown) if shown else ""


@router.get("/updates")
def updates_page(
    web: AdminPage,
    session: SessionDep,
    done: Annotated[str, Query(max_length=16)] = "",
    name: Annotated[str, Query(max_length=64)] = "",
) -> HTMLResponse:
    return _page(web, session, notice=_named(session, done, name))


@router.post(UPLOAD_PATH, response_model=None)
async def upload_bundle(
    *,
    request: Request,
    web: AdminPage,
    state: StateDep,
    session: SessionDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    bundle: Annotated[UploadFile | None, File()] = None,
) -> Response:
    """The upload form: the file checked and kept as ``POST /api/v1/updates/bundles`` does."""
    check_csrf(web, csrf_token)
    if bundle is None or not bundle.filename:
        return _page(web, session, status=400, errors={"bundle": "Choose a bundle file to upload."})
    store = updates.BundleStore.for_settings(state.settings)
    try:
        with store.writer() as writer:
            while chunk := await bundle.read(_CHUNK):
                writer.write(chunk)
            held = writer.finish()
        kept = api_updates.keep_bundle(session, request, web.user, store, held)
    except updates.UpdateRefused as exc:
        return _page(web, session, status=400, errors={"bundle": f"{_sentence(str(exc))}"})
    except ApiError as exc:
        return _page(web, session, status=exc.status, errors={"bundle": _sentence(exc.message)})
    return _go("uploaded", kept.version)


def _sentence(text: str) -> str:
    text = text.removeprefix("bundle: ")
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _threshold(text: str) -> float:
    try:
        percent = float(text.strip())
    except ValueError:
        raise FormRefused(400, {"threshold": "The threshold is a percentage, as 20."}) from None
    return percent / 100


@router.post("/updates/rollouts", response_model=None)
def create_rollout(
    *,
    request: Request,
    web: AdminPage,
    state: StateDep,
    session: SessionDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    version: Annotated[str, Form(max_length=64)] = "",
    target: Annotated[Literal["cohort", "percentage"], Form()] = "percentage",
    cohort: Annotated[str, Form(max_length=64)] = "",
    percentage: Annotated[str, Form(max_length=8)] = "",
    threshold: Annotated[str, Form(max_length=8)] = "20",
    min_failures: Annotated[str, Form(max_length=8)] = "2",
) -> Response:
    """Start a rollout as ``POST /api/v1/updates/rollouts`` does."""
    check_csrf(web, csrf_token)
    form = {
        "version": version,
        "target": target,
        "cohort": cohort,
        "percentage": percentage,
        "threshold": threshold,
        "min_failures": min_failures,
    }
    try:
        share = _threshold(threshold)
        body = checked(
            lambda: api_updates.RolloutCreate.model_validate(
                {
                    "version": version.strip(),
                    "cohort": cohort.strip() if target == "cohort" else None,
                    "percentage": percentage.strip() if target == "percentage" else None,
                    "failure_threshold": share,
                    "min_failures": min_failures.strip(),
                }
            )
        )
        made = through_api(
            lambda: api_updates.create_rollout(
                body=body, request=request, admin=web.user, state=state, session=session
            )
        )
    except FormRefused as exc:
        session.rollback()
        errors = {
            ("threshold" if k == "failure_threshold" else k): v for k, v in exc.errors.items()
        }
        return _page(web, session, status=exc.status, errors=errors, form=form)
    return _go("created", made.version)


@router.post("/updates/rollouts/{rollout_id}", response_model=None)
def change_rollout(
    *,
    rollout_id: api_updates.RolloutIdPath,
    request: Request,
    web: AdminPage,
    state: StateDep,
    session: SessionDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    action: Annotated[Literal["pause", "resume", "cancel"], Form()] = "pause",
) -> Response:
    """Pause, resume or cancel, as ``POST /api/v1/updates/rollouts/{id}/{action}`` does."""
    check_csrf(web, csrf_token)
    try:
        moved = through_api(
            lambda: api_updates.change_rollout(
                rollout_id=rollout_id,
                action=action,
                request=request,
                admin=web.user,
                state=state,
                session=session,
            )
        )
    except FormRefused as exc:
        session.rollback()
        return _page(web, session, status=exc.status, errors={"rollouts": exc.errors[""]})
    return _go(action, moved.id)


@router.post("/updates/cohort", response_model=None)
def set_cohort(
    *,
    request: Request,
    web: AdminPage,
    state: StateDep,
    session: SessionDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    device_id: Annotated[str, Form(max_length=64)] = "",
    cohort: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """Put a device in a cohort (empty: in none), as ``PUT /api/v1/devices/{id}/cohort`` does."""
    check_csrf(web, csrf_token)
    form = {"device_id": device_id, "new_cohort": cohort}
    try:
        try:
            body = api_updates.CohortIn(cohort=cohort.strip() or None)
        except ValidationError as exc:
            raise FormRefused(400, {"new_cohort": next(iter(field_errors(exc).values()))}) from None
        through_api(
            lambda: api_updates.set_cohort(
                device_id=device_id.strip(),
                body=body,
                request=request,
                admin=web.user,
                state=state,
                session=session,
            )
        )
    except FormRefused as exc:
        session.rollback()
        errors = {("new_cohort" if k == "" else k): v for k, v in exc.errors.items()}
        return _page(web, session, status=exc.status, errors=errors, form=form)
    return _go("cohort", device_id.strip())
