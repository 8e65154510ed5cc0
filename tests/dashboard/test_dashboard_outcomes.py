"""Session effectiveness on the dashboard: a patient's outcomes page and the cohort page show the
numbers of seeded check-ins whose trends are known (``factories.outcome_plan``), through TestClient
and in Chromium; roles; the check-in questions in the profile form; the CSV downloads."""

from __future__ import annotations

import csv
import html as html_text
import io
import math
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pytest
from dashboard.helpers import (
    Browsing,
    Seeded,
    form_token,
    html_client,
    seed_outcomes,
    seed_world,
    sign_in_as,
    table_cells,
)
from factories import OUTCOME_QUESTIONS, PLAN_SKIP_REASON, OutcomePlan
from fastapi import FastAPI
from fastapi.testclient import TestClient
from playwright.sync_api import expect
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from resonera.server.crypto import FieldCipher
from resonera.server.models import AuditRow, PatientConfigRow

SignIn = Callable[[str], str]


@pytest.fixture
def seeded(engine: Engine, cipher: FieldCipher) -> Seeded:
    """The dashboard's world without its 90 days of sessions: only the outcome plan's."""
    return seed_world(engine, cipher, days=1)


@pytest.fixture
def plan(engine: Engine, seeded: Seeded) -> OutcomePlan:
    return seed_outcomes(engine, seeded, datetime.now(UTC).date())


def _day(monday: date, offset: int) -> str:
    return (monday + timedelta(days=offset)).isoformat()


def _seeded_days(plan: OutcomePlan) -> list[str]:
    return [_day(monday, k) for monday in plan.mondays for k in (0, 2, 4)]


def _check_outcome_tables(cells: Callable[[str], list[list[str]]], plan: OutcomePlan) -> None:
    """The numbers the outcomes page shows (30 days), whoever reads it (TestClient, Chromium)."""
    weeks = {row[0]: row[1:] for row in cells("adherence")}
    for monday in plan.mondays:
        year, week, _ = monday.isocalendar()
        label = f"{year}-W{week:02d} (from {monday.isoformat()})"
        assert weeks[label] == ["3", "5", "60.0 %"], label
    assert len(weeks) == 5  # ceil(30 / 7) ISO weeks

    relax = cells("trend-relax")
    assert [row[0] for row in relax] == _seeded_days(plan)
    # Before: 2 + week, after: +2; each day one answer of each.
    assert [(row[1], row[2], row[4], row[5]) for row in relax] == [
        (f"{2 + w:.2f}", "1", f"{4 + w:.2f}", "1") for w in range(3) for _ in range(3)
    ]
    # The second Monday's 7 days hold the first week's Wednesday and Friday (2) and itself (3).
    assert relax[3][3] == "2.33 (3)"
    tinnitus = cells("trend-tinnitus")
    first_friday = tinnitus[2]
    # No after answer that day, one skip; the 7 days before hold Monday's and Wednesday's 7.
    assert first_friday[4:7] == ["—", "0", "7.00 (2)"]
    assert first_friday[-1] == "1"  # the skipped answer, marked
    assert [row[-1] for row in tinnitus].count("1") == 1
    # ... and why: the device could not ask it (the person did not decline)
    assert [[html_text.unescape(cell) for cell in row] for row in cells("skips-tinnitus")] == [
        [f"{_day(plan.mondays[0], 4)} 09:21", "after the session", PLAN_SKIP_REASON]
    ]

    changes = {(row[0], row[1]): row[2:] for row in cells("program-changes")}
    assert changes[("calm", "How relaxed do you feel?")] == ["6", "+2.00", "+2.00 to +2.00"]
    # Lower is better for tinnitus: a drop of 1 is an improvement of +1.
    assert changes[("calm", "How loud is your tinnitus?")] == ["6", "+1.00", "+1.00 to +1.00"]
    assert changes[("sleep", "How relaxed do you feel?")] == ["3", "+2.00", "too few observations"]
    assert changes[("sleep", "How loud is your tinnitus?")] == [
        "2",
        "+1.00",
        "too few observations",
    ]

    exposure = cells("exposure")
    assert [row[0] for row in exposure] == _seeded_days(plan)
    # LAeq at the ear of 1 % of the allowance (80 dB(A) for 40 h) in 20 minutes.
    ear = 80 + 10 * math.log10(0.01 / (1200 / (40 * 3600)))
    assert exposure[0][1:] == [
        "1",
        "1",
        "20 min 00 s",
        "1.0 %",
        f"{ear:.1f} dB(A)",
        "-20.0 dBFS",
        "-6.0 dBFS",
    ]


def test_outcomes_page_shows_the_seeded_trends(
    client: TestClient, sign_in: SignIn, seeded: Seeded, plan: OutcomePlan, engine: Engine
) -> None:
    sign_in(seeded.clinician)
    patient_page = client.get(f"/patients/{seeded.patient}").text
    assert f'href="/patients/{seeded.patient}/outcomes"' in patient_page
    response = client.get(f"/patients/{seeded.patient}/outcomes")
    assert response.status_code == 200, response.text
    html = response.text
    assert "https://" not in html and "http://" not in html  # nothing from outside
    _check_outcome_tables(lambda table: table_cells(html, table), plan)
    assert html.count('class="too-few"') == 2
    assert 'data-skip="0"' in html  # the chart marks the skip too
    assert "<espeak-ng>" not in html and "&lt;espeak-ng&gt; failed &amp; exited" in html
    assert 'id="skips-relax"' not in html  # no skips, no table

    ninety = client.get(f"/patients/{seeded.patient}/outcomes", params={"days": "90"}).text
    assert len(table_cells(ninety, "adherence")) == 13
    assert len(table_cells(ninety, "exposure")) == 9
    with Session(engine) as session:
        reads = session.exec(
            select(AuditRow).where(
                AuditRow.resource == "outcomes", AuditRow.patient_id == seeded.patient
            )
        ).all()
    assert len(reads) == 2


def test_the_report_has_the_outcomes_pages_changes(
    client: TestClient, sign_in: SignIn, seeded: Seeded, plan: OutcomePlan, engine: Engine
) -> None:
    sign_in(seeded.clinician)
    report = client.get(f"/patients/{seeded.patient}/report", params={"days": "30"}).text
    changes = {(row[0], row[1]): row[2:] for row in table_cells(report, "report-outcomes")}
    assert changes[("calm", "How relaxed do you feel?")] == ["6", "+2.00", "+2.00 to +2.00"]
    assert changes[("sleep", "How loud is your tinnitus?")][2] == "too few observations"
    weeks = table_cells(report, "report-adherence")
    assert [row[1:3] for row in weeks if row[0] == plan.mondays[0].isoformat()] == [["3", "5"]]
    with Session(engine) as session:
        exports = session.exec(
            select(AuditRow).where(
                AuditRow.action == "export",
                AuditRow.resource == "report",
                AuditRow.patient_id == seeded.patient,
            )
        ).all()
    assert len(exports) == 1


def test_outcomes_page_without_check_ins(
    client: TestClient, sign_in: SignIn, seeded: Seeded
) -> None:
    sign_in(seeded.clinician)
    html = client.get(f"/patients/{seeded.patient}/outcomes").text
    assert "No check-in questions are set" in html
    assert "No session in this period has both a before and an after answer" in html
    assert [row[1:] for row in table_cells(html, "adherence")] == [["0", "0", "—"]] * 5


def test_outcome_pages_are_for_their_people(
    client: TestClient, sign_in: SignIn, seeded: Seeded, plan: OutcomePlan
) -> None:
    sign_in(seeded.other_clinician)
    for path in ("outcomes", "checkins.csv", "sessions.csv"):
        response = client.get(f"/patients/{seeded.patient}/{path}")
        assert response.status_code == 403, path
        assert "This patient is not among yours" in response.text
        assert "relax" not in response.text
    bad = client.get(f"/patients/{seeded.other_patient}/outcomes", params={"days": "7"})
    assert bad.status_code == 400 and "days" in bad.text

    theirs = client.get("/cohort")
    assert theirs.status_code == 200
    assert [row[0:3] for row in table_cells(theirs.text, "cohort-programs")] == [
        ["calm-40hz", "1", "1"]
    ]

    sign_in(seeded.auditor)
    cohort = client.get("/cohort")
    assert cohort.status_code == 403
    assert "This page is for the role clinician or admin" in cohort.text
    assert 'href="/cohort"' not in cohort.text  # not in the auditor's navigation
    assert client.get(f"/patients/{seeded.patient}/outcomes").status_code == 403


def test_cohort_page_per_program(
    client: TestClient, sign_in: SignIn, seeded: Seeded, plan: OutcomePlan
) -> None:
    sign_in(seeded.clinician)
    html = client.get("/cohort").text
    assert 'href="/cohort"' in html
    assert "Your 1 patient," in html
    programs = {row[0]: row[1:] for row in table_cells(html, "cohort-programs")}
    assert list(programs) == ["calm", "sleep"]  # most sessions first
    # 6 relaxation pairs (+2) and 6 tinnitus pairs (+1): t(11) · s / √n with s² = 3/11.
    assert programs["calm"][:5] == ["1", "6", "100.0 %", "+1.50", "12"]
    assert programs["calm"][5] == "+1.17 to +1.83"
    # 3 relaxation pairs (+2) and 2 tinnitus pairs (+1, one skipped): n = 5, just enough.
    assert programs["sleep"][:5] == ["1", "3", "100.0 %", "+1.60", "5"]
    assert "too few" not in programs["sleep"][5]

    sign_in(seeded.admin)
    everyone = client.get("/cohort", params={"days": "30"}).text
    assert "All 2 patients," in everyone
    rows = {row[0]: row[1:] for row in table_cells(everyone, "cohort-programs")}
    assert rows["calm-40hz"][:5] == ["1", "1", "100.0 %", "—", "0"]
    assert rows["calm-40hz"][5] == "too few observations"


def test_check_in_questions_in_the_profile_form(
    client: TestClient, sign_in: SignIn, seeded: Seeded, plan: OutcomePlan, engine: Engine
) -> None:
    sign_in(seeded.clinician)
    url = f"/patients/{seeded.patient}"
    html = client.get(url).text
    values = re.findall(r'name="checkin_id" maxlength="32" value="([^"]*)"', html)
    assert values == ["relax", "tinnitus", "", "", ""]
    # The JSON field keeps the rest of the profile: the questions are not in it twice.
    assert '"checkins"' not in html.split('id="profile"', 1)[1].split("</textarea>", 1)[0]

    def form(**rows: str | list[str]) -> dict[str, str | list[str]]:
        limits = dict(
            re.findall(r'<input id="(\w+)" name="\w+" type="number"[^>]*value="([^"]*)"', html)
        )
        version = re.search(r'name="version" value="(\d+)"', html)
        assert version
        columns = {
            "checkin_id": ["relax", "tinnitus", "sleep", "", ""],
            "checkin_text": [q["text"] for q in OUTCOME_QUESTIONS] + ["How did you sleep?", "", ""],
            "checkin_low_label": ["not at all", "silent", "badly", "", ""],
            "checkin_high_label": ["completely", "unbearable", "very well", "", ""],
            "checkin_when": ["both", "both", "before", "both", "both"],
            "checkin_better": ["higher", "lower", "higher", "higher", "higher"],
        }
        return {
            **limits,
            "profile": "{}",
            "version": version.group(1),
            "csrf_token": form_token(html),
            "checkins_form": "1",
            **columns,
            **rows,
        }

    # Add "sleep" (asked before only), remove "tinnitus" (row 2).
    saved = client.post(f"{url}/limits", data=form(checkin_remove=["1"]))
    assert saved.status_code == 303, saved.text
    page = client.get(saved.headers["location"]).text
    assert "pending on device" in page
    assert re.findall(r'name="checkin_id" maxlength="32" value="([^"]*)"', page) == [
        "relax",
        "sleep",
        "",
        "",
        "",
    ]
    with Session(engine) as session:
        latest = session.exec(
            select(PatientConfigRow)
            .where(PatientConfigRow.patient_id == seeded.patient)
            .order_by(col(PatientConfigRow.version).desc())
        ).first()
    assert latest is not None and latest.version == 2
    assert [(q["id"], q["when"]) for q in latest.profile["checkins"]] == [
        ("relax", "both"),
        ("sleep", "before"),
    ]
    assert latest.sessions_per_week == 5  # the rest of the form as it was

    # The same model as the device: a bad id or a missing anchor is explained, row by row.
    html = page
    for rows, complaint in (
        ({"checkin_id": ["relax", "Not An Id", "", "", ""]}, "question 2, id"),
        ({"checkin_low_label": ["", "silent", "badly", "", ""]}, "question 1, low_label"),
        ({"checkin_id": ["relax", "relax", "sleep", "", ""]}, "question id relax is used twice"),
        ({"checkin_when": ["sometimes"] * 5}, "question 1, when"),
    ):
        refused = client.post(f"{url}/limits", data=form(**rows))
        assert refused.status_code == 400, rows
        assert "The settings were not saved" in refused.text
        assert complaint in refused.text, refused.text.split("form-errors", 1)[1][:600]
        assert 'id="checkin-questions" aria-invalid="true"' in refused.text
    both = client.post(f"{url}/limits", data=form(profile='{"checkins": []}'))
    assert both.status_code == 400
    assert "leave &#39;checkins&#39; out" in both.text
    with Session(engine) as session:
        versions = session.exec(
            select(col(PatientConfigRow.version)).where(
                PatientConfigRow.patient_id == seeded.patient
            )
        ).all()
    assert sorted(versions) == [1, 2]


def test_csv_downloads_for_the_cookie_session(
    client: TestClient, sign_in: SignIn, seeded: Seeded, plan: OutcomePlan, engine: Engine
) -> None:
    sign_in(seeded.clinician)
    page = client.get(f"/patients/{seeded.patient}").text
    for download in ("sessions.csv", "checkins.csv", "fhir.json"):  # each linked from the page
        assert f'href="/patients/{seeded.patient}/{download}" download' in page
    record = client.get(f"/patients/{seeded.patient}/fhir.json")
    assert record.status_code == 200 and record.json()["resourceType"] == "Bundle"
    checkins = client.get(f"/patients/{seeded.patient}/checkins.csv")
    assert checkins.status_code == 200
    assert checkins.headers["content-type"].startswith("text/csv")
    assert "attachment" in checkins.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(checkins.text)))
    assert len(rows) == len(plan.records) == 36
    assert [(r["question_id"], r["skip_reason"]) for r in rows if r["skipped"] == "true"] == [
        ("tinnitus", PLAN_SKIP_REASON)
    ]
    sessions = client.get(f"/patients/{seeded.patient}/sessions.csv")
    assert sessions.status_code == 200
    programs = [r["program_name"] for r in csv.DictReader(io.StringIO(sessions.text))]
    assert programs == ["calm", "calm", "sleep"] * 3
    with Session(engine) as session:
        exports = session.exec(
            select(AuditRow.resource).where(
                AuditRow.action == "export", AuditRow.patient_id == seeded.patient
            )
        ).all()
    assert sorted(exports) == ["checkins_csv", "fhir", "sessions_csv"]


def test_outcome_pages_on_postgresql(
    pg_app: FastAPI, pg_engine: Engine, cipher: FieldCipher
) -> None:
    """The same numbers from PostgreSQL (UTC days from ``timestamptz``, the same SQL)."""
    seeded = seed_world(pg_engine, cipher, days=1)
    plan = seed_outcomes(pg_engine, seeded, datetime.now(UTC).date())
    with html_client(pg_app) as client:
        sign_in_as(client, seeded.clinician)
        page = client.get(f"/patients/{seeded.patient}/outcomes")
        assert page.status_code == 200, page.text
        _check_outcome_tables(lambda table: table_cells(page.text, table), plan)
        cohort = table_cells(client.get("/cohort").text, "cohort-programs")
        assert [row[:6] for row in cohort] == [
            ["calm", "1", "6", "100.0 %", "+1.50", "12"],
            ["sleep", "1", "3", "100.0 %", "+1.60", "5"],
        ]
        assert client.get(f"/patients/{seeded.patient}/checkins.csv").text.count("\n") == 37


# -- in Chromium -----------------------------------------------------------------------------


def test_clinician_reads_outcomes_and_the_cohort_in_the_browser(
    browsing: Browsing, seeded: Seeded, plan: OutcomePlan
) -> None:
    b = browsing
    b.sign_in(seeded.clinician)
    b.goto(f"/patients/{seeded.patient}")
    b.page.get_by_role("link", name=re.compile("^Outcomes")).click()
    expect(b.page.get_by_role("heading", level=1)).to_have_text(
        f"Outcomes of {seeded.patient_name}"
    )

    def cells(table: str) -> list[list[str]]:
        return [
            [cell.strip() for cell in row.locator("th, td").all_inner_texts()]
            for row in b.page.locator(f"#{table} tbody tr").all()
        ]

    _check_outcome_tables(cells, plan)
    # Each chart is drawn from its table: one canvas each, a point per row.
    for table, points in (("adherence", 5), ("trend-relax", 9), ("trend-tinnitus", 9)):
        chart = b.page.locator(f'.chart[data-table="{table}"]')
        expect(chart.locator("canvas")).to_have_count(1)
        assert chart.get_attribute("data-points") == str(points)
    expect(b.page.locator('.chart[data-table="exposure"] canvas')).to_have_count(1)
    expect(b.page.locator("#program-changes tr.too-few")).to_have_count(2)
    b.shot("outcomes-30-days")

    b.page.get_by_role("link", name="90 days").click()
    expect(b.page.locator("#adherence tbody tr")).to_have_count(13)
    b.shot("outcomes-90-days")

    with b.page.expect_download() as download:
        b.page.get_by_role("link", name="check-ins (CSV)").click()
    text = download.value.path().read_text()
    assert text.count("\n") == 37  # the header and 36 answers

    b.page.get_by_role("link", name="Cohort").click()
    expect(b.page.get_by_role("heading", level=1)).to_have_text("Cohort")
    calm = b.page.locator("#cohort-programs tbody tr").first
    expect(calm).to_contain_text("calm")
    expect(calm).to_contain_text("+1.50")
    b.shot("cohort")
    assert b.console_errors == []


def test_set_check_in_questions_in_the_browser(
    browsing: Browsing, seeded: Seeded, engine: Engine
) -> None:
    b = browsing
    b.sign_in(seeded.clinician)
    b.goto(f"/patients/{seeded.patient}#limits")
    b.page.locator("#checkin-1-id").fill("relax")
    b.page.locator("#checkin-1-text").fill("How relaxed do you feel?")
    b.page.locator("#checkin-1-low").fill("not at all")
    b.page.locator("#checkin-1-high").fill("completely")
    b.page.locator("#checkin-1-when").select_option("after")
    b.page.get_by_role("button", name=re.compile("Save as version 1")).click()
    expect(b.page.locator("#config-status")).to_contain_text("pending on device")
    expect(b.page.locator("#checkin-1-id")).to_have_value("relax")
    expect(b.page.locator("#checkin-1-when")).to_have_value("after")
    b.shot("checkin-questions")

    b.page.locator("#checkin-1-remove").check()
    b.page.get_by_role("button", name=re.compile("Save as version 2")).click()
    expect(b.page.locator("#checkin-1-id")).to_have_value("")
    with Session(engine) as session:
        versions = session.exec(
            select(PatientConfigRow)
            .where(PatientConfigRow.patient_id == seeded.patient)
            .order_by(col(PatientConfigRow.version))
        ).all()
    assert [v.profile.get("checkins", []) for v in versions] == [
        [
            {
                "id": "relax",
                "text": "How relaxed do you feel?",
                "low_label": "not at all",
                "high_label": "completely",
                "when": "after",
                "better": "higher",
            }
        ],
        [],
    ]
    assert b.console_errors == []

    b.page.context.clear_cookies()
    b.sign_in(seeded.auditor)
    b.goto("/cohort")
    expect(b.page.get_by_role("heading", level=1)).to_have_text("Not allowed")
    b.shot("cohort-auditor-403")
