"""The fleet's alert conditions on the admin's devices page (issue 25, "Alerts"): the conditions and
thresholds of the shipped Prometheus rules, evaluated on the database. A fleet where every
condition the server can see is met (a device unheard for 3 days, messages 20 minutes late, a
quarantine share above 5 %, a certificate ending in 10 days, 6 faults in the last hour) and
each figure computed here from the rows the test wrote; then the same page with none met. In
Chromium at 1280 and 390 px: nothing wider than the window."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from dashboard.helpers import Browsing, Seeded, table_cells
from fastapi.testclient import TestClient
from playwright.sync_api import expect
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.common.ids import new_id
from resonera.server.alerts import rules
from resonera.server.models import (
    DeviceCertificateRow,
    DeviceRow,
    DeviceStateRow,
    MessageRow,
    QuarantineRow,
    SafetyEventRow,
    SessionRow,
)

SignIn = Callable[[str], str]
CERT_ENDS = 10  # the last column but one: "Certificate ends"
LAST_SEEN = 2


def _cert(device_id: str, not_after: datetime, **more: datetime) -> DeviceCertificateRow:
    return DeviceCertificateRow(
        fingerprint=new_id().replace("-", ""),
        device_id=device_id,
        serial_number="1",
        public_key="k",
        how="enroll",
        not_after=not_after,
        issued_at=not_after - timedelta(days=365),
        **more,
    )


def _troubled_fleet(engine: Engine, now: datetime) -> None:
    with Session(engine) as db:
        db.add(DeviceRow(id="dev-quiet", created_at=now - timedelta(days=30)))
        db.add(DeviceRow(id="dev-gone", revoked=True, created_at=now - timedelta(days=30)))
        db.add(DeviceStateRow(device_id="dev-quiet", last_received_at=now - timedelta(days=3)))
        db.add(DeviceStateRow(device_id="dev-gone", last_received_at=now - timedelta(days=5)))
        db.add(_cert("dev-a", now + timedelta(days=10)))
        db.add(_cert("dev-a", now + timedelta(days=1), superseded_at=now - timedelta(days=1)))
        db.add(_cert("dev-b", now + timedelta(days=90)))
        db.add(_cert("dev-gone", now + timedelta(days=2)))  # revoked: no alert
        for i in range(300):  # telemetry that waited 20 minutes
            db.add(
                MessageRow(
                    device_id="dev-b",
                    message_id=new_id(),
                    kind="metrics",
                    seq=10**6 + i,
                    device_time=now - timedelta(minutes=21),
                    received_at=now - timedelta(minutes=1),
                    body="{}",
                )
            )
        for _ in range(40):
            db.add(
                QuarantineRow(
                    received_at=now - timedelta(minutes=2),
                    topic="resonera/v1/dev-x/up/event",
                    device_id="dev-x",
                    payload=b"{",
                    reason="not JSON",
                )
            )
        for i, (kind, ago) in enumerate(
            [("fault", 5)] * 4
            + [("link_down", 10), ("no_monitor", 20), ("dose_reached", 5), ("fault", 90)]
        ):
            db.add(
                SafetyEventRow(
                    device_id="dev-a",
                    message_id=new_id(),
                    seq=10**6 + i,
                    device_time=now - timedelta(minutes=ago),
                    received_at=now - timedelta(minutes=ago),
                    event_type=kind,
                    body={},
                )
            )
        db.commit()


def _expected(engine: Engine, now: datetime) -> dict[str, tuple[bool, str]]:
    """Each rule's state and what the page says it found, from the rows themselves."""
    with Session(engine) as db:
        stored = [
            *db.exec(select(SessionRow.received_at, SessionRow.device_time)).all(),
            *db.exec(select(SafetyEventRow.received_at, SafetyEventRow.device_time)).all(),
            *db.exec(select(MessageRow.received_at, MessageRow.device_time)).all(),
        ]
        quarantined = [r.received_at for r in db.exec(select(QuarantineRow)).all()]
        events = db.exec(select(SafetyEventRow)).all()
    lag_window = [dt for at, dt in stored if at >= now - timedelta(minutes=15)]
    late = sum(
        1
        for at, dt in stored
        if at >= now - timedelta(minutes=15) and (at - dt).total_seconds() > 300
    )
    held = sum(1 for at in quarantined if at >= now - timedelta(minutes=15))
    received = len(lag_window) + held
    faults = sum(
        1
        for e in events
        if e.received_at >= now - timedelta(hours=1) and e.event_type in rules.FAULT_TYPES
    )
    return {
        "ResoneraDeviceOffline": (True, "1 device: dev-quiet (last heard 3 d 0 h ago)."),
        "ResoneraIngestLagHigh": (
            2 * late > len(lag_window),
            f"{late} of {len(lag_window)} messages stored in the last 15 min came more than "
            "5 min after their device stamped them.",
        ),
        "ResoneraQuarantineRateHigh": (
            held / received > 0.05,
            f"{held} of {received} messages received in the last 15 min quarantined "
            f"({held / received * 100:.1f} %).",
        ),
        "ResoneraCertificateExpiring": (True, "1 device: dev-a (ends in 9 d 23 h)."),
        "ResoneraUpdateFailures": (False, "none."),
        "ResoneraSafetyFaultsHigh": (
            faults > 5,
            f"{faults} faults in the last hour: dev-a ({faults} faults).",
        ),
    }


def _panel(html: str) -> dict[str, tuple[bool, str]]:
    found = {}
    for rule, state, what in re.findall(
        r'<li class="(?:met|clear)" data-rule="(\w+)">\s*<span class="state">(\w+)</span>\s*'
        r'<span class="what">(.*?)</span>\s*</li>',
        html,
        re.S,
    ):
        text = re.sub(r"\s+([:,.)])", r"\1", " ".join(re.sub(r"<[^>]+>", " ", what).split()))
        found[rule] = (state == "Alert", text.split("): ", 1)[1])
    return found


def test_the_devices_page_shows_the_rules_conditions_from_the_database(
    client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    now = datetime.now(UTC)
    _troubled_fleet(engine, now)
    sign_in(seeded.admin)
    page = client.get("/devices").text
    expected = _expected(engine, now)
    assert {rule for rule, (met, _) in expected.items() if met} == {
        "ResoneraDeviceOffline",
        "ResoneraIngestLagHigh",
        "ResoneraQuarantineRateHigh",
        "ResoneraCertificateExpiring",
        "ResoneraSafetyFaultsHigh",
    }  # the fleet was built to meet every condition the database can show
    assert _panel(page) == expected
    assert "Fleet alerts: 5 of 6 conditions met" in page
    # Each device named links to its row, where the cell in question is marked.
    for device_id in ("dev-quiet", "dev-a"):
        assert f'href="#device-{device_id}"' in page and f'id="device-{device_id}"' in page
    rows = {row[0]: row for row in table_cells(page, "devices")}
    quiet_seen = (now - timedelta(days=3)).strftime("%Y-%m-%d %H:%M UTC")
    assert rows["dev-quiet"][LAST_SEEN] == quiet_seen
    assert f'<strong class="attention">{quiet_seen}</strong>' in page
    ends = (now + timedelta(days=10)).date().isoformat()
    assert rows["dev-a"][CERT_ENDS] == ends  # the current certificate, not the superseded one
    assert f'<strong class="attention">{ends}</strong>' in page
    assert rows["dev-b"][CERT_ENDS] == (now + timedelta(days=90)).date().isoformat()
    assert rows["dev-gone"][CERT_ENDS] == (now + timedelta(days=2)).date().isoformat()
    assert "dev-gone (" not in page  # revoked: in the table, in no condition


def test_a_healthy_fleet_meets_no_condition(
    client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    now = datetime.now(UTC)
    with Session(engine) as db:
        db.add(_cert("dev-a", now + timedelta(days=rules.CERTIFICATE_WITHIN.days + 1)))
        db.commit()
    sign_in(seeded.admin)
    panel = _panel(client.get("/devices").text)
    assert {rule: met for rule, (met, _) in panel.items()} == dict.fromkeys(
        (
            "ResoneraDeviceOffline",
            "ResoneraIngestLagHigh",
            "ResoneraQuarantineRateHigh",
            "ResoneraCertificateExpiring",
            "ResoneraUpdateFailures",
            "ResoneraSafetyFaultsHigh",
        ),
        False,
    )
    # The seeded messages were stored as they were sent: none late, none quarantined.
    assert panel["ResoneraQuarantineRateHigh"][1].startswith("0 of ")
    assert panel["ResoneraDeviceOffline"][1] == "none."


def test_the_alerts_panel_in_chromium_fits_a_phone(
    browsing: Browsing, seeded: Seeded, engine: Engine
) -> None:
    _troubled_fleet(engine, datetime.now(UTC))
    b = browsing
    b.sign_in(seeded.admin)
    b.goto("/devices")
    panel = b.page.locator("#fleet-alerts")
    expect(panel.get_by_role("heading")).to_have_text("Fleet alerts: 5 of 6 conditions met")
    met = panel.locator("li.met").first
    colour = met.locator(".state").evaluate("el => getComputedStyle(el).color")
    assert colour == "rgb(154, 52, 18)"  # the warning colour
    for label, size in (("1280", (1280, 900)), ("390", (390, 844))):
        b.page.set_viewport_size({"width": size[0], "height": size[1]})
        width = b.page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert width == 0, f"the devices page overflows at {label} px"
        b.shot_of("#fleet-alerts", f"alerts-{label}")
        b.shot(f"devices-{label}")
    panel.get_by_role("link", name="dev-quiet").click()
    expect(b.page).to_have_url(re.compile(r"#device-dev-quiet$"))
    assert b.console_errors == []
