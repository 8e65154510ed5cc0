"""``/patients``: identity (encrypted at rest), clinician links, and a clinician's view of their
own patients: sessions, safety events, dose, adherence, and the desired state they set.

One module of some 540 lines: every route under one patient shares its access rule (a linked
clinician, else 404) and its audit; the rules themselves live in the services it calls.

Access: a clinician sees and changes only patients linked to them; an admin creates patients,
links clinicians, archives and restores patients (``patient_archive``) and may read identity;
auditors see none of it (they read ``/audit``). An unlinked patient is a 404, not a 403: whether a
patient exists is patient data. Every read and write here adds an audit row in the same
transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from resonera.common.errors import VersionConflict
from resonera.common.ids import new_id
from resonera.common.prescription import PrescribedProgram
from resonera.server import crud, patient_archive, prescriptions
from resonera.server.api.deps import (
    AdminOrClinician,
    AdminUser,
    ClinicianUser,
    PatientId,
    SessionDep,
    Since,
    StateDep,
    Until,
    own_patient,
)
from resonera.server.api.errors import ApiError
from resonera.server.api.paging import PAGED_RESPONSES, PageDep
from resonera.server.audit import audit
from resonera.server.desired import config_document
from resonera.server.models import ClinicianPatientRow, DeviceDesiredRow, PatientRow, UserRow
from resonera.server.schemas import (
    INT32_MAX,
    AdherenceReport,
    DesiredIn,
    DesiredPublic,
    DoseReport,
    Limits,
    LinkIn,
    PatientCreate,
    PatientPublic,
    PatientUpdate,
    ProgramRef,
    SafetyEventPublic,
    SessionPublic,
    Text,
)
from resonera.server.security import now_utc

router = APIRouter(prefix="/patients", tags=["patients"])


def _set_identity(state: StateDep, patient: PatientRow, name: str, birth: str, notes: str) -> None:
    cipher = state.cipher
    patient.name_enc = cipher.encrypt(name, patient_id=patient.id, field="name")
    patient.birth_date_enc = cipher.encrypt(birth, patient_id=patient.id, field="birth_date")
    patient.notes_enc = cipher.encrypt(notes, patient_id=patient.id, field="notes")


@router.post("", response_model=PatientPublic, status_code=status.HTTP_201_CREATED)
def create_patient(
    *,
    body: PatientCreate,
    user: AdminOrClinician,
    state: StateDep,
    session: SessionDep,
    request: Request,
) -> PatientPublic:
    """A new patient; a clinician who creates one is linked to them."""
    now = now_utc()
    patient = PatientRow(
        id=new_id(), name_enc="", birth_date_enc="", notes_enc="", created_at=now, updated_at=now
    )
    _set_identity(state, patient, body.name, body.birth_date.isoformat(), body.notes)
    session.add(patient)
    if user.role == "clinician":
        assert user.id is not None
        session.flush()
        session.add(ClinicianPatientRow(user_id=user.id, patient_id=patient.id, created_at=now))
    audit(
        session, request, user, "create", "patient", resource_id=patient.id, patient_id=patient.id
    )
    session.commit()
    return crud.patient_public(session, state.cipher, patient)


@router.get("", response_model=list[PatientPublic], responses=PAGED_RESPONSES)
def list_patients(
    *,
    user: AdminOrClinician,
    state: StateDep,
    session: SessionDep,
    request: Request,
    response: Response,
    page: PageDep,
    archived: Annotated[
        bool, Query(description="include archived patients (left out by default)")
    ] = False,
) -> list[PatientPublic]:
    """A clinician's own patients; all patients for an admin. Archived patients only with
    ``archived=true``."""
    query = select(PatientRow)
    if user.role == "clinician":
        assert user.id is not None
        mine = crud.clinician_patient_ids(session, user.id, include_archived=archived)
        query = query.where(col(PatientRow.id).in_(mine))
    elif not archived:
        query = query.where(col(PatientRow.archived_at).is_(None))
    page.describe(request, response, crud.count_rows(session, query))
    rows = session.exec(
        query.order_by(col(PatientRow.id)).offset(page.offset).limit(page.limit)
    ).all()
    out = [crud.patient_public(session, state.cipher, p) for p in rows]
    for patient in rows:
        audit(
            session, request, user, "read", "patient", resource_id=patient.id, patient_id=patient.id
        )
    session.commit()
    return out


@router.get("/{patient_id}", response_model=PatientPublic)
def get_patient(
    *,
    patient_id: PatientId,
    user: AdminOrClinician,
    state: StateDep,
    session: SessionDep,
    request: Request,
) -> PatientPublic:
    patient = own_patient(session, user, patient_id)
    out = crud.patient_public(session, state.cipher, patient)
    audit(session, request, user, "read", "patient", resource_id=patient_id, patient_id=patient_id)
    session.commit()
    return out


@router.patch("/{patient_id}", response_model=PatientPublic)
def update_patient(
    *,
    patient_id: PatientId,
    body: PatientUpdate,
    user: AdminOrClinician,
    state: StateDep,
    session: SessionDep,
    request: Request,
) -> PatientPublic:
    patient = own_patient(session, user, patient_id)
    current = crud.patient_public(session, state.cipher, patient)
    _set_identity(
        state,
        patient,
        body.name if body.name is not None else current.name,
        (body.birth_date or current.birth_date).isoformat(),
        body.notes if body.notes is not None else current.notes,
    )
    patient.updated_at = now_utc()
    session.add(patient)
    audit(
        session, request, user, "update", "patient", resource_id=patient_id, patient_id=patient_id
    )
    session.commit()
    return crud.patient_public(session, state.cipher, patient)


@router.post("/{patient_id}/clinicians", status_code=status.HTTP_204_NO_CONTENT)
def link_clinician(
    *, patient_id: PatientId, body: LinkIn, admin: AdminUser, session: SessionDep, request: Request
) -> None:
    """Let a clinician see and change this patient (idempotent)."""
    if session.get(PatientRow, patient_id) is None:
        raise ApiError(404, f"no patient {patient_id}")
    clinician = session.get(UserRow, body.user_id)
    if clinician is None or clinician.role != "clinician":
        raise ApiError(404, f"no clinician {body.user_id}")
    if session.get(ClinicianPatientRow, (body.user_id, patient_id)) is None:
        session.add(
            ClinicianPatientRow(user_id=body.user_id, patient_id=patient_id, created_at=now_utc())
        )
    audit(
        session,
        request,
        admin,
        "link",
        "clinician_patient",
        resource_id=str(body.user_id),
        patient_id=patient_id,
    )
    session.commit()


@router.delete("/{patient_id}/clinicians/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
def unlink_clinician(
    *,
    patient_id: PatientId,
    user_id: Annotated[int, Path(ge=1, le=INT32_MAX)],
    admin: AdminUser,
    session: SessionDep,
    request: Request,
) -> None:
    link = session.get(ClinicianPatientRow, (user_id, patient_id))
    if link is None:
        raise ApiError(404, f"clinician {user_id} is not linked to patient {patient_id}")
    session.delete(link)
    audit(
        session,
        request,
        admin,
        "unlink",
        "clinician_patient",
        resource_id=str(user_id),
        patient_id=patient_id,
    )
    session.commit()


def _archive_change(
    change: str, patient_id: str, admin: AdminUser, session: SessionDep, request: Request
) -> patient_archive.PatientArchiveState:
    patient = session.get(PatientRow, patient_id)
    if patient is None:
        raise ApiError(404, f"no patient {patient_id}")
    do = patient_archive.archive if change == "archive" else patient_archive.restore
    try:
        do(session, patient, now_utc())
    except patient_archive.ArchiveRefused as exc:
        raise ApiError(409, str(exc)) from None
    audit(session, request, admin, change, "patient", resource_id=patient_id, patient_id=patient_id)
    session.commit()
    return patient_archive.PatientArchiveState(
        patient_id=patient_id, archived_at=patient.archived_at
    )


@router.post("/{patient_id}/archive", response_model=patient_archive.PatientArchiveState)
def archive_patient(
    *, patient_id: PatientId, admin: AdminUser, session: SessionDep, request: Request
) -> patient_archive.PatientArchiveState:
    """Archive a patient whose treatment is over: left out of the clinicians' lists, the cohort
    and ``GET /patients`` (unless ``archived=true``), given no new device; every record kept,
    exports work. 409 while a device is assigned to them (end the assignment first: archiving
    ends none) or when archived already."""
    return _archive_change("archive", patient_id, admin, session, request)


@router.post("/{patient_id}/restore", response_model=patient_archive.PatientArchiveState)
def restore_patient(
    *, patient_id: PatientId, admin: AdminUser, session: SessionDep, request: Request
) -> patient_archive.PatientArchiveState:
    """Bring an archived patient back into care, as they were; 409 when not archived."""
    return _archive_change("restore", patient_id, admin, session, request)


# -- a clinician's clinical view -------------------------------------------------------------


@router.get("/{patient_id}/sessions", response_model=list[SessionPublic], responses=PAGED_RESPONSES)
def patient_sessions(
    *,
    patient_id: PatientId,
    user: ClinicianUser,
    session: SessionDep,
    request: Request,
    response: Response,
    page: PageDep,
    since: Since = None,
    until: Until = None,
    program: Annotated[Text | None, Query(max_length=120)] = None,
) -> Any:
    """The patient's sessions, newest first; filter by start time (``from``, ``to``) and program."""
    own_patient(session, user, patient_id)
    total = crud.count_sessions(
        session, patient_ids=[patient_id], program=program, since=since, until=until
    )
    page.describe(request, response, total)
    rows = crud.list_sessions(
        session,
        patient_ids=[patient_id],
        program=program,
        since=since,
        until=until,
        limit=page.limit,
        offset=page.offset,
    )
    audit(session, request, user, "read", "sessions", patient_id=patient_id)
    session.commit()
    return rows  # FastAPI validates them into SessionPublic once (response_model)


@router.get(
    "/{patient_id}/safety-events",
    response_model=list[SafetyEventPublic],
    responses=PAGED_RESPONSES,
)
def patient_safety_events(
    *,
    patient_id: PatientId,
    user: ClinicianUser,
    session: SessionDep,
    request: Request,
    response: Response,
    page: PageDep,
    since: Since = None,
    until: Until = None,
    event_type: Annotated[Text | None, Query(alias="type", max_length=64)] = None,
) -> Any:
    """The patient's safety events, newest first; filter by device time and type."""
    own_patient(session, user, patient_id)
    total = crud.count_events(
        session, patient_id=patient_id, event_type=event_type, since=since, until=until
    )
    page.describe(request, response, total)
    rows = crud.list_events(
        session,
        patient_id=patient_id,
        event_type=event_type,
        since=since,
        until=until,
        limit=page.limit,
        offset=page.offset,
    )
    audit(session, request, user, "read", "safety_events", patient_id=patient_id)
    session.commit()
    return rows


@router.get("/{patient_id}/dose", response_model=DoseReport)
def patient_dose(
    *,
    patient_id: PatientId,
    user: ClinicianUser,
    session: SessionDep,
    request: Request,
    days: Annotated[int, Query(ge=1, le=366)] = 7,
) -> DoseReport:
    """Daily dose (fraction of the weekly allowance, mode 1: 80 dBA for 40 h = 1.0) for the last
    ``days`` UTC days, each with its rolling 7-day sum, and what remains of the allowance."""
    own_patient(session, user, patient_id)
    report = crud.dose_report(
        session, patient_id=patient_id, today=crud.utc_today(now_utc()), days=days
    )
    audit(session, request, user, "read", "dose", patient_id=patient_id)
    session.commit()
    return report


@router.get("/{patient_id}/adherence", response_model=AdherenceReport)
def patient_adherence(
    *,
    patient_id: PatientId,
    user: ClinicianUser,
    state: StateDep,
    session: SessionDep,
    request: Request,
    weeks: Annotated[int, Query(ge=1, le=52)] = 4,
) -> AdherenceReport:
    """Sessions done per week (Monday first, UTC) against the prescribed ``sessions_per_week``."""
    own_patient(session, user, patient_id)
    current = state.desired.current(session, patient_id)
    report = crud.adherence_report(
        session,
        patient_id=patient_id,
        today=crud.utc_today(now_utc()),
        weeks=weeks,
        per_week=current.sessions_per_week if current is not None else 0,
    )
    audit(session, request, user, "read", "adherence", patient_id=patient_id)
    session.commit()
    return report


def _desired_public(
    state: StateDep, session: SessionDep, patient_id: str, response: Response
) -> DesiredPublic:
    current = state.desired.current(session, patient_id)
    version = current.version if current is not None else 0
    devices = session.exec(
        select(DeviceDesiredRow).where(DeviceDesiredRow.patient_id == patient_id)
    ).all()
    response.headers["ETag"] = f'"{version}"'
    doc = config_document(current)
    now = now_utc()
    return DesiredPublic(
        patient_id=patient_id,
        version=version,
        profile=doc["profile"],
        limits=Limits.model_validate(doc["limits"]),
        programs=prescriptions.program_states(session, patient_id, version, doc["programs"], now),
        sessions_per_week=doc["sessions_per_week"],
        created_by=current.created_by if current is not None else None,
        created_at=current.created_at if current is not None else None,
        devices={d.device_id: d.version for d in devices},
        capabilities=prescriptions.device_capabilities(
            session, state.desired.devices_of(session, patient_id, now)
        ),
    )


@router.get("/{patient_id}/desired", response_model=DesiredPublic)
def get_desired(
    *,
    patient_id: PatientId,
    user: ClinicianUser,
    state: StateDep,
    session: SessionDep,
    request: Request,
    response: Response,
) -> DesiredPublic:
    """The patient's profile, limits and programs; ``ETag`` is the version to send in If-Match."""
    own_patient(session, user, patient_id)
    out = _desired_public(state, session, patient_id, response)
    audit(session, request, user, "read", "desired_state", patient_id=patient_id)
    session.commit()
    return out


def _if_match_version(value: str | None) -> int:
    if value is None:
        raise ApiError(428, 'send If-Match with the ETag from GET (e.g. If-Match: "3")')
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit() or len(text) > 9:
        raise ApiError(409, f"If-Match {value!r} names no version of this patient's state")
    return int(text)


def _prescribed(
    state: StateDep,
    session: SessionDep,
    patient_id: str,
    refs: list[ProgramRef],
    *,
    config: dict[str, Any],
    now: datetime,
) -> list[PrescribedProgram]:
    """The entries of ``refs``, checked under the profile ``config`` makes the device enforce
    and against what the patient's devices reported they can play; 422 naming the program."""
    try:
        return prescriptions.prescribe_for_patient(
            session,
            refs,
            config=config,
            patient_id=patient_id,
            desired=state.desired,
            store=state.backgrounds,
            now=now,
        )
    except prescriptions.ProfileUnenforceable as exc:
        raise ApiError(
            422,
            f"profile: the patient's device would refuse it, so no program can be checked: {exc}",
        ) from None
    except prescriptions.PrescriptionInvalid as exc:
        raise ApiError(
            422,
            str(exc),
            details={"program": exc.program, "library_id": exc.library_id, "reason": exc.reason},
        ) from None


@router.put("/{patient_id}/desired", response_model=DesiredPublic)
def set_desired(
    *,
    patient_id: PatientId,
    body: DesiredIn,
    user: ClinicianUser,
    state: StateDep,
    session: SessionDep,
    request: Request,
    response: Response,
    if_match: Annotated[str | None, Header(max_length=64)] = None,
) -> DesiredPublic:
    """A new version of the patient's profile, limits, prescribed programs (library ids, each
    with a version or the latest) and weekly sessions; signed and published (retained) to each
    device the patient uses now. ``If-Match`` must carry the current version (428 without it,
    409 when someone else changed it first); a program that cannot be prescribed is a 422
    naming it and why."""
    expected = _if_match_version(if_match)
    own_patient(session, user, patient_id)
    assert user.id is not None
    now = now_utc()
    values: dict[str, Any] = {
        "profile": body.profile,
        "limits": body.limits.model_dump(),
        "sessions_per_week": body.sessions_per_week,
    }
    values["programs"] = [
        entry.model_dump(mode="json")
        for entry in _prescribed(state, session, patient_id, body.programs, config=values, now=now)
    ]
    try:
        _row, outgoing = state.desired.set_audited(
            session,
            request,
            user,
            patient_id=patient_id,
            expected_version=expected,
            values=values,
            now=now,
        )
        session.commit()
    except VersionConflict as exc:
        raise ApiError(
            409,
            f"the desired state changed meanwhile (now version {exc.current}); reload it",
            details={"current_version": exc.current},
        ) from None
    except IntegrityError:
        session.rollback()
        raise ApiError(409, "the desired state changed meanwhile; reload it") from None
    state.desired.publish(outgoing)
    return _desired_public(state, session, patient_id, response)
