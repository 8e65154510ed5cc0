"""``fleet_alerts`` on SQLite and PostgreSQL (the lag is SQL of each dialect): each condition at
its threshold, one side and the other, figures computed here from the rows written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from resonera.common.ids import new_id
from resonera.server.alerts import rules
from resonera.server.fleet_alerts import FleetAlerts, fleet_alerts
from resonera.server.models import (
    DeviceCertificateRow,
    DeviceRow,
    DeviceStateRow,
    MessageRow,
    QuarantineRow,
    SafetyEventRow,
)

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _messages(db: Session, late: int, on_time: int) -> None:
    """Telemetry received a minute ago: ``late`` stamped 5 min 1 s before, the rest 2 s before."""
    for i in range(late + on_time):
        waited = (
            rules.INGEST_LAG_MEDIAN + timedelta(seconds=1) if i < late else timedelta(seconds=2)
        )
        db.add(
            MessageRow(
                device_id="dev-a",
                message_id=new_id(),
                kind="metrics",
                seq=i,
                device_time=NOW - timedelta(minutes=1) - waited,
                received_at=NOW - timedelta(minutes=1),
                body="{}",
            )
        )


def _evaluate(engine: Engine) -> FleetAlerts:
    with engine.connect() as conn:
        return fleet_alerts(conn, NOW)


def _met(alerts: FleetAlerts) -> dict[str, bool]:
    return {c.rule: c.met for c in alerts.conditions}


@pytest.mark.parametrize(("late", "on_time", "met"), [(10, 10, False), (11, 10, True)])
def test_ingest_lag_is_met_when_more_than_half_the_messages_are_late(
    engine: Engine, late: int, on_time: int, met: bool
) -> None:
    with Session(engine) as db:
        _messages(db, late, on_time)
        db.commit()
    lag = _evaluate(engine).conditions[1]
    assert lag.rule == "ResoneraIngestLagHigh" and lag.met is met
    assert lag.found.startswith(f"{late} of {late + on_time} messages stored in the last 15 min")


@pytest.mark.parametrize(("held", "met"), [(1, False), (2, True)])
def test_the_quarantine_share_above_5_percent(engine: Engine, held: int, met: bool) -> None:
    with Session(engine) as db:
        _messages(db, 0, 19)
        for _ in range(held):
            db.add(
                QuarantineRow(
                    received_at=NOW - timedelta(minutes=3),
                    topic="t",
                    device_id=None,
                    payload=b"",
                    reason="r",
                )
            )
        # quarantined before the window: counts for nothing
        db.add(
            QuarantineRow(
                received_at=NOW - timedelta(minutes=16), topic="t", payload=b"", reason="r"
            )
        )
        db.commit()
    share = _evaluate(engine).conditions[2]
    assert share.met is met  # 1 of 20 is 5 %, not above; 2 of 21 is 9.5 %
    assert share.found == (
        f"{held} of {19 + held} messages received in the last 15 min quarantined "
        f"({held / (19 + held) * 100:.1f} %)"
    )


def test_offline_certificates_and_faults_at_their_bounds(engine: Engine) -> None:
    def device(device_id: str, **state: Any) -> None:
        db.add(DeviceRow(id=device_id, created_at=NOW - timedelta(days=60)))
        db.add(DeviceStateRow(device_id=device_id, **state))

    def cert(device_id: str, ends_in: timedelta) -> None:
        db.add(
            DeviceCertificateRow(
                fingerprint=new_id().replace("-", ""),
                device_id=device_id,
                serial_number="1",
                public_key="k",
                how="enroll",
                not_after=NOW + ends_in,
                issued_at=NOW - timedelta(days=300),
            )
        )

    with Session(engine) as db:
        second = timedelta(seconds=1)
        device("dev-edge", last_received_at=NOW - rules.OFFLINE_AFTER)
        device("dev-quiet", last_received_at=NOW - rules.OFFLINE_AFTER - second)
        # its retained status says online since an hour: heard
        device(
            "dev-status",
            last_received_at=NOW - timedelta(days=9),
            online=True,
            status_at=NOW - timedelta(hours=1),
        )
        cert("dev-edge", rules.CERTIFICATE_WITHIN)
        cert("dev-quiet", rules.CERTIFICATE_WITHIN - second)
        for i in range(rules.SAFETY_FAULTS_MAX):
            db.add(
                SafetyEventRow(
                    device_id="dev-edge",
                    message_id=new_id(),
                    seq=i,
                    device_time=NOW - timedelta(minutes=10),
                    received_at=NOW - timedelta(minutes=10),
                    event_type=rules.FAULT_TYPES[i % len(rules.FAULT_TYPES)],
                    body={},
                )
            )
        db.commit()
    alerts = _evaluate(engine)
    offline, _lag, _share, certificates, updates, faults = alerts.conditions
    assert [f.device_id for f in offline.devices] == ["dev-quiet"]
    assert [f.device_id for f in certificates.devices] == ["dev-quiet"]
    assert alerts.last_heard["dev-status"] == NOW - timedelta(hours=1)
    assert not faults.met and faults.found == f"{rules.SAFETY_FAULTS_MAX} faults in the last hour"
    assert not updates.met
    with Session(engine) as db:
        db.add(
            SafetyEventRow(
                device_id="dev-quiet",
                message_id=new_id(),
                seq=99,
                device_time=NOW,
                received_at=NOW - timedelta(minutes=59),
                event_type="mcu_restarted",
                body={},
            )
        )
        db.commit()
    faults = _evaluate(engine).conditions[5]
    assert faults.met
    assert [(f.device_id, f.detail) for f in faults.devices] == [
        ("dev-edge", f"{rules.SAFETY_FAULTS_MAX} faults"),
        ("dev-quiet", "1 fault"),
    ]
    assert _met(_evaluate(engine))["ResoneraDeviceOffline"]


def test_the_metrics_report_what_the_devices_page_reads(engine: Engine, client: Any) -> None:
    """``/metrics``'s last seen and certificate ends are the page's own queries; revoked devices
    are left out of the metrics, heard and certified as they may be."""
    with Session(engine) as db:
        for device_id, revoked in (("dev-a", False), ("dev-gone", True)):
            db.add(DeviceRow(id=device_id, revoked=revoked, created_at=NOW - timedelta(days=60)))
            db.add(
                DeviceStateRow(
                    device_id=device_id,
                    last_received_at=NOW - timedelta(hours=3),
                    online=True,
                    status_at=NOW - timedelta(hours=1),
                )
            )
            db.add(
                DeviceCertificateRow(
                    fingerprint=new_id().replace("-", ""),
                    device_id=device_id,
                    serial_number="1",
                    public_key="k",
                    how="enroll",
                    not_after=NOW + timedelta(days=20),
                    issued_at=NOW - timedelta(days=300),
                )
            )
        db.commit()
    page = _evaluate(engine)
    assert set(page.last_heard) == set(page.certificate_ends) == {"dev-a", "dev-gone"}
    text = client.get("/metrics").text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("resonera_device_")
    }
    assert samples == {
        'resonera_device_last_seen_timestamp_seconds{device_id="dev-a"}': (
            page.last_heard["dev-a"].timestamp()
        ),
        'resonera_device_certificate_expiry_timestamp_seconds{device_id="dev-a"}': (
            page.certificate_ends["dev-a"].timestamp()
        ),
    }
    # heard: the retained status an hour ago, later than the last message
    assert page.last_heard["dev-a"] == NOW - timedelta(hours=1)
