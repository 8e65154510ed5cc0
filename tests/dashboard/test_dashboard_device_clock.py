"""The devices page shows each device's clock against the server's (issue 26, finding 4): the skew
ingest measured on the device's last batch, in bold beyond the skew ingest believes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from dashboard.helpers import Seeded, server_helpers, table_cells
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.server.ingest import IngestProcessor, Received
from resonera.server.web.views import skew_text

CLOCK = 8  # the devices table's Clock column


def test_the_devices_page_shows_each_devices_clock_skew(
    client: TestClient, sign_in: Callable[[str], str], seeded: Seeded, engine: Engine
) -> None:
    server_helpers().add_device(engine, "dev-quiet")
    server_helpers().add_device(engine, "dev-near")
    received = datetime.now(UTC)  # the one clock: ingest's receive time here

    def metrics(device: str, time: datetime) -> Received:
        envelope = Envelope.create(device=device, seq=10**6, kind="metrics", body={}, time=time)
        return Received(topics.up(device, "metrics"), envelope.to_bytes())

    result = IngestProcessor(engine, clock=lambda: received).process(
        [
            metrics(seeded.device, received - timedelta(hours=2)),
            metrics(seeded.other_device, received + timedelta(hours=1)),  # quarantined
            metrics("dev-near", received - timedelta(seconds=3)),
        ]
    )
    assert result.quarantined == 1
    sign_in(seeded.admin)
    page = client.get("/devices")
    assert page.status_code == 200
    rows = {row[0]: row for row in table_cells(page.text, "devices")}
    assert rows[seeded.device][CLOCK] == "2 h 00 min behind"
    assert rows[seeded.other_device][CLOCK] == "1 h 00 min ahead"
    assert rows["dev-near"][CLOCK] == "3 s behind"
    assert rows["dev-quiet"][CLOCK] == "—"
    # beyond the believed skew (300 s by default) either way: marked
    assert '<strong class="attention">2 h 00 min behind</strong>' in page.text
    assert '<strong class="attention">1 h 00 min ahead</strong>' in page.text
    assert '<strong class="attention">3 s behind</strong>' not in page.text
    assert f'title="measured {received.strftime("%Y-%m-%d %H:%M UTC")}"' in page.text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "—"),
        (0.4, "in step"),
        (-0.4, "in step"),
        (59.6, "1 min 00 s behind"),
        (-301, "5 min 01 s ahead"),
        (3 * 86400 + 7200 + 59, "3 d 2 h behind"),
        (-(10**10), "115740 d 17 h ahead"),
    ],
)
def test_skew_in_words(seconds: float | None, text: str) -> None:
    assert skew_text(seconds) == text
