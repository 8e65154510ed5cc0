"""The FHIR export as a dashboard download (``/patients/{id}/fhir.json``): the API's
``export_fhir`` called as it is, for the cookie session, after the page's ownership check (a
clinician's own patients; another's, or an unknown id, is the 403 page), audited as the API audits
it. The CSV downloads live beside the outcomes pages (``web/outcomes.py``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from resonera.server.api.deps import PatientId, SessionDep, StateDep
from resonera.server.api.routes import exports as api_exports
from resonera.server.web.auth import ClinicianPage, own_patient_page

router = APIRouter(include_in_schema=False)


@router.get("/patients/{patient_id}/fhir.json")
def fhir_download(
    *,
    request: Request,
    patient_id: PatientId,
    web: ClinicianPage,
    state: StateDep,
    session: SessionDep,
) -> JSONResponse:
    """All of the patient's record as one FHIR R4 Bundle, saved as a file."""
    own_patient_page(session, web, patient_id)
    bundle = api_exports.export_fhir(
        patient_id=patient_id,
        user=web.user,
        state=state,
        session=session,
        request=request,
        since=None,
        until=None,
    )
    bundle.headers["Content-Disposition"] = f'attachment; filename="fhir-{patient_id}.json"'
    bundle.headers["Cache-Control"] = "no-store"
    return bundle
