"""Session effectiveness: check-ins stored once, and the outcome and cohort views computed from
seeded data whose trends are known, on SQLite and PostgreSQL; the CSV and FHIR exports of the
check-ins; the check-in questions and records refuse what they should, saying where."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from factories import OUTCOME_QUESTIONS as QUESTIONS
from factories import PLAN_SKIP_REASON, checkin, outcome_plan
from fastapi.testclient import TestClient
from fhir_checks import check_fhir
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.common.errors import ConfigError, ProtocolError
from resonera.common.ids import new_id
from resonera.common.profile import parse_profile
from resonera.server.analytics import change_summary
from resonera.server.export.checkins_csv import CHECKIN_COLUMNS
from resonera.server.ingest import IngestProcessor, Received
from resonera.server.models import CheckInRow
from resonera.server.outcomes import parse_checkin, store_checkins

API = "/api/v1"


@dataclass
class Seeded:
    today: date
    #: The Mondays of the three seeded weeks, oldest first.
    mondays: list[date]


def _ingest_sessions(engine: Engine, device: str, bodies: list[dict[str, Any]]) -> None:
    envelopes = [
        Envelope.create(device=device, seq=i, kind="session", body=body)
        for i, body in enumerate(bodies)
    ]
    result = IngestProcessor(engine).process(
        [Received(topics.up(device, "session"), e.to_bytes()) for e in envelopes]
    )
    assert result.stored == len(bodies)


@pytest.fixture
def seeded(
    engine: Engine, world: Any, client: TestClient, make_body: Callable[..., dict[str, Any]]
) -> Seeded:
    """Patient A, prescribed 5 sessions a week, did 3 in each of the last three full weeks
    (Mon and Wed "calm", Fri "sleep", 20 min at 09:00 UTC). Before each: relaxation 2 + week
    (0, 1, 2) and tinnitus 8 − week; after: relaxation +2, tinnitus −1 (better: lower), except
    the first Friday's tinnitus after, skipped. The other clinician's patient did one "calm"."""
    set_profile = client.put(
        f"{API}/patients/{world.patient}/desired",
        json={"profile": {"checkins": QUESTIONS}, "sessions_per_week": 5},
        headers={**world.clinician.headers, "If-Match": '"0"'},
    )
    assert set_profile.status_code == 200, set_profile.text
    today = datetime.now(UTC).date()
    plan = outcome_plan("dev-a", today, make_body)
    mondays, bodies, records = plan.mondays, plan.bodies, plan.records
    _ingest_sessions(engine, "dev-a", bodies)
    other = make_body(
        start=datetime.combine(mondays[-1], datetime.min.time(), UTC), program_name="calm"
    )
    _ingest_sessions(engine, "dev-b", [other])
    with engine.begin() as conn:
        store_checkins(conn, "dev-a", world.patient, records, now=datetime.now(UTC))
    with Session(engine) as session:
        # Resending (a lost acknowledgement) stores nothing twice.
        store_checkins(session, "dev-a", world.patient, records[:5], now=datetime.now(UTC))
        session.commit()
        assert session.exec(select(func.count()).select_from(CheckInRow)).one() == len(records)
    return Seeded(today, mondays)


def test_patient_outcomes_match_the_seeded_trends(
    client: TestClient, world: Any, seeded: Seeded
) -> None:
    response = client.get(
        f"{API}/patients/{world.patient}/outcomes",
        params={"days": 28},
        headers=world.clinician.headers,
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["first_day"] == (seeded.today - timedelta(days=27)).isoformat()
    assert [q["id"] for q in report["questions"]] == ["relax", "tinnitus"]

    weeks = {w["week_start"]: (w["done"], w["prescribed"]) for w in report["adherence"]["weeks"]}
    assert len(weeks) == 4
    for monday in seeded.mondays:
        assert weeks[monday.isoformat()] == (3, 5)

    trends = {(t["question_id"], t["phase"]): t for t in report["trends"]}
    assert set(trends) == {
        ("relax", "before"),
        ("relax", "after"),
        ("tinnitus", "before"),
        ("tinnitus", "after"),
    }
    relax = trends[("relax", "before")]
    assert relax["text"] == "How relaxed do you feel?"
    assert [(d["day"], d["mean"], d["n"]) for d in relax["days"]] == [
        ((monday + timedelta(days=k)).isoformat(), 2.0 + week, 1)
        for week, monday in enumerate(seeded.mondays)
        for k in (0, 2, 4)
    ]
    # The second Monday's 7 days hold the first week's Wednesday and Friday (2) and itself (3).
    second_monday = relax["days"][3]
    assert second_monday["rolling_7d_n"] == 3
    assert second_monday["rolling_7d_mean"] == pytest.approx((2 + 2 + 3) / 3)
    tinnitus_after = trends[("tinnitus", "after")]["days"]
    assert tinnitus_after[2]["skipped"] == 1 and tinnitus_after[2]["mean"] is None
    # the skip is listed with why: here the device could not ask (not the person declining)
    [skip] = report["skipped_checkins"]
    assert (skip["question_id"], skip["phase"], skip["skip_reason"]) == (
        "tinnitus",
        "after",
        PLAN_SKIP_REASON,
    )
    assert skip["answered_at"].startswith(tinnitus_after[2]["day"])

    changes = {(p["program_name"], p["question_id"]): p for p in report["programs"]}
    calm_relax = changes[("calm", "relax")]
    assert (calm_relax["n"], calm_relax["mean"], calm_relax["too_few"]) == (6, 2.0, False)
    assert calm_relax["ci95_low"] == pytest.approx(2.0)
    assert calm_relax["ci95_high"] == pytest.approx(2.0)
    # Lower is better for tinnitus: a drop of 1 is an improvement of +1.
    assert changes[("calm", "tinnitus")]["mean"] == 1.0
    sleep_tinnitus = changes[("sleep", "tinnitus")]
    assert (sleep_tinnitus["n"], sleep_tinnitus["too_few"]) == (2, True)
    assert sleep_tinnitus["ci95_low"] is None
    assert "too few observations" in sleep_tinnitus["note"]

    exposure = report["exposure"]
    assert len(exposure) == 9
    first = exposure[0]
    assert first["day"] == seeded.mondays[0].isoformat()
    assert (first["sessions"], first["completed"], first["played_s"]) == (1, 1, 1200.0)
    assert first["dose_fraction"] == pytest.approx(0.01)
    assert (first["mean_rms_dbfs"], first["max_peak_dbfs"]) == (-20.0, -6.0)


def test_a_short_window_keeps_rolling_means_from_before_it(
    client: TestClient, world: Any, seeded: Seeded
) -> None:
    last_friday = seeded.mondays[-1] + timedelta(days=4)
    days = (seeded.today - last_friday).days + 1
    report = client.get(
        f"{API}/patients/{world.patient}/outcomes",
        params={"days": days},
        headers=world.admin.headers,
    ).json()
    relax = next(
        t for t in report["trends"] if (t["question_id"], t["phase"]) == ("relax", "before")
    )
    assert [d["day"] for d in relax["days"]] == [last_friday.isoformat()]
    assert relax["days"][0]["rolling_7d_n"] == 3  # Mon, Wed and Fri of that week
    assert relax["days"][0]["rolling_7d_mean"] == pytest.approx(4.0)


def test_cohort_outcomes_per_program(client: TestClient, world: Any, seeded: Seeded) -> None:
    mine = client.get(
        f"{API}/cohort/outcomes", params={"days": 28}, headers=world.clinician.headers
    )
    assert mine.status_code == 200, mine.text
    report = mine.json()
    assert report["patients"] == 1
    programs = {p["program_name"]: p for p in report["programs"]}
    assert list(programs) == ["calm", "sleep"]  # most sessions first
    calm = programs["calm"]
    assert (calm["patients"], calm["sessions"], calm["completed"]) == (1, 6, 6)
    assert calm["completion_rate"] == 1.0
    # 6 relaxation pairs (+2) and 6 tinnitus pairs (+1).
    assert calm["improvement"]["n"] == 12
    assert calm["improvement"]["mean"] == pytest.approx(1.5)
    assert calm["improvement"]["too_few"] is False
    low, high = calm["improvement"]["ci95_low"], calm["improvement"]["ci95_high"]
    half = 2.200985160091639 * math.sqrt(12 * 0.25 / 11 / 12)  # t(11) · s / √n with s² = 3/11
    assert (low, high) == (pytest.approx(1.5 - half), pytest.approx(1.5 + half))
    sleep = programs["sleep"]
    assert (sleep["sessions"], sleep["improvement"]["n"]) == (3, 5)

    everyone = client.get(
        f"{API}/cohort/outcomes", params={"days": 28}, headers=world.admin.headers
    ).json()
    calm_all = next(p for p in everyone["programs"] if p["program_name"] == "calm")
    assert (everyone["patients"], calm_all["patients"], calm_all["sessions"]) == (2, 2, 7)

    theirs = client.get(f"{API}/cohort/outcomes", headers=world.other_clinician.headers).json()
    assert [(p["program_name"], p["sessions"]) for p in theirs["programs"]] == [("calm", 1)]
    assert theirs["programs"][0]["improvement"] == {
        "n": 0,
        "mean": None,
        "ci95_low": None,
        "ci95_high": None,
        "too_few": True,
        "note": "too few observations (n < 5)",
    }


def test_an_archived_patient_leaves_the_cohort(
    client: TestClient, world: Any, seeded: Seeded
) -> None:
    admin = world.admin.headers
    held = client.get(
        f"{API}/assignments", params={"patient_id": world.other_patient}, headers=admin
    ).json()
    for assignment in held:
        ended = client.patch(
            f"{API}/assignments/{assignment['id']}",
            headers=admin,
            json={"valid_to": (datetime.now(UTC) - timedelta(minutes=1)).isoformat()},
        )
        assert ended.status_code == 200, ended.text
    archived = client.post(f"{API}/patients/{world.other_patient}/archive", headers=admin)
    assert archived.status_code == 200, archived.text

    everyone = client.get(f"{API}/cohort/outcomes", params={"days": 28}, headers=admin).json()
    calm_all = next(p for p in everyone["programs"] if p["program_name"] == "calm")
    # Before archiving: 2 patients, calm by 2 of them in 7 sessions (test above).
    assert (everyone["patients"], calm_all["patients"], calm_all["sessions"]) == (1, 1, 6)
    theirs = client.get(f"{API}/cohort/outcomes", headers=world.other_clinician.headers).json()
    assert (theirs["patients"], theirs["programs"]) == (0, [])
    mine = client.get(
        f"{API}/cohort/outcomes", params={"days": 28}, headers=world.clinician.headers
    ).json()
    assert mine["patients"] == 1 and len(mine["programs"]) == 2  # untouched

    client.post(f"{API}/patients/{world.other_patient}/restore", headers=admin)
    back = client.get(f"{API}/cohort/outcomes", params={"days": 28}, headers=admin).json()
    assert back["patients"] == 2


def test_outcome_requests_are_checked(client: TestClient, world: Any) -> None:
    url = f"{API}/patients/{world.patient}/outcomes"
    for days in ("0", "400", "many"):
        bad = client.get(url, params={"days": days}, headers=world.clinician.headers)
        assert bad.status_code == 422
        assert "days" in bad.text
    assert client.get(url, headers=world.other_clinician.headers).status_code == 404
    assert client.get(url, headers=world.auditor.headers).status_code == 403
    assert client.get(f"{API}/cohort/outcomes", headers=world.auditor.headers).status_code == 403
    empty = client.get(url, headers=world.clinician.headers).json()
    assert (empty["trends"], empty["programs"], empty["exposure"]) == ([], [], [])
    assert empty["days"] == 90 and len(empty["adherence"]["weeks"]) == 13


def test_a_bad_checkin_question_is_refused_when_set(client: TestClient, world: Any) -> None:
    bad = client.put(
        f"{API}/patients/{world.patient}/desired",
        json={"profile": {"checkins": [{**QUESTIONS[0], "when": "sometimes"}]}},
        headers={**world.clinician.headers, "If-Match": '"0"'},
    )
    assert bad.status_code == 422
    assert "checkins.0.when" in bad.text
    assert (
        client.get(
            f"{API}/patients/{world.patient}/desired", headers=world.clinician.headers
        ).headers["ETag"]
        == '"0"'
    )


def test_checkins_csv_and_fhir_export(client: TestClient, world: Any, seeded: Seeded) -> None:
    url = f"{API}/patients/{world.patient}/export/checkins.csv"
    response = client.get(url, headers=world.clinician.headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert tuple(rows[0]) == CHECKIN_COLUMNS
    assert len(rows) == 36
    assert [r["answered_at"] for r in rows] == sorted(r["answered_at"] for r in rows)
    skipped = [r for r in rows if r["skipped"] == "true"]
    assert [(r["question_id"], r["phase"], r["value"], r["skip_reason"]) for r in skipped] == [
        ("tinnitus", "after", "", PLAN_SKIP_REASON)
    ]
    assert {r["skip_reason"] for r in rows if r["skipped"] == "false"} == {""}
    empty = client.get(
        url,
        params={"from": "2026-05-02T00:00:00Z", "to": "2026-05-01T00:00:00Z"},
        headers=world.clinician.headers,
    )
    assert empty.status_code == 422

    bundle = client.get(
        f"{API}/patients/{world.patient}/export/fhir", headers=world.clinician.headers
    ).json()
    check_fhir(bundle)
    responses = [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "QuestionnaireResponse"
    ]
    assert len(responses) == 18  # 9 sessions, before and after
    procedures = {
        e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Procedure"
    }
    assert all(r["partOf"][0]["reference"] in procedures for r in responses)
    first_before = next(r for r in responses if r["questionnaire"].endswith("checkin-before"))
    assert first_before["item"] == [
        {"linkId": "relax", "answer": [{"valueInteger": 2}]},
        {"linkId": "tinnitus", "answer": [{"valueInteger": 8}]},
    ]
    # a skip has no answer; its text says why
    skips = [item for r in responses for item in r["item"] if "answer" not in item]
    assert skips == [{"linkId": "tinnitus", "text": f"skipped: {PLAN_SKIP_REASON}"}]


def test_change_summary_interval() -> None:
    # 1..5: mean 3, s = √2.5, t(4) = 2.7764 (scipy's quantile, not a rounded table's).
    summary = change_summary(5, 15.0, 55.0)
    half = 2.7764451051977987 * math.sqrt(2.5 / 5)
    assert (summary.mean, summary.too_few) == (3.0, False)
    assert summary.ci95_low == pytest.approx(3.0 - half)
    assert summary.ci95_high == pytest.approx(3.0 + half)
    few = change_summary(4, 10.0, 30.0)
    assert (few.mean, few.ci95_low, few.too_few) == (2.5, None, True)


def test_checkin_records_and_questions_refuse_bad_input() -> None:
    at = datetime(2026, 5, 1, tzinfo=UTC)
    good = checkin("dev-a", new_id(), "relax", "before", 3, at)
    with pytest.raises(ProtocolError, match="not the sender 'dev-b'"):
        parse_checkin(good.model_dump(mode="json"), "dev-b")
    assert parse_checkin(good.model_dump(mode="json"), "dev-a") == good
    for change, complaint in (
        ({"value": 11}, "value"),
        ({"value": 3, "skipped": True}, "a skipped check-in has no value"),
        ({"value": None}, "value (0–10) is required unless skipped"),
        ({"skip_reason": "no answer in time"}, "skip_reason is only allowed when skipped"),
        (
            {"value": None, "skipped": True, "skip_reason": "x" * 201},
            "skip_reason: String should have at most 200 characters",
        ),
        ({"phase": "during"}, "phase"),
        ({"question_id": "Not An Id"}, "question_id"),
    ):
        with pytest.raises(ProtocolError, match="invalid checkin body") as info:
            parse_checkin({**good.model_dump(mode="json"), **change}, "dev-a")
        assert complaint in str(info.value)

    six = [{**QUESTIONS[0], "id": f"q{i}"} for i in range(6)]
    for checkins, complaint in (
        (six, "checkins"),
        ([QUESTIONS[0], QUESTIONS[0]], "question id relax is used twice"),
        ([{**QUESTIONS[0], "when": "sometimes"}], "checkins.0.when"),
        ([{**QUESTIONS[0], "low_label": ""}], "checkins.0.low_label"),
    ):
        with pytest.raises(ConfigError, match=r"^desired state:") as caught:
            parse_profile({"checkins": checkins}, source="desired state")
        assert complaint in str(caught.value)
    profile = parse_profile({"checkins": QUESTIONS})
    assert [q.asked("after") for q in profile.checkins] == [True, True]


def test_store_checkins_refuses_another_devices_records(engine: Engine) -> None:
    at = datetime(2026, 5, 1, tzinfo=UTC)  # the only clock this test reads
    record = checkin("dev-b", new_id(), "relax", "after", 5, at)
    with engine.begin() as conn, pytest.raises(ProtocolError, match="names device 'dev-b'"):
        store_checkins(conn, "dev-a", None, [record], now=at)
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(CheckInRow)).one() == 0


def test_the_api_schema_says_what_a_skip_reason_is(client: TestClient, world: Any) -> None:
    schema = client.get("/openapi.json", headers=world.clinician.headers)  # signed in only
    schemas = schema.json()["components"]["schemas"]
    outcomes = schemas["PatientOutcomes"]["properties"]["skipped_checkins"]
    assert "why each was skipped" in outcomes["description"]
    reason = schemas["SkippedCheckIn"]["properties"]["skip_reason"]["description"]
    assert "'skipped by the person' (declined)" in reason
    assert "the device could not ask" in reason
