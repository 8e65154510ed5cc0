"""The devices page shows each device's clock against the server's (issue 26, finding 4): the skew
ingest measured on the device's last batch, in bold beyond the skew ingest believes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from dashboard.helpers import Browsing, Seeded, server_helpers, table_cells
from fastapi.testclient import TestClient
from playwright.sync_api import expect
from sqlalchemy.engine import Engine

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.server.ingest import IngestProcessor, Received
from resonera.server.web.device_views import skew_text

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


def test_the_clock_column_reads_at_desk_and_phone_widths(
    browsing: Browsing, seeded: Seeded, engine: Engine
) -> None:
    """An admin sees the skew on a desk screen and on a phone; at 390 px the table scrolls within
    its own box and the page itself does not widen."""
    received = datetime.now(UTC)
    envelope = Envelope.create(
        device=seeded.device,
        seq=10**6,
        kind="metrics",
        body={},
        time=received - timedelta(minutes=42),
    )
    IngestProcessor(engine, clock=lambda: received).process(
        [Received(topics.up(seeded.device, "metrics"), envelope.to_bytes())]
    )
    b = browsing
    b.sign_in(seeded.admin)
    row = b.page.locator(f'tr[data-device="{seeded.device}"]')
    expect(row).to_contain_text("42 min 00 s behind")
    expect(b.page.locator("#devices th").nth(CLOCK)).to_have_text("Clock")
    b.shot("devices-clock-1280")
    b.page.set_viewport_size({"width": 390, "height": 844})
    b.page.reload()
    expect(row).to_contain_text("42 min 00 s behind")
    page_width = b.page.evaluate("document.documentElement.scrollWidth")
    assert page_width <= 390
    b.shot("devices-clock-390")
    clock_cell = row.locator("td").nth(CLOCK - 1)
    clock_cell.scroll_into_view_if_needed()
    expect(clock_cell).to_be_in_viewport()
    b.shot("devices-clock-390-scrolled")
    assert b.console_errors == []
