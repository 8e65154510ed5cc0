"""Dashboard pages (server-rendered, cookie sessions with CSRF protection).

``install(app)`` adds the pages, the static files (``/static``: our CSS and script, the vendored
uPlot) and the HTML error pages. Clinicians see their own patients; every read of patient data adds
an audit row, as in the API; another clinician's patient is the 403 page (and so is an unknown
patient id: whether a patient exists is itself patient data).
"""

from __future__ import annotations

import json
from functools import partial
from typing import Annotated, Any, Final, Literal, cast

from fastapi import APIRouter, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from resonera.common.desired import DesiredStateRejected
from resonera.common.errors import VersionConflict
from resonera.common.profile import MAX_CHECKIN_QUESTIONS, parse_checkins
from resonera.server import crud, programs
from resonera.server.api.deps import AppState, PatientId, SessionDep, StateDep
from resonera.server.audit import audit
from resonera.server.desired import config_document, enforced_profile
from resonera.server.models import PatientRow
from resonera.server.prescriptions import (
    PrescriptionInvalid,
    check_entries,
    device_capabilities,
    stored_entries,
)
from resonera.server.schemas import DesiredIn
from resonera.server.security import now_utc
from resonera.server.web import admin, glance
from resonera.server.web import auth as web_auth
from resonera.server.web import outcomes as web_outcomes
from resonera.server.web import programs as web_programs
from resonera.server.web import report as web_report
from resonera.server.web import updates as web_updates
from resonera.server.web.auth import ClinicianPage, check_csrf, own_patient_page
from resonera.server.web.prescription_editor import (
    MAX_DRAFT_PROGRAMS,
    Draft,
    DraftInvalid,
    Refusal,
    SaveRefused,
    apply_action,
    editor_view,
    parse_draft,
    save_draft,
)
from resonera.server.web.render import (
    PAGE_HEADERS,
    STATIC_DIR,
    PageError,
    install_page_errors,
    render,
)
from resonera.server.web.views import (
    PERIODS,
    SORT_KEYS,
    SortKey,
    patient_lines,
    patient_view,
    posted_questions,
    question_error,
)
from resonera.server.web.web_user import WebUser

router = APIRouter(include_in_schema=False)
_LIMIT_FIELDS: Final = (
    "max_level_dba",
    "max_session_minutes",
    "max_sessions_per_day",
    "weekly_dose_fraction",
)


@router.get("/patients")
def patients_page(
    *,
    request: Request,
    web: ClinicianPage,
    state: StateDep,
    session: SessionDep,
    sort: Annotated[SortKey, Query()] = "name",
    order: Annotated[Literal["asc", "desc"], Query(alias="dir")] = "asc",
) -> HTMLResponse:
    """The clinician's patients, sorted; searching is a POST (``patients_search``)."""
    return _patients(request, web, state, session, search="", sort=sort, order=order)


@router.post("/patients/search")
def patients_search(
    *,
    request: Request,
    web: ClinicianPage,
    state: StateDep,
    session: SessionDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    q: Annotated[str, Form(max_length=200)] = "",
    sort: Annotated[SortKey, Form()] = "name",
    order: Annotated[Literal["asc", "desc"], Form(alias="dir")] = "asc",
    by: Annotated[str, Form(max_length=40)] = "",
) -> HTMLResponse:
    """The patients list searched by name: posted, so a patient's name never reaches an
    address, a browser's history or an access log. ``by`` ("key:asc|desc", a column header's
    button) sorts the search again."""
    check_csrf(web, csrf_token)
    if by:
        key, _, direction = by.partition(":")
        if key not in SORT_KEYS or direction not in ("asc", "desc"):
            raise PageError(400, "The sort asked for is not one of the table's columns.")
        sort, order = key, cast(Literal["asc", "desc"], direction)
    return _patients(request, web, state, session, search=q, sort=sort, order=order)


def _patients(
    request: Request,
    web: WebUser,
    state: AppState,
    session: Session,
    *,
    search: str,
    sort: SortKey,
    order: Literal["asc", "desc"],
) -> HTMLResponse:
    assert web.user.id is not None
    lines = patient_lines(
        session,
        state.cipher,
        crud.clinician_patient_ids(session, web.user.id),
        now_utc(),
        search=search,
        sort=sort,
        descending=order == "desc",
    )
    for line in lines:
        audit(
            session, request, web.user, "read", "patient", resource_id=line.id, patient_id=line.id
        )
    session.commit()
    return render(
        "patients.html",
        {
            "web": web,
            "title": "Patients",
            "lines": lines,
            "attention": [line for line in lines if line.attention.reasons],
            "q": search,
            "sort": sort,
            "order": order,
            "sort_keys": SORT_KEYS,
            "thresholds": glance,
        },
    )


def _shown_again(
    request: Request, web: WebUser, state: StateDep, session: Session, patient: PatientRow
) -> partial[HTMLResponse]:
    """The patient page as a refused or conflicting post shows it again (30 days of sessions);
    the caller adds the status, errors and what was posted."""
    return partial(
        _patient_page,
        request=request,
        web=web,
        state=state,
        session=session,
        patient=patient,
        days=30,
    )


def _patient_page(
    *,
    request: Request,
    web: WebUser,
    state: StateDep,
    session: Session,
    patient: PatientRow,
    days: int,
    event_page: int = 1,
    status: int = 200,
    errors: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
    notice: str = "",
    preview: str = "",
    questions: list[dict[str, str]] | None = None,
    draft: Draft | None = None,
    q: str | None = None,
    refusal: Refusal | None = None,
) -> HTMLResponse:
    now = now_utc()
    view = patient_view(session, state.cipher, patient, now, days, event_page=event_page)
    editor = editor_view(
        session,
        patient.id,
        state.desired.current(session, patient.id),
        draft=draft,
        q=q,
        refusal=refusal,
        now=now,
    )
    library = programs.list_programs(session)
    chosen = next((row for row in library if row.id == preview), None)
    for resource in ("patient", "sessions", "safety_events", "dose", "desired_state"):
        audit(
            session,
            request,
            web.user,
            "read",
            resource,
            resource_id=patient.id if resource == "patient" else "",
            patient_id=patient.id,
        )
    session.commit()
    values = {name: str(getattr(view.limits, name)) for name in _LIMIT_FIELDS}
    values["profile"] = view.profile_json_without_checkins
    return render(
        "patient.html",
        {
            "web": web,
            "title": view.patient.name,
            "view": view,
            "periods": PERIODS,
            "errors": errors or {},
            "form": {**values, **(form or {})},
            "notice": notice,
            "library": library,
            "chosen": chosen,
            "editor": editor,
            "questions": questions if questions is not None else view.question_slots,
        },
        status=status,
    )


@router.get("/patients/{patient_id}")
def patient_page(
    *,
    request: Request,
    patient_id: PatientId,
    web: ClinicianPage,
    state: StateDep,
    session: SessionDep,
    days: Annotated[Literal["7", "30", "90"], Query()] = "30",
    events: Annotated[int, Query(ge=1, le=2**31 - 1)] = 1,
    saved: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    preview: Annotated[str, Query(max_length=36)] = "",
    draft: Annotated[Literal["", "1"], Query()] = "",
    version: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    program: Annotated[list[str] | None, Query(max_length=MAX_DRAFT_PROGRAMS)] = None,
    sessions_per_week: Annotated[str, Query(max_length=40)] = "",
    q: Annotated[str | None, Query(max_length=200)] = None,
) -> HTMLResponse:
    """The patient's page; ``events`` is the page of safety events shown, ``draft`` (with
    ``version``, ``program``, ``sessions_per_week``) a prescription being edited, ``q`` the
    library searched for a program to add."""
    patient = own_patient_page(session, web, patient_id)
    notice = f"Saved as version {saved}." if saved is not None else ""
    return _patient_page(
        request=request,
        web=web,
        state=state,
        session=session,
        patient=patient,
        days=int(days),
        event_page=events,
        notice=notice,
        preview=preview,
        draft=_draft_or_400(version, program, sessions_per_week) if draft else None,
        q=q,
    )


def _draft_or_400(version: int, fields: list[str] | None, sessions_per_week: str) -> Draft:
    try:
        return parse_draft(version, fields or [], sessions_per_week, edited=True)
    except DraftInvalid as exc:
        raise PageError(400, f"The prescription sent is not valid: {exc}.") from None


@router.post("/patients/{patient_id}/prescription", response_model=None)
def edit_prescription(
    *,
    request: Request,
    patient_id: PatientId,
    web: ClinicianPage,
    state: StateDep,
    session: SessionDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    action: Annotated[str, Form(max_length=80)] = "save",
    draft: Annotated[Literal["", "1"], Form()] = "",
    version: Annotated[int, Form(ge=0, le=2**31 - 1)] = 0,
    program: Annotated[list[str] | None, Form(max_length=MAX_DRAFT_PROGRAMS)] = None,
    sessions_per_week: Annotated[str, Form(max_length=40)] = "",
    searching: Annotated[Literal["", "1"], Form()] = "",
    q: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """One step of the prescription editor: a button that changes the draft (``action`` up,
    down, remove, newer or add) answers with the page showing the new draft; ``save`` makes it the
    patient's next version (the draft's ``version`` is the If-Match). The newer-version button of
    a prescription not being edited saves at once: moving a patient on is one click."""
    check_csrf(web, csrf_token)
    patient = own_patient_page(session, web, patient_id)
    edited = _draft_or_400(version, program, sessions_per_week)
    # The library search stays open across the steps (a form sends an empty search as nothing).
    search = q if searching else None
    if action != "save":
        try:
            edited = apply_action(session, edited, action)
        except DraftInvalid as exc:
            raise PageError(400, f"The prescription could not be changed: {exc}.") from None
        if draft or not action.startswith("newer:"):
            return RedirectResponse(
                edited.address(patient.id, search), status_code=303, headers=dict(PAGE_HEADERS)
            )
    again = _shown_again(request, web, state, session, patient)
    assert web.user.id is not None
    try:
        row, outgoing = save_draft(
            state, session, request, web.user, patient_id=patient.id, draft=edited, now=now_utc()
        )
        session.commit()
    except SaveRefused as exc:
        session.rollback()
        return again(status=exc.status, draft=edited, refusal=exc.refusal, q=search)
    except (VersionConflict, IntegrityError):
        session.rollback()
        current = state.desired.current(session, patient.id)
        message = (
            "someone else saved this patient's settings meanwhile (now version "
            f"{current.version if current is not None else 0}); this is the prescription as it "
            "is now: make your changes again"
        )
        return again(status=409, refusal=Refusal(message))
    state.desired.publish(outgoing)
    return RedirectResponse(
        f"/patients/{patient.id}?saved={row.version}#prescription",
        status_code=303,
        headers=dict(PAGE_HEADERS),
    )


@router.post("/patients/{patient_id}/limits", response_model=None)
def save_limits(
    *,
    request: Request,
    patient_id: PatientId,
    web: ClinicianPage,
    state: StateDep,
    session: SessionDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    version: Annotated[int, Form(ge=0, le=2**31 - 1)] = 0,
    max_level_dba: Annotated[str, Form(max_length=40)] = "",
    max_session_minutes: Annotated[str, Form(max_length=40)] = "",
    max_sessions_per_day: Annotated[str, Form(max_length=40)] = "",
    weekly_dose_fraction: Annotated[str, Form(max_length=40)] = "",
    profile: Annotated[str, Form(max_length=64 * 1024)] = "{}",
    checkins_form: Annotated[str, Form(max_length=1)] = "",
    checkin_id: Annotated[list[str] | None, Form(max_length=MAX_CHECKIN_QUESTIONS)] = None,
    checkin_text: Annotated[list[str] | None, Form(max_length=MAX_CHECKIN_QUESTIONS)] = None,
    checkin_low_label: Annotated[list[str] | None, Form(max_length=MAX_CHECKIN_QUESTIONS)] = None,
    checkin_high_label: Annotated[list[str] | None, Form(max_length=MAX_CHECKIN_QUESTIONS)] = None,
    checkin_when: Annotated[list[str] | None, Form(max_length=MAX_CHECKIN_QUESTIONS)] = None,
    checkin_better: Annotated[list[str] | None, Form(max_length=MAX_CHECKIN_QUESTIONS)] = None,
    checkin_remove: Annotated[list[str] | None, Form(max_length=MAX_CHECKIN_QUESTIONS)] = None,
) -> Response:
    """A new version of the patient's desired state, through the same service as the API's PUT
    (validated by the same models, signed, published); the version field is the If-Match. The
    check-in questions have fields of their own (``checkins_form``): they replace the profile's
    ``checkins``, validated as the device validates them."""
    check_csrf(web, csrf_token)
    patient = own_patient_page(session, web, patient_id)
    form = {
        "max_level_dba": max_level_dba,
        "max_session_minutes": max_session_minutes,
        "max_sessions_per_day": max_sessions_per_day,
        "weekly_dose_fraction": weekly_dose_fraction,
        "profile": profile,
    }
    errors: dict[str, str] = {}
    try:
        profile_value = json.loads(profile or "{}")
    except json.JSONDecodeError as exc:
        errors["profile"] = f"not valid JSON ({exc.msg} at line {exc.lineno})"
        profile_value = {}
    questions = None
    if checkins_form:
        columns = {
            "id": checkin_id or [],
            "text": checkin_text or [],
            "low_label": checkin_low_label or [],
            "high_label": checkin_high_label or [],
            "when": checkin_when or [],
            "better": checkin_better or [],
        }
        questions, kept, where = posted_questions(columns, set(checkin_remove or ()))
        if isinstance(profile_value, dict):
            if "checkins" in profile_value:
                errors["profile"] = (
                    "leave 'checkins' out: the check-in questions have their own fields"
                )
            else:
                try:
                    parse_checkins(kept)
                except ValueError as exc:
                    errors["checkins"] = question_error(str(exc), where)
                else:
                    if kept:
                        profile_value["checkins"] = kept
    # Both refusals show the page again, as it was posted, with the errors by their fields.
    again = _shown_again(request, web, state, session, patient)
    current = state.desired.current(session, patient.id)
    # The prescription (programs and weekly sessions: the editor's) stays as it is, its programs
    # checked again under the profile and limits this form sets.
    saved_config = config_document(current)
    kept_programs = saved_config["programs"]
    try:
        body = DesiredIn.model_validate(
            {
                "profile": profile_value,
                "limits": {name: form[name] for name in _LIMIT_FIELDS},
                "sessions_per_week": saved_config["sessions_per_week"],
            }
        )
    except ValidationError as exc:
        for err in exc.errors():
            loc = [str(part) for part in err["loc"]]
            field = loc[-1] if loc[0] == "limits" and len(loc) > 1 else loc[0]
            errors.setdefault(field, str(err["msg"]))
        body = None
    if body is not None and not errors:
        errors.update(
            _kept_programs_refused(
                state,
                session,
                patient.id,
                kept_programs,
                profile=body.profile,
                limits=body.limits.model_dump(),
            )
        )
    if errors or body is None:
        return again(
            status=400,
            errors=errors,
            form=form,
            questions=questions,
        )
    assert web.user.id is not None
    try:
        row, outgoing = state.desired.set_audited(
            session,
            request,
            web.user,
            patient_id=patient.id,
            expected_version=version,
            values={
                "profile": body.profile,
                "limits": body.limits.model_dump(),
                "programs": kept_programs,
                "sessions_per_week": body.sessions_per_week,
            },
            now=now_utc(),
        )
        session.commit()
    except (VersionConflict, IntegrityError):
        session.rollback()
        return again(
            status=409,
            errors={"version": "someone else changed these settings meanwhile; this is the latest"},
        )
    state.desired.publish(outgoing)
    return RedirectResponse(
        f"/patients/{patient.id}?saved={row.version}#limits",
        status_code=303,
        headers=dict(PAGE_HEADERS),
    )


def _kept_programs_refused(
    state: AppState,
    session: Session,
    patient_id: str,
    programs: list[Any],
    *,
    profile: dict[str, Any],
    limits: dict[str, Any],
) -> dict[str, str]:
    """Why the patient's prescribed programs could not stay under this profile and these
    limits, by field (empty: they can)."""
    entries = [e for e in stored_entries(programs) if e is not None]
    if not entries:
        return {}
    try:
        enforced = enforced_profile({"profile": profile, "limits": limits})
    except DesiredStateRejected as exc:
        return {"profile": f"the patient's device would refuse it: {exc}"}
    capabilities = device_capabilities(
        session, state.desired.devices_of(session, patient_id, now_utc())
    )
    try:
        check_entries(entries, profile=enforced, capabilities=capabilities)
    except PrescriptionInvalid as exc:
        return {"programs": f"{exc} (change the prescription first)"}
    return {}


def install(app: FastAPI) -> None:
    """The dashboard: call after ``install_error_handlers`` (its error pages wrap the API's)."""
    app.include_router(web_auth.router)
    app.include_router(router)
    app.include_router(admin.router)
    app.include_router(web_programs.router)
    app.include_router(web_outcomes.router)
    app.include_router(web_report.router)
    app.include_router(web_updates.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    install_page_errors(app)
