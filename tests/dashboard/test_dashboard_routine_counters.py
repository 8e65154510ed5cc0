"""The devices page shows the routine hand-overs each agent counted instead of recording them as
safety events (issue 21): the ``routine`` counters of its latest telemetry, by name."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from dashboard.helpers import Seeded, table_cells
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.server.ingest import IngestProcessor, Received

ROUTINE = 9  # the devices table's "Routine hand-overs" column


def test_the_devices_page_shows_the_latest_routine_counters(
    client: TestClient, sign_in: Callable[[str], str], seeded: Seeded, engine: Engine
) -> None:
    received = datetime.now(UTC)

    def metrics(seq: int, routine: object) -> Received:
        body = {"telemetry": {"outbox_depth": 0, "routine": routine}}
        envelope = Envelope.create(
            device=seeded.device,
            seq=10**6 + seq,
            kind="metrics",
            body=body,
            time=received - timedelta(seconds=10 - seq),
        )
        return Received(topics.up(seeded.device, "metrics"), envelope.to_bytes())

    older = {"consent_granted": 1, "device_mutes": 1}
    latest = {"consent_granted": 12, "device_mutes": 12, "link_drops": 1, "bogus": "x"}
    result = IngestProcessor(engine, clock=lambda: received).process(
        [metrics(1, older), metrics(2, latest)]
    )
    assert result.stored == 2
    sign_in(seeded.admin)
    page = client.get("/devices")
    assert page.status_code == 200
    rows = {row[0]: row for row in table_cells(page.text, "devices")}
    # the latest telemetry's, in name order; what is no count is left out
    assert rows[seeded.device][ROUTINE] == "consent granted 12, device mutes 12, link drops 1"
    assert rows[seeded.other_device][ROUTINE] == "—"
