"""A day alone is a day in the server's time zone (issue 23, deliverable 4): ``?from=2026-12-06``
and an assignment's ``valid_from: "2026-12-06"`` mean that day's start where the server is (here
Europe/Berlin, set for the test), not a 422 for lacking an offset; a time without its offset is
still refused (which zone it meant is not known)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from resonera.server.schemas import day_start, server_zone_name

API = "/api/v1"


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The server's time zone is Europe/Berlin for the test (UTC+1 in December)."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("berlin")
def test_an_assignment_from_a_day_starts_at_its_local_midnight(
    client: TestClient, world: Any, registered: Callable[..., str]
) -> None:
    registered("dev-new")
    made = client.post(
        f"{API}/assignments",
        json={
            "device_id": "dev-new",
            "patient_id": world.patient,
            "valid_from": "2026-12-06",
            "valid_to": "2027-07-01",
        },
        headers=world.admin.headers,
    )
    assert made.status_code == 201, made.text
    stored = made.json()
    # Midnight in Berlin is 23:00 UTC the day before in winter, 22:00 in summer.
    assert datetime.fromisoformat(stored["valid_from"]) == datetime(2026, 12, 5, 23, tzinfo=UTC)
    assert datetime.fromisoformat(stored["valid_to"]) == datetime(2027, 6, 30, 22, tzinfo=UTC)
    assert server_zone_name() == "CET"


@pytest.mark.usefixtures("berlin")
def test_a_period_of_days_filters_by_local_days(client: TestClient, world: Any) -> None:
    today = datetime.now().astimezone().date()  # the one clock: today where the server is
    tomorrow = today + timedelta(days=1)
    for url in (f"{API}/sessions", f"{API}/patients/{world.patient}/sessions"):
        got = client.get(url, params={"from": today.isoformat()}, headers=world.clinician.headers)
        assert got.status_code == 200, got.text

    # The reads above were audited just now: within today, before tomorrow, not before today.
    def audited(**period: str) -> int:
        got = client.get(f"{API}/audit", params=period, headers=world.auditor.headers)
        assert got.status_code == 200, got.text
        return int(got.headers["X-Total-Count"])

    assert audited(**{"from": today.isoformat(), "to": tomorrow.isoformat()}) >= 1
    assert audited(to=today.isoformat()) == 0
    assert audited(**{"from": tomorrow.isoformat()}) == 0
    assert day_start(date(2026, 12, 6)) == datetime(2026, 12, 5, 23, tzinfo=UTC)


def test_a_time_without_its_offset_is_still_refused(client: TestClient, world: Any) -> None:
    got = client.get(
        f"{API}/sessions", params={"from": "2026-12-06T08:00:00"}, headers=world.clinician.headers
    )
    assert got.status_code == 422
    assert "from" in got.json()["error"]["message"]
    not_a_day = client.get(
        f"{API}/sessions", params={"from": "2026-02-30"}, headers=world.clinician.headers
    )
    assert not_a_day.status_code == 422
