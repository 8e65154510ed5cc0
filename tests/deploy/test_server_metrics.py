"""The metrics the alert rules watch, as the real server exports them on ``/metrics``: every name
the rules use, each device's last message and certificate expiry, safety events counted from what
ingest stored (routine hand-overs and revoked devices left out), and the ingest counters of
consumers that run as processes of their own (``PROMETHEUS_MULTIPROC_DIR``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import httpx
import pytest
from factories import event_body
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine
from sqlmodel import Session

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.server.db import make_engine, migrate
from resonera.server.desired import MemoryPublisher
from resonera.server.ingest import IngestProcessor, Received
from resonera.server.models import DeviceCertificateRow, DeviceRow
from resonera.server.runner import ServerProcess, run_server_in_thread
from resonera.server.settings import ServerSettings

RULES = resources.files("resonera.server.alerts") / "resonera.rules.yml"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'server.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def server(engine: Engine, tmp_path: Path) -> Iterator[ServerProcess]:
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp_path / 'server.db'}", http_port=0, demo=True
    )
    with run_server_in_thread(
        settings, ingest=False, engine=engine, publisher=MemoryPublisher()
    ) as running:
        yield running


def scrape(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def add_device(engine: Engine, device_id: str, *, revoked: bool = False, cert_days: int) -> None:
    now = datetime.now(UTC)
    with Session(engine) as session:
        session.add(DeviceRow(id=device_id, revoked=revoked, created_at=now))
        for days, superseded in ((cert_days - 60, now), (cert_days, None)):
            session.add(
                DeviceCertificateRow(
                    fingerprint=f"{device_id}-{days}",
                    device_id=device_id,
                    serial_number="1",
                    public_key="k",
                    how="enroll",
                    not_after=now.replace(microsecond=0) + timedelta(days=days),
                    issued_at=now,
                    superseded_at=superseded,
                )
            )
        session.commit()


def event(device_id: str, seq: int, at: datetime, **changes: object) -> Received:
    envelope = Envelope.create(
        device=device_id, seq=seq, kind="event", body=event_body(**changes), time=at
    )
    return Received(topics.up(device_id, "event"), envelope.to_bytes())


def test_the_server_exports_every_metric_the_rules_use(
    engine: Engine, server: ServerProcess
) -> None:
    add_device(engine, "dev-a", cert_days=20)
    add_device(engine, "dev-gone", revoked=True, cert_days=5)
    # stored five minutes ago (ingest's clock), so the safety events have settled
    stored_at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    ingest = IngestProcessor(engine, clock=lambda: stored_at)
    ingest.process(
        [
            Received(topics.status("dev-a"), b"online"),
            event("dev-a", 1, stored_at, type="fault"),
            event(
                "dev-a", 2, stored_at, type="consent_granted"
            ),  # routine: counted on the device, not here
            event("dev-a", 3, stored_at, type="dose_reached"),
        ]
    )
    samples = scrape(server)
    names = {name for name, _labels in samples}
    used = set(re.findall(r"\b(resonera_\w+?)(?:\{|\[|\)|\s)", RULES.read_text()))
    assert used, "the rules name no metric"
    assert used <= names, f"the rules use metrics the server does not export: {used - names}"

    assert samples[("resonera_device_last_seen_timestamp_seconds", (("device_id", "dev-a"),))] == (
        stored_at.timestamp()
    )
    expiry = samples[
        ("resonera_device_certificate_expiry_timestamp_seconds", (("device_id", "dev-a"),))
    ]
    assert 19 * 86400 < expiry - datetime.now(UTC).timestamp() <= 20 * 86400
    assert not [labels for _n, labels in samples if ("device_id", "dev-gone") in labels]
    assert samples[("resonera_safety_events_total", (("type", "fault"),))] == 1
    assert samples[("resonera_safety_events_total", (("type", "dose_reached"),))] == 1
    assert ("resonera_safety_events_total", (("type", "routine:consent_granted"),)) not in samples
    assert samples[("resonera_update_failures_total", ())] == 0

    # the next scrape adds what was stored since, once
    ingest.process(
        [event("dev-a", 4, stored_at, type="fault"), event("dev-a", 5, stored_at, type="fault")]
    )
    again = scrape(server)
    assert again[("resonera_safety_events_total", (("type", "fault"),))] == 3
    assert scrape(server)[("resonera_safety_events_total", (("type", "fault"),))] == 3


COUNT = """
from resonera.server import metrics
metrics.INGEST_RECEIVED.inc({received})
metrics.INGEST_QUARANTINED.inc({quarantined})
metrics.INGEST_LAG.observe(0.2)
"""
SCRAPE = """
import sys
from prometheus_client import generate_latest
from resonera.server.db import make_engine
from resonera.server.metrics import registry_for
sys.stdout.write(generate_latest(registry_for(make_engine(sys.argv[1]))).decode())
"""


def test_ingest_consumers_of_their_own_count_on_the_api_s_metrics(
    engine: Engine, tmp_path: Path
) -> None:
    """Two ``resonera-server ingest`` processes and the API, each a process of its own on the
    host, as the systemd units run them: the API's ``/metrics`` adds up their counters."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    for received, quarantined in ((10, 1), (5, 2)):
        code = COUNT.format(received=received, quarantined=quarantined)
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    url = str(engine.url)
    text = subprocess.run(
        [sys.executable, "-c", SCRAPE, url],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels or sample.labels.get("le") == "+Inf"
    }
    assert values["resonera_ingest_received_total"] == 15
    assert values["resonera_ingest_quarantined_total"] == 3
    assert values["resonera_ingest_lag_seconds_bucket"] == 2
    assert values["resonera_quarantine_rows"] == 0  # and the database's gauges beside them
