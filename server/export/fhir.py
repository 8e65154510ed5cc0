"""A patient's record for a period as a FHIR R4 ``Bundle`` (type ``collection``).

What goes in, and why each maps where it does:

- ``Patient``: the (decrypted) name and birth date, and our id as an identifier.
- ``Device``: every device the patient used in the period (their assignments), with its status.
- ``Procedure`` per session: the program as the code text (with its library version), a prescribed
  program's library id and version as a second coding (``urn:resonera:program``, code
  ``<library id>/v<version>``: two versions are two codes), ``performedPeriod`` from start to end,
  ``status`` ``completed`` (it played to its end) or ``stopped`` (stopped or a fault, with the reason
  in ``statusReason``), and the device in ``usedReference``.
- Two ``Observation``s per session, ``partOf`` it: the level at the ear as LAeq in dB(A) and the
  dose as % of the weekly allowance. The devices report the dose; the LAeq is the device's when
  the server has it, otherwise derived from the dose (mode 1 is an energy dose, 80 dB(A) for 40 h
  is 100 %, so LAeq = 80 + 10·log10(dose · 40 h / played time)), and absent for a silent session.
- ``QuestionnaireResponse`` per session and phase (before/after) with check-in answers: one item
  per question (``linkId`` the question id), an integer answer, or no answer when skipped (the
  item's ``text`` then says why: "skipped: no answer in time"); it is ``partOf`` the session's
  ``Procedure`` when the session is in the bundle.
- ``AdverseEvent`` per safety event: its type and cause, the device as the suspect entity.
- ``AuditEvent`` per audit row about the patient: who read or changed what, when, from where.

Resources reference each other by ``urn:uuid:`` full URLs; ids are UUIDv5 of what they stand for,
so exporting the same data twice gives the same ids. The bundle is checked against the official R4
JSON schema in the tests (``schemas/fhir.schema.json``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

from resonera.common.routine_events import is_routine_type
from resonera.server.analytics import ear_level_dba
from resonera.server.crud import WEEKLY_ALLOWANCE
from resonera.server.models import AuditRow, CheckInRow, DeviceRow, SafetyEventRow, SessionRow

__all__ = ["PatientIdentity", "build_bundle", "questionnaire_responses", "session_laeq_dba"]

#: Our ids as FHIR identifiers, and the namespace of the UUIDv5 resource ids.
ID_SYSTEM: Final = "urn:resonera"
_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://resonera.example/fhir")
UCUM: Final = "http://unitsofmeasure.org"
#: Codes of our own where no standard code fits (sound therapy sessions and their exposure).
CODES: Final = "urn:resonera:codes"
OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
AUDIT_TYPE: Final = "http://dicom.nema.org/resources/ontology/DCM"
AUDIT_ACTION: Final = {"create": "C", "read": "R", "update": "U", "delete": "D", "export": "R"}


@dataclass(frozen=True)
class PatientIdentity:
    id: str
    name: str
    birth_date: date


def _uuid(kind: str, key: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{kind}/{key}"))


def _ref(kind: str, key: str) -> dict[str, str]:
    return {"reference": f"urn:uuid:{_uuid(kind, key)}"}


def _instant(value: datetime) -> str:
    return value.isoformat()


def _entry(kind: str, key: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "fullUrl": f"urn:uuid:{_uuid(kind, key)}",
        "resource": {"resourceType": kind, "id": _uuid(kind, key), **resource},
    }


def _patient(identity: PatientIdentity) -> dict[str, Any]:
    return _entry(
        "Patient",
        identity.id,
        {
            "identifier": [{"system": f"{ID_SYSTEM}:patient", "value": identity.id}],
            "name": [{"text": identity.name}],
            "birthDate": identity.birth_date.isoformat(),
        },
    )


def _device(device: DeviceRow, patient_id: str) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "identifier": [{"system": f"{ID_SYSTEM}:device", "value": device.id}],
        "status": "inactive" if device.revoked else "active",
        "deviceName": [{"name": device.id, "type": "user-friendly-name"}],
        "patient": _ref("Patient", patient_id),
    }
    if device.note:
        resource["note"] = [{"text": device.note}]
    return _entry("Device", device.id, resource)


def session_laeq_dba(row: SessionRow) -> float | None:
    """The session's LAeq at the ear, from its dose (``analytics.ear_level_dba``, as the dashboard
    shows it); None when silent."""
    return ear_level_dba(row.dose_fraction, row.played_s)


def _quantity(value: float, unit: str, code: str) -> dict[str, Any]:
    return {"value": round(value, 3), "unit": unit, "system": UCUM, "code": code}


def _observation(
    row: SessionRow, patient_id: str, what: str, display: str, quantity: dict[str, Any]
) -> dict[str, Any]:
    return _entry(
        "Observation",
        f"{row.device_id}/{row.message_id}/{what}",
        {
            "status": "final",
            "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "exam"}]}],
            "code": {"coding": [{"system": CODES, "code": what, "display": display}]},
            "subject": _ref("Patient", patient_id),
            "partOf": [_ref("Procedure", f"{row.device_id}/{row.message_id}")],
            "device": _ref("Device", row.device_id),
            "effectivePeriod": {
                "start": _instant(row.started_at),
                "end": _instant(row.ended_at),
            },
            "valueQuantity": quantity,
        },
    )


def _session(row: SessionRow, patient_id: str) -> list[dict[str, Any]]:
    key = f"{row.device_id}/{row.message_id}"
    coding = [{"system": CODES, "code": "sound-session", "display": "Sound session"}]
    program = row.program_name
    if row.program_library_id is not None and row.program_version is not None:
        program = f"{row.program_name} v{row.program_version}"
        coding.append(
            {
                "system": f"{ID_SYSTEM}:program",
                "code": f"{row.program_library_id}/v{row.program_version}",
                "display": program,
            }
        )
    procedure: dict[str, Any] = {
        "identifier": [{"system": f"{ID_SYSTEM}:session", "value": row.session_id}],
        "status": "completed" if row.outcome == "completed" else "stopped",
        "code": {"coding": coding, "text": f"Sound session: {program}"},
        "subject": _ref("Patient", patient_id),
        "performedPeriod": {"start": _instant(row.started_at), "end": _instant(row.ended_at)},
        "usedReference": [_ref("Device", row.device_id)],
        "note": [
            {
                "text": f"program {program} (digest {row.program_digest}); played "
                f"{row.played_s:.0f} s of {row.planned_s:.0f} s"
                + ("; simulation, without the safety MCU" if row.simulation else "")
            }
        ],
    }
    if row.outcome != "completed":
        procedure["statusReason"] = {"text": f"{row.outcome}: {row.reason}".rstrip(": ")}
    entries = [_entry("Procedure", key, procedure)]
    laeq = session_laeq_dba(row)
    if laeq is not None:
        entries.append(
            _observation(
                row, patient_id, "laeq", "Level at the ear, LAeq", _quantity(laeq, "dB(A)", "dB")
            )
        )
    dose = 100.0 * row.dose_fraction / WEEKLY_ALLOWANCE
    entries.append(
        _observation(
            row,
            patient_id,
            "dose",
            "Sound dose, % of the weekly allowance",
            _quantity(dose, "%", "%"),
        )
    )
    return entries


def _adverse_event(row: SafetyEventRow, patient_id: str) -> dict[str, Any]:
    cause = row.body.get("cause") if isinstance(row.body, dict) else None
    text = f"{row.event_type}: {cause}" if isinstance(cause, str) and cause else row.event_type
    return _entry(
        "AdverseEvent",
        f"{row.device_id}/{row.message_id}",
        {
            "identifier": {"system": f"{ID_SYSTEM}:safety-event", "value": row.message_id},
            "actuality": "actual",
            "event": {
                "coding": [
                    {"system": f"{CODES}:safety-event", "code": row.event_type or "unknown"}
                ],
                "text": text or "safety event",
            },
            "subject": _ref("Patient", patient_id),
            "date": _instant(row.device_time),
            "recordedDate": _instant(row.received_at),
            "suspectEntity": [{"instance": _ref("Device", row.device_id)}],
        },
    )


def _audit_event(row: AuditRow, patient_id: str) -> dict[str, Any]:
    agent: dict[str, Any] = {
        "who": {
            "identifier": {"system": f"{ID_SYSTEM}:user", "value": str(row.actor_id)},
            "display": row.actor_email or "system",
        },
        "requestor": True,
    }
    if row.actor_role:
        agent["role"] = [{"text": row.actor_role}]
    if row.client:
        agent["network"] = {"address": row.client, "type": "2"}
    return _entry(
        "AuditEvent",
        str(row.id),
        {
            "type": {"system": AUDIT_TYPE, "code": "110110", "display": "Patient Record"},
            "subtype": [{"system": f"{CODES}:audit", "code": f"{row.action}:{row.resource}"}],
            "action": AUDIT_ACTION.get(row.action, "E"),
            "recorded": _instant(row.at),
            "outcome": "0",
            "outcomeDesc": f"{row.action} {row.resource} {row.method} {row.path}".strip(),
            "agent": [agent],
            "source": {"observer": {"display": "Resonera server"}},
            "entity": [
                {
                    "what": _ref("Patient", patient_id),
                    "description": f"{row.resource} {row.resource_id}".strip(),
                }
            ],
        },
    )


def questionnaire_responses(
    checkins: Sequence[CheckInRow], patient_id: str, sessions: Sequence[SessionRow] = ()
) -> list[dict[str, Any]]:
    """One ``QuestionnaireResponse`` per (device, session, phase), in the order of its first
    answer; ``sessions`` are those in the bundle, referenced by ``partOf``."""
    procedures = {row.session_id: f"{row.device_id}/{row.message_id}" for row in sessions}
    groups: dict[tuple[str, str, str], list[CheckInRow]] = {}
    for row in sorted(checkins, key=lambda r: (r.answered_at, r.id or 0)):
        groups.setdefault((row.device_id, row.session_id, row.phase), []).append(row)
    out = []
    for (device_id, session_id, phase), rows in groups.items():
        items = []
        for row in rows:
            item: dict[str, Any] = {"linkId": row.question_id}
            if row.value is not None:
                item["answer"] = [{"valueInteger": row.value}]
            else:  # no answer; its text says why (declined, or the device could not ask)
                item["text"] = f"skipped: {row.skip_reason}" if row.skip_reason else "skipped"
            items.append(item)
        resource: dict[str, Any] = {
            "identifier": {"system": f"{ID_SYSTEM}:checkin", "value": f"{session_id}/{phase}"},
            "questionnaire": f"{CODES}:checkin-{phase}",
            "status": "completed",
            "subject": _ref("Patient", patient_id),
            "authored": _instant(rows[-1].answered_at),
            "source": _ref("Patient", patient_id),
            "item": items,
        }
        if session_id in procedures:
            resource["partOf"] = [_ref("Procedure", procedures[session_id])]
        out.append(_entry("QuestionnaireResponse", f"{device_id}/{session_id}/{phase}", resource))
    return out


def build_bundle(
    *,
    patient: PatientIdentity,
    devices: Sequence[DeviceRow],
    sessions: Sequence[SessionRow],
    events: Sequence[SafetyEventRow],
    audit: Sequence[AuditRow],
    now: datetime,
    checkins: Sequence[CheckInRow] = (),
) -> dict[str, Any]:
    """The bundle, in the order above (oldest first within each kind)."""
    entries = [_patient(patient)]
    entries += [_device(device, patient.id) for device in devices]
    for row in sessions:
        entries += _session(row, patient.id)
    entries += questionnaire_responses(checkins, patient.id, sessions)
    # only real safety events: the routine hand-overs old agents sent are kept, tagged, not
    # adverse events (docs/safety-events.md)
    entries += [
        _adverse_event(row, patient.id) for row in events if not is_routine_type(row.event_type)
    ]
    entries += [_audit_event(row, patient.id) for row in audit]
    # No ``total``: FHIR allows it only in search and history bundles.
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": _instant(now)},
        "type": "collection",
        "timestamp": _instant(now),
        "entry": entries,
    }
