"""Every list the API answers is paged (issue 23, deliverable 6): ``X-Total-Count`` says how many
there are in all, ``Link`` (RFC 8288) where the next and previous pages are; following the links
from the first page visits every item once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from factories import RECENT
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.server.ingest import IngestProcessor, Received

API = "/api/v1"


def _links(response: Any) -> dict[str, str]:
    """``rel`` → address, from the response's ``Link`` header (httpx parses RFC 8288)."""
    return {
        link["rel"]: link["url"]
        for link in httpx.Response(200, headers=response.headers).links.values()
    }


def _walk(client: TestClient, url: str, headers: dict[str, str]) -> tuple[list[Any], list[int]]:
    """Every item of a list, page by page through the ``next`` links; and each page's total."""
    items: list[Any] = []
    totals: list[int] = []
    while url:
        response = client.get(url, headers=headers)
        assert response.status_code == 200, response.text
        items.extend(response.json())
        totals.append(int(response.headers["X-Total-Count"]))
        url = _links(response).get("next", "")
    return items, totals


def test_following_next_visits_every_patient_once(client: TestClient, world: Any) -> None:
    for k in range(7):
        made = client.post(
            f"{API}/patients",
            json={"name": f"Patient {k}", "birth_date": "1970-01-01"},
            headers=world.admin.headers,
        )
        assert made.status_code == 201, made.text
    first = client.get(f"{API}/patients", params={"limit": 3}, headers=world.admin.headers)
    assert first.headers["X-Total-Count"] == "9"  # the world's two and the seven
    assert len(first.json()) == 3
    links = _links(first)
    assert set(links) == {"next"}
    assert links["next"] == f"{API}/patients?limit=3&offset=3"
    items, totals = _walk(client, f"{API}/patients?limit=3", world.admin.headers)
    assert totals == [9, 9, 9]
    assert len({p["id"] for p in items}) == 9
    last = client.get(
        f"{API}/patients", params={"limit": 3, "offset": 6}, headers=world.admin.headers
    )
    assert set(_links(last)) == {"prev"}
    assert _links(last)["prev"] == f"{API}/patients?limit=3&offset=3"


def test_a_filtered_list_counts_what_the_filter_keeps(
    client: TestClient, world: Any, engine: Engine, make_body: Callable[..., dict[str, Any]]
) -> None:
    envelopes = [
        Envelope.create(
            device="dev-a",
            seq=i,
            kind="session",
            body=make_body(start=RECENT + timedelta(hours=i), minutes=5),
        )
        for i in range(5)
    ]
    IngestProcessor(engine).process(
        [Received(topics.up("dev-a", "session"), e.to_bytes()) for e in envelopes]
    )
    since = (RECENT + timedelta(hours=2)).isoformat()
    url = f"{API}/patients/{world.patient}/sessions"
    page = client.get(url, params={"from": since, "limit": 2}, headers=world.clinician.headers)
    assert page.status_code == 200, page.text
    assert page.headers["X-Total-Count"] == "3"  # hours 2, 3 and 4
    nxt = _links(page)["next"]
    assert "from=" in nxt and "offset=2" in nxt and "limit=2" in nxt
    rest = client.get(nxt, headers=world.clinician.headers)
    assert len(rest.json()) == 1 and "next" not in _links(rest)
    every, _totals = _walk(client, f"{API}/sessions?limit=2", world.clinician.headers)
    assert len(every) == 5


@pytest.mark.parametrize(
    ("who", "path"),
    [
        ("admin", "/users"),
        ("admin", "/devices"),
        ("admin", "/assignments"),
        ("admin", "/patients"),
        ("clinician", "/sessions"),
        ("clinician", "/programs"),
        ("auditor", "/audit"),
    ],
)
def test_every_list_says_its_total(client: TestClient, world: Any, who: str, path: str) -> None:
    actor = world.by_name(who)
    response = client.get(f"{API}{path}", headers=actor.headers)
    assert response.status_code == 200, response.text
    assert int(response.headers["X-Total-Count"]) == len(response.json())
    assert "Link" not in response.headers  # one page holds them all
