"""Session effectiveness: what patients report before and after sessions, how they keep to their
prescription, and what they were exposed to, aggregated in the database.

The heavy lifting is SQL (SQLAlchemy Core, the same statements on SQLite and PostgreSQL): answers
and sessions are grouped per UTC day, per question and per program, and only those small groups
come back; rolling means and confidence intervals are computed from them here.

A before → after *change* pairs the answers to the same question around the same session; it is
signed by the question's direction (``better``), so a positive change is always an improvement.
Below ``MIN_OBSERVATIONS`` pairs no interval is given and the change is flagged: nobody should
read meaning into three data points.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final

from scipy.stats import t as student_t
from sqlalchemy import Date, and_, case, cast, func, select, true
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session

from resonera.common.dose import REFERENCE_DBA
from resonera.common.profile import CheckInQuestion, parse_checkins
from resonera.engine.audio.levels import SILENCE_DBFS
from resonera.server import crud
from resonera.server.crud import dose_fraction_per_second
from resonera.server.models import (
    CheckInRow,
    ClinicianPatientRow,
    PatientRow,
    SessionRow,
    table_of,
)
from resonera.server.schemas import (
    Change,
    CohortOutcomes,
    CohortProgram,
    ExposureDay,
    PatientOutcomes,
    ProgramChange,
    QuestionTrend,
    TrendDay,
)

__all__ = [
    "MIN_OBSERVATIONS",
    "change_summary",
    "cohort_outcomes",
    "ear_level_dba",
    "is_silent",
    "patient_outcomes",
    "profile_questions",
    "t95",
]

MIN_OBSERVATIONS: Final = 5
TOO_FEW: Final = f"too few observations (n < {MIN_OBSERVATIONS})"
ROLLING_DAYS: Final = 7

_checkins = table_of(CheckInRow)
_sessions = table_of(SessionRow)
_links = table_of(ClinicianPatientRow)
_patients = table_of(PatientRow)


def t95(df: int) -> float:
    """The two-sided 95 % quantile of Student's t with ``df`` degrees of freedom (exact, not a
    table's next row: a rounded-up df gives intervals too narrow)."""
    return float(student_t.ppf(0.975, df))


def is_silent(dbfs: float) -> bool:
    """A level the meter saw no signal for: ``SILENCE_DBFS`` is a placeholder, not a level."""
    return dbfs <= SILENCE_DBFS


def ear_level_dba(dose_fraction: float, played_s: float) -> float | None:
    """The equivalent continuous A-weighted level at the ear (LAeq, dB(A)) over ``played_s``
    seconds that used ``dose_fraction`` of the weekly allowance: the device meters the dose at the
    ear through its calibration, so this is what the person heard, not the signal's dBFS. None when
    nothing was heard (no dose, or nothing played)."""
    if dose_fraction <= 0.0 or played_s <= 0.0:
        return None
    return REFERENCE_DBA[1] + 10.0 * math.log10(
        dose_fraction / played_s / dose_fraction_per_second(REFERENCE_DBA[1])
    )


def change_summary(n: int, total: float, squares: float) -> Change:
    """Mean and (n ≥ 5) 95 % t-interval from a count, a sum and a sum of squares."""
    if n == 0:
        return Change(n=0, mean=None, ci95_low=None, ci95_high=None, too_few=True, note=TOO_FEW)
    mean = total / n
    if n < MIN_OBSERVATIONS:
        return Change(n=n, mean=mean, ci95_low=None, ci95_high=None, too_few=True, note=TOO_FEW)
    # Sums of squares lose digits to cancellation; a variance cannot be below zero.
    variance = max(0.0, (squares - total * total / n) / (n - 1))
    half = t95(n - 1) * math.sqrt(variance / n)
    return Change(n=n, mean=mean, ci95_low=mean - half, ci95_high=mean + half, too_few=False)


def profile_questions(profile: dict[str, Any] | None) -> tuple[CheckInQuestion, ...]:
    """The check-in questions of a stored profile; none when it has none or they are invalid
    (the analytics still show every answer stored, by question id)."""
    raw = (profile or {}).get("checkins")
    if not raw:
        return ()
    try:
        return parse_checkins(raw)
    except ValueError:
        return ()


# -- SQL pieces ------------------------------------------------------------------------------


def _utc_day(column: Any, dialect: str) -> Any:
    """The UTC calendar day of a stored time. SQLite keeps naive UTC text; PostgreSQL keeps a
    ``timestamptz`` whose date depends on the session's zone unless converted to UTC first."""
    if dialect == "sqlite":
        return func.date(column)
    return cast(func.timezone("UTC", column), Date)


def _as_date(value: Any) -> date:
    return date.fromisoformat(value) if isinstance(value, str) else value


def _window(first: date, last: date) -> tuple[datetime, datetime]:
    return (
        datetime.combine(first, time(), tzinfo=UTC),
        datetime.combine(last + timedelta(days=1), time(), tzinfo=UTC),
    )


def _pairs(where: ColumnElement[bool]) -> Any:
    """Per (session, question): the before and the after answer and the signed change, for the
    answered (not skipped) check-ins matching ``where``."""
    c = _checkins.c
    before = func.max(case((c.phase == "before", c.value)))
    after = func.max(case((c.phase == "after", c.value)))
    # ``higher_is_better`` is the question's, the same for both answers of a pair.
    higher = func.max(case((c.higher_is_better == true(), 1), else_=0))
    return (
        select(
            c.session_id,
            c.question_id,
            case((higher == 1, after - before), else_=before - after).label("change"),
        )
        .where(where, c.value.is_not(None))
        .group_by(c.session_id, c.question_id)
        .having(and_(before.is_not(None), after.is_not(None)))
        .subquery("pairs")
    )


def _session_programs(where: ColumnElement[bool]) -> Any:
    s = _sessions.c
    return select(s.session_id, *_program_key(s)).where(where).distinct().subquery("programs")


def _program_key(columns: Any) -> tuple[Any, Any, Any]:
    """What outcomes are grouped by: a program's name, and for a prescribed one its library id
    and version, so two versions of one program are compared apart (like with like)."""
    return (columns.program_name, columns.program_library_id, columns.program_version)


def _program_order(name: str, library_id: str | None, version: int | None) -> tuple[Any, ...]:
    # In Python: the databases order NULL differently (SQLite first, PostgreSQL last).
    return (name, library_id or "", version or 0)


# -- per patient ------------------------------------------------------------------------------


def patient_outcomes(
    session: Session,
    *,
    patient_id: str,
    today: date,
    days: int,
    sessions_per_week: int,
    profile: dict[str, Any] | None,
) -> PatientOutcomes:
    """The patient's last ``days`` UTC days up to ``today``: adherence per ISO week, check-in
    trends, before → after change per program and question, exposure per day."""
    dialect = session.get_bind().dialect.name
    first = today - timedelta(days=days - 1)
    start, end = _window(first, today)
    questions = profile_questions(profile)
    texts = {q.id: q.text for q in questions}
    c, s = _checkins.c, _sessions.c

    # Trends: the rolling mean of the first days needs the 6 days before the window.
    trend_start = start - timedelta(days=ROLLING_DAYS - 1)
    day = _utc_day(c.answered_at, dialect).label("day")
    trend_rows = session.execute(
        select(
            c.question_id,
            c.phase,
            day,
            func.count(c.value),
            func.sum(c.value),
            func.sum(case((c.skipped == true(), 1), else_=0)),
        )
        .where(c.patient_id == patient_id, c.answered_at >= trend_start, c.answered_at < end)
        .group_by(c.question_id, c.phase, day)
    ).all()
    trends = _trends(trend_rows, first, texts)

    # Before → after per program: the sessions of the window (and the day before, whose after
    # answers may fall in it) give each pair its program.
    pairs = _pairs(and_(c.patient_id == patient_id, c.answered_at >= start, c.answered_at < end))
    programs = _session_programs(
        and_(
            s.patient_id == patient_id,
            s.started_at >= start - timedelta(days=1),
            s.started_at < end,
        )
    )
    change_rows = session.execute(
        select(
            *_program_key(programs.c),
            pairs.c.question_id,
            func.count(),
            func.sum(pairs.c.change),
            func.sum(pairs.c.change * pairs.c.change),
        )
        .select_from(pairs.join(programs, programs.c.session_id == pairs.c.session_id))
        .group_by(*_program_key(programs.c), pairs.c.question_id)
    ).all()
    changes = [
        ProgramChange(
            program_name=name,
            program_library_id=library_id,
            program_version=version,
            question_id=question,
            **change_summary(int(n), float(total or 0), float(squares or 0)).model_dump(),
        )
        for name, library_id, version, question, n, total, squares in sorted(
            change_rows, key=lambda row: (*_program_order(row[0], row[1], row[2]), row[3])
        )
    ]

    session_day = _utc_day(s.started_at, dialect).label("day")
    exposure_rows = session.execute(
        select(
            session_day,
            func.count(),
            func.sum(case((s.outcome == "completed", 1), else_=0)),
            func.sum(s.played_s),
            func.sum(s.dose_fraction),
            # A silent session's levels are a placeholder: averaged in, −200 dBFS drags the
            # day's mean down by tens of dB. The day's means are of the sessions that sounded.
            func.avg(case((s.rms_dbfs > SILENCE_DBFS, s.rms_dbfs))),
            func.max(case((s.peak_dbfs > SILENCE_DBFS, s.peak_dbfs))),
        )
        .where(s.patient_id == patient_id, s.started_at >= start, s.started_at < end)
        .group_by(session_day)
        .order_by(session_day)
    ).all()
    exposure = [
        ExposureDay(
            day=_as_date(d),
            sessions=int(n),
            completed=int(done or 0),
            played_s=float(played or 0),
            dose_fraction=float(dose or 0),
            mean_rms_dbfs=None if rms is None else float(rms),
            max_peak_dbfs=None if peak is None else float(peak),
        )
        for d, n, done, played, dose, rms, peak in exposure_rows
    ]

    adherence = crud.adherence_report(
        session,
        patient_id=patient_id,
        today=today,
        weeks=math.ceil(days / 7),
        per_week=sessions_per_week,
    )
    return PatientOutcomes(
        patient_id=patient_id,
        days=days,
        first_day=first,
        last_day=today,
        questions=[q.model_dump() for q in questions],
        adherence=adherence,
        trends=trends,
        programs=changes,
        exposure=exposure,
    )


def _trends(
    rows: Iterable[Sequence[Any]], first: date, texts: dict[str, str]
) -> list[QuestionTrend]:
    """Per (question, phase), the days of the window with an answer or a skip, each with the
    mean of that day and of the 7 days ending on it (every answer weighted alike)."""
    by_series: dict[tuple[str, str], dict[date, tuple[int, float, int]]] = defaultdict(dict)
    for question, phase, day, n, total, skipped in rows:
        by_series[(question, phase)][_as_date(day)] = (int(n), float(total or 0), int(skipped))
    out = []
    for (question, phase), by_day in sorted(by_series.items()):
        points = []
        for day in sorted(d for d in by_day if d >= first):
            n, total, skipped = by_day[day]
            window = [
                by_day[d]
                for d in (day - timedelta(days=k) for k in range(ROLLING_DAYS))
                if d in by_day
            ]
            window_n = sum(w[0] for w in window)
            window_total = sum(w[1] for w in window)
            points.append(
                TrendDay(
                    day=day,
                    n=n,
                    mean=total / n if n else None,
                    skipped=skipped,
                    rolling_7d_mean=window_total / window_n if window_n else None,
                    rolling_7d_n=window_n,
                )
            )
        if points:
            out.append(
                QuestionTrend(
                    question_id=question, phase=phase, text=texts.get(question, ""), days=points
                )
            )
    return out


# -- per cohort -------------------------------------------------------------------------------


def cohort_outcomes(
    session: Session, *, clinician_id: int | None, today: date, days: int
) -> CohortOutcomes:
    """Per program, over a clinician's patients (``clinician_id``; None: every patient) in the
    last ``days`` UTC days: sessions, completion, and the mean before → after improvement over
    every question (each signed by its direction), with its number of pairs. Archived patients
    are not in the cohort (their treatment is over; ``patient_archive``): neither their sessions
    and check-ins nor the count of patients."""
    first = today - timedelta(days=days - 1)
    start, end = _window(first, today)
    c, s = _checkins.c, _sessions.c

    in_care = select(_patients.c.id).where(_patients.c.archived_at.is_(None))
    cohort = (
        in_care
        if clinician_id is None
        else in_care.where(
            _patients.c.id.in_(select(_links.c.patient_id).where(_links.c.user_id == clinician_id))
        )
    )

    def of_cohort(column: Any) -> ColumnElement[bool]:
        return column.in_(cohort)  # type: ignore[no-any-return]

    patients = session.execute(select(func.count()).select_from(cohort.subquery())).scalar_one()

    usage = session.execute(
        select(
            *_program_key(s),
            func.count(func.distinct(s.patient_id)),
            func.count(),
            func.sum(case((s.outcome == "completed", 1), else_=0)),
        )
        .where(of_cohort(s.patient_id), s.started_at >= start, s.started_at < end)
        .group_by(*_program_key(s))
    ).all()

    pairs = _pairs(and_(of_cohort(c.patient_id), c.answered_at >= start, c.answered_at < end))
    programs = _session_programs(
        and_(
            of_cohort(s.patient_id),
            s.started_at >= start - timedelta(days=1),
            s.started_at < end,
        )
    )
    improvement = {
        (name, library_id, version): change_summary(int(n), float(total or 0), float(squares or 0))
        for name, library_id, version, n, total, squares in session.execute(
            select(
                *_program_key(programs.c),
                func.count(),
                func.sum(pairs.c.change),
                func.sum(pairs.c.change * pairs.c.change),
            )
            .select_from(pairs.join(programs, programs.c.session_id == pairs.c.session_id))
            .group_by(*_program_key(programs.c))
        ).all()
    }
    out = [
        CohortProgram(
            program_name=name,
            program_library_id=library_id,
            program_version=version,
            patients=int(users),
            sessions=int(n),
            completed=int(done or 0),
            completion_rate=int(done or 0) / int(n),
            improvement=improvement.get((name, library_id, version), change_summary(0, 0.0, 0.0)),
        )
        for name, library_id, version, users, n, done in sorted(
            usage, key=lambda row: (-int(row[4]), *_program_order(row[0], row[1], row[2]))
        )
    ]
    return CohortOutcomes(
        days=days, first_day=first, last_day=today, patients=int(patients), programs=out
    )
