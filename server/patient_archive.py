"""Archiving a patient (issue 23): an admin sets aside a patient whose treatment is over.

What archiving does: ``PatientRow.archived_at`` is set. An archived patient is left out of the
clinicians' patient list and attention list (``crud.clinician_patient_ids``), of ``GET /patients``
unless asked for, and of the admin's list unless "show archived" is ticked; they can be given no
new device. What it does not do: delete or change anything else. Sessions, safety events, check-ins,
the prescription history, exports and the audit log stay as they were, and a restore brings the
patient back as they were.

A patient who still holds a device after today (an assignment with no end, or one ending after
today in the server's time zone, or starting later) is not archived: the admin ends the assignment
first, its last day today at the latest (the admin's form offers today), or cancels one that has
not begun (``PATCH /assignments/{id}``). Archiving ends none by
itself, because ending one decides whose record
the device's next sessions and safety events join, and a device still in someone's hands must
not drop out of every clinician's view as a side effect.

The rules only; the API's routes (``api/routes/patients.py``) audit and commit, and the dashboard
calls those routes.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel
from sqlmodel import Session, col, select

from resonera.server.models import AssignmentRow, PatientRow
from resonera.server.schemas import day_start


class ArchiveRefused(Exception):
    """The patient cannot be archived or restored now; the message says why and what to do (it
    names no patient: the caller knows whom they asked about, and a page shows names, not ids)."""


class PatientArchiveState(BaseModel):
    """What ``POST /patients/{id}/archive`` and ``/restore`` answer: the patient and when they
    were archived (None: in care)."""

    patient_id: str
    archived_at: datetime | None


def held_assignments(session: Session, patient_id: str, now: datetime) -> list[AssignmentRow]:
    """The patient's assignments not over by the end of ``now``'s day in the server's time zone
    (running on, or starting later), first first."""
    tonight = day_start(now.astimezone().date() + timedelta(days=1))
    return list(
        session.exec(
            select(AssignmentRow)
            .where(
                AssignmentRow.patient_id == patient_id,
                (col(AssignmentRow.valid_to).is_(None)) | (col(AssignmentRow.valid_to) > tonight),
            )
            .order_by(col(AssignmentRow.valid_from))
        ).all()
    )


def archive(session: Session, patient: PatientRow, now: datetime) -> None:
    """Archive ``patient`` as of ``now`` (added to ``session``, not committed). Raises
    ``ArchiveRefused`` when they are archived already or still hold a device."""
    if patient.archived_at is not None:
        raise ArchiveRefused(
            f"the patient is archived already (since {patient.archived_at.isoformat()})"
        )
    held = held_assignments(session, patient.id, now)
    if held:
        devices = ", ".join(sorted({a.device_id for a in held}))
        raise ArchiveRefused(
            f"the patient still has device {devices} assigned after today: end the assignment "
            "first, its last day today at the latest, or cancel it if it has not begun (archiving "
            "ends none, so that no device leaves its patient unnoticed)"
        )
    patient.archived_at = now
    patient.updated_at = now
    session.add(patient)


def restore(session: Session, patient: PatientRow, now: datetime) -> None:
    """Bring an archived ``patient`` back into care (added to ``session``, not committed)."""
    if patient.archived_at is None:
        raise ArchiveRefused("the patient is not archived")
    patient.archived_at = None
    patient.updated_at = now
    session.add(patient)


def assignment_refusal(patient: PatientRow) -> str | None:
    """Why ``patient`` may be given no device now (None: they may): an archived patient is
    restored first, so that no device sends its sessions to a record nobody looks at."""
    if patient.archived_at is None:
        return None
    return (
        f"the patient is archived (since {patient.archived_at.date().isoformat()}): "
        "restore them before assigning a device"
    )
