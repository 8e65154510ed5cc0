"""Dashboard pages for session effectiveness: a patient's outcomes (adherence, check-in trends,
before → after change per program, exposure), the cohort per program, and the patient's CSV
downloads for the cookie session.

The reports and the CSV downloads are the API's own routes (``api/routes/outcomes.py``,
``api/routes/exports.py``: ``server/analytics.py``'s numbers, their audit rows), called as they are
after the page's role and ownership checks. Every chart
is drawn (``static/charts.js``) from a table on the page, which is what screen readers and
tests read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Final, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from resonera.server import analytics, crud
from resonera.server.api.deps import PatientId, SessionDep, StateDep
from resonera.server.api.routes import exports as api_exports
from resonera.server.api.routes import outcomes as api_outcomes
from resonera.server.audit import audit
from resonera.server.schemas import PatientOutcomes, PatientPublic, SkippedCheckIn, TrendDay
from resonera.server.web.auth import ClinicianPage, own_patient_page, require_page
from resonera.server.web.render import render
from resonera.server.web.web_user import WebUser

router = APIRouter(include_in_schema=False)
Period = Annotated[Literal["30", "90"], Query()]
OUTCOME_PERIODS: Final = (30, 90)
CohortPage = Annotated[WebUser, Depends(require_page("clinician", "admin"))]


@dataclass(frozen=True)
class TrendRow:
    """One day of a question: the before and the after answers (None: none that day)."""

    day: date
    before: TrendDay | None
    after: TrendDay | None

    @property
    def skipped(self) -> int:
        return sum(point.skipped for point in (self.before, self.after) if point is not None)


@dataclass(frozen=True)
class QuestionView:
    id: str
    #: '' for a question no longer in the profile (its answers still count).
    text: str
    low_label: str
    high_label: str
    better: str
    rows: tuple[TrendRow, ...]
    #: Its skips in the period with why each was skipped, oldest first.
    skips: tuple[SkippedCheckIn, ...] = ()


@dataclass(frozen=True)
class OutcomesView:
    patient: PatientPublic
    report: PatientOutcomes
    questions: tuple[QuestionView, ...]

    def question_text(self, question_id: str) -> str:
        found = next((q for q in self.questions if q.id == question_id), None)
        return found.text if found is not None and found.text else question_id


def question_views(report: PatientOutcomes) -> tuple[QuestionView, ...]:
    """The profile's questions in its order, then any other question answered in the period."""
    points: dict[tuple[str, str], dict[date, TrendDay]] = {
        (t.question_id, t.phase): {point.day: point for point in t.days} for t in report.trends
    }
    asked = {str(q["id"]): q for q in report.questions}
    skips: dict[str, list[SkippedCheckIn]] = {}
    for skip in report.skipped_checkins:
        skips.setdefault(skip.question_id, []).append(skip)
    ids = list(asked) + sorted({q for q, _ in points} - set(asked))
    out = []
    for question_id in ids:
        before = points.get((question_id, "before"), {})
        after = points.get((question_id, "after"), {})
        rows = tuple(
            TrendRow(day, before.get(day), after.get(day)) for day in sorted({*before, *after})
        )
        profile = asked.get(question_id, {})
        out.append(
            QuestionView(
                id=question_id,
                text=str(profile.get("text", "")),
                low_label=str(profile.get("low_label", "")),
                high_label=str(profile.get("high_label", "")),
                better=str(profile.get("better", "higher")),
                rows=rows,
                skips=tuple(skips.get(question_id, ())),
            )
        )
    return tuple(out)


@router.get("/patients/{patient_id}/outcomes")
def outcomes_page(
    *,
    request: Request,
    patient_id: PatientId,
    web: ClinicianPage,
    state: StateDep,
    session: SessionDep,
    days: Period = "30",
) -> HTMLResponse:
    patient = own_patient_page(session, web, patient_id)
    # The API's route as it is (the report, its audit row); the page checked ownership first.
    report = api_outcomes.patient_outcomes(
        patient_id=patient.id,
        user=web.user,
        state=state,
        session=session,
        request=request,
        days=int(days),
    )
    view = OutcomesView(
        patient=crud.patient_public(session, state.cipher, patient),
        report=report,
        questions=question_views(report),
    )
    # The page shows who it is about: a read of the patient too, as on the patient page.
    audit(
        session, request, web.user, "read", "patient", resource_id=patient.id, patient_id=patient.id
    )
    session.commit()
    return render(
        "outcomes.html",
        {
            "web": web,
            "title": f"Outcomes · {view.patient.name}",
            "view": view,
            "periods": OUTCOME_PERIODS,
            "min_n": analytics.MIN_OBSERVATIONS,
        },
    )


@router.get("/cohort")
def cohort_page(
    *,
    request: Request,
    web: CohortPage,
    session: SessionDep,
    days: Period = "90",
) -> HTMLResponse:
    report = api_outcomes.cohort_outcomes(
        user=web.user, session=session, request=request, days=int(days)
    )
    return render(
        "cohort.html",
        {
            "web": web,
            "title": "Cohort",
            "report": report,
            "periods": OUTCOME_PERIODS,
            "min_n": analytics.MIN_OBSERVATIONS,
        },
    )


# -- CSV downloads -----------------------------------------------------------------------------


def _download(export: Callable[..., StreamingResponse]) -> Callable[..., StreamingResponse]:
    """The API's CSV export ``export`` as a dashboard download (cookie session, the 403 page)."""

    def download(
        *,
        request: Request,
        patient_id: PatientId,
        web: ClinicianPage,
        state: StateDep,
        session: SessionDep,
    ) -> StreamingResponse:
        own_patient_page(session, web, patient_id)
        return export(
            patient_id=patient_id, user=web.user, state=state, session=session, request=request
        )

    return download


router.get("/patients/{patient_id}/checkins.csv")(_download(api_outcomes.export_checkins_csv))
router.get("/patients/{patient_id}/sessions.csv")(_download(api_exports.export_sessions_csv))
