"""A patient's report to print (``/patients/{id}/report?days=``): one page that Chromium prints to
a clean PDF with its print stylesheet: the summary, the dose chart (an SVG drawn here, so it prints
without a script), sessions, adherence per week, before → after change per program, the safety
events, and the sign-off (the clinician's name, their email when an admin set none, and the
export time).

Every figure is the patient page's and the outcomes page's own (``views.patient_view``, the API's
outcomes route); reading the report adds their audit rows and one ``export`` row of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Annotated, Final, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from resonera.server import crud
from resonera.server.api.deps import PatientId, SessionDep, StateDep
from resonera.server.api.routes import outcomes as api_outcomes
from resonera.server.audit import audit
from resonera.server.schemas import DoseDay
from resonera.server.security import now_utc
from resonera.server.web.auth import ClinicianPage, own_patient_page
from resonera.server.web.glance import ATTENTION_EVENTS
from resonera.server.web.render import render
from resonera.server.web.views import PERIODS, TIMELINE_MAX, patient_view

router = APIRouter(include_in_schema=False)
#: Safety events printed one by one (those needing attention first); the rest are counted.
EVENTS_PRINTED: Final = 60
#: The dose chart's drawing box (SVG user units; it scales to the page's width).
CHART_W: Final = 720.0
CHART_H: Final = 220.0
_LEFT: Final = 44.0
_BOTTOM: Final = 24.0
_TOP: Final = 8.0


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    title: str


@dataclass(frozen=True)
class DoseChart:
    """The dose chart as SVG shapes: a bar per day, the rolling 7-day line, the allowance line,
    the y ticks (percent) and the first, middle and last days under the x axis."""

    bars: tuple[Bar, ...]
    rolling: str
    allowance_y: float
    y_ticks: tuple[tuple[float, str], ...]
    #: Where, what and how anchored (SVG ``text-anchor``).
    x_labels: tuple[tuple[float, str, str], ...]
    width: float = CHART_W
    height: float = CHART_H
    left: float = _LEFT
    bottom: float = CHART_H - _BOTTOM


def dose_chart(days: Sequence[DoseDay], allowance: float) -> DoseChart:
    """The chart of ``days`` (oldest first), scaled to the larger of 110 % of the allowance and
    the highest value; the x axis is the period, one slot per day."""
    top = max([allowance * 1.1, *(d.dose_fraction for d in days), *(d.rolling_7d for d in days)])
    top = top if top > 0 else 1.0
    plot_w = CHART_W - _LEFT - 4
    plot_h = CHART_H - _BOTTOM - _TOP
    slot = plot_w / max(1, len(days))

    def y(value: float) -> float:
        return _TOP + plot_h * (1 - value / top)

    bars = tuple(
        Bar(
            x=_LEFT + i * slot + slot * 0.15,
            y=y(d.dose_fraction),
            width=slot * 0.7,
            height=plot_h * d.dose_fraction / top,
            title=f"{d.day.isoformat()}: {d.dose_fraction * 100:.2f} %",
        )
        for i, d in enumerate(days)
    )
    rolling = " ".join(
        f"{_LEFT + (i + 0.5) * slot:.1f},{y(d.rolling_7d):.1f}" for i, d in enumerate(days)
    )
    # Ticks at a round step (in percent: 10, 20, 25, 50, 100, ...), four or five of them.
    step = next(
        s / 100 for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000) if s / 100 >= top / 5
    )
    ticks = tuple(
        (y(k * step), f"{k * step * 100:.0f} %") for k in range(int(top / step + 1e-9) + 1)
    )
    # The first, the middle and the last day, each kept inside the box.
    picked = sorted({0, len(days) // 2, len(days) - 1}) if days else []
    labels = tuple(
        (
            _LEFT + (i + 0.5) * slot if 0 < i < len(days) - 1 else _LEFT if i == 0 else CHART_W - 4,
            days[i].day.isoformat(),
            "start" if i == 0 else "end" if i == len(days) - 1 else "middle",
        )
        for i in picked
    )
    return DoseChart(bars, rolling, y(allowance), ticks, labels)


@router.get("/patients/{patient_id}/report")
def report_page(
    *,
    request: Request,
    patient_id: PatientId,
    web: ClinicianPage,
    state: StateDep,
    session: SessionDep,
    days: Annotated[Literal["7", "30", "90"], Query()] = "30",
) -> HTMLResponse:
    patient = own_patient_page(session, web, patient_id)
    now = now_utc()
    view = patient_view(session, state.cipher, patient, now, int(days))
    outcomes = api_outcomes.patient_outcomes(
        patient_id=patient.id,
        user=web.user,
        state=state,
        session=session,
        request=request,
        days=int(days),
    )
    # The period's events, those needing attention first (a stable sort: newest first in each).
    events = sorted(
        crud.list_events(
            session,
            patient_id=patient.id,
            event_type=None,
            since=datetime.combine(outcomes.first_day, time(), UTC),
            until=None,
            limit=TIMELINE_MAX,
            offset=0,
        ),
        key=lambda row: row.event_type not in ATTENTION_EVENTS,
    )
    total_events = sum(g.count for g in view.event_groups)
    for resource in ("patient", "sessions", "safety_events", "dose"):
        audit(
            session,
            request,
            web.user,
            "read",
            resource,
            resource_id=patient.id if resource == "patient" else "",
            patient_id=patient.id,
        )
    audit(session, request, web.user, "export", "report", patient_id=patient.id)
    session.commit()
    weeks = outcomes.adherence.weeks
    return render(
        "report.html",
        {
            "web": web,
            "title": f"Report · {view.patient.name}",
            "view": view,
            "outcomes": outcomes,
            "chart": dose_chart(view.dose.days, view.dose.allowance_fraction),
            "events": events[:EVENTS_PRINTED],
            "events_left": max(0, total_events - EVENTS_PRINTED),
            "done": sum(w.done for w in weeks),
            "prescribed": sum(w.prescribed for w in weeks),
            "periods": PERIODS,
            "question_texts": {str(q["id"]): str(q.get("text", "")) for q in outcomes.questions},
            "exported_at": now,
        },
    )
