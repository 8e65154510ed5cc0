"""Prometheus metrics: ingest counters and lag (this process), and gauges read from the database
at scrape time (quarantine size, devices online, each device's last message and certificate expiry,
safety events, agent updates reported failed), so any API process reports the fleet's state. The
alert rules on them ship in ``server/alerts/resonera.rules.yml``.

Ingest consumers that run as processes of their own (``resonera-server ingest``, the systemd
template ``resonera-ingest@.service``) serve no HTTP: with ``PROMETHEUS_MULTIPROC_DIR`` set, every
process on the host writes its counters into that folder (prometheus_client's multiprocess mode) and
the API's ``/metrics`` adds them up. The folder must be empty when the first of them starts (the
units use ``/run/resonera/metrics``, emptied at boot).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from resonera.common.clock import Clock, utc_now
from resonera.common.routine_events import ROUTINE_TYPE_PREFIX
from resonera.server import fleet_alerts
from resonera.server.models import (
    DeviceStateRow,
    QuarantineRow,
    SafetyEventRow,
    table_of,
)

log = logging.getLogger(__name__)

REGISTRY: Final = CollectorRegistry(auto_describe=True)

INGEST_RECEIVED: Final = Counter(
    "resonera_ingest_received", "Device messages received by ingest", registry=REGISTRY
)
INGEST_STORED: Final = Counter(
    "resonera_ingest_stored", "Device messages stored for the first time", registry=REGISTRY
)
INGEST_DUPLICATES: Final = Counter(
    "resonera_ingest_duplicates", "Device messages received again (stored once)", registry=REGISTRY
)
INGEST_QUARANTINED: Final = Counter(
    "resonera_ingest_quarantined", "Device messages refused into quarantine", registry=REGISTRY
)
INGEST_STORE_ERRORS: Final = Counter(
    "resonera_ingest_store_errors", "Batches the database failed (retried)", registry=REGISTRY
)
INGEST_LAG: Final = Histogram(
    "resonera_ingest_lag_seconds",
    "Time from the device stamping a message to its commit",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
    registry=REGISTRY,
)


#: prometheus_client's own variable: the folder every process of the host writes its counters to.
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
#: A safety event row is counted once it is this old (by ``received_at``), so that a row a
#: concurrent transaction commits with a lower id than one already counted is not skipped.
SETTLE: Final = timedelta(seconds=60)


class DatabaseGauges(Collector):
    """Gauges computed with one query each at scrape time, and the safety events counted from the
    table by id range (only the rows stored since the last scrape are read)."""

    def __init__(self, engine: Engine, *, clock: Clock = utc_now) -> None:
        self._engine = engine
        self._clock = clock
        self._lock = threading.Lock()
        #: Safety events counted so far by type, and the highest id counted.
        self._events: dict[str, int] = {}
        self._events_through = 0

    def collect(self) -> Iterator[Metric]:
        try:
            with self._engine.connect() as conn:
                metrics = [*self._fleet(conn), self._safety_events(conn), _update_failures(conn)]
        except SQLAlchemyError as exc:
            log.warning("metrics: database unavailable: %s", exc)
            return
        yield from metrics

    def _fleet(self, conn: Connection) -> list[Metric]:
        quarantine = table_of(QuarantineRow)
        state = table_of(DeviceStateRow)
        held = conn.execute(select(func.count()).select_from(quarantine)).scalar_one()
        online = conn.execute(
            select(func.count()).select_from(state).where(state.c.online.is_(True))
        ).scalar_one()
        # The devices page's fleet alerts read the same two queries: one place for each.
        revoked = fleet_alerts.revoked_devices(conn)
        last_seen = GaugeMetricFamily(
            "resonera_device_last_seen_timestamp_seconds",
            "When the server last heard from the device: its last message, or its retained status "
            "saying online (not revoked devices)",
            labels=["device_id"],
        )
        for device_id, heard in sorted(fleet_alerts.last_heard(conn).items()):
            if device_id not in revoked:
                last_seen.add_metric([device_id], heard.timestamp())
        expiry = GaugeMetricFamily(
            "resonera_device_certificate_expiry_timestamp_seconds",
            "When the device's current certificate expires (not revoked devices)",
            labels=["device_id"],
        )
        for device_id, not_after in sorted(fleet_alerts.certificate_ends(conn).items()):
            if device_id not in revoked:
                expiry.add_metric([device_id], not_after.timestamp())
        return [
            GaugeMetricFamily(
                "resonera_quarantine_rows", "Messages held in quarantine", value=float(held)
            ),
            GaugeMetricFamily(
                "resonera_devices_online",
                "Devices whose retained status is online",
                value=float(online),
            ),
            last_seen,
            expiry,
        ]

    def _safety_events(self, conn: Connection) -> Metric:
        """Stored safety events by type, routine hand-overs left out: counted since this process
        started (a counter: Prometheus's ``increase`` takes the first scrape as its base)."""
        events = table_of(SafetyEventRow)
        settled = self._clock() - SETTLE
        with self._lock:
            through = conn.execute(
                select(func.max(events.c.id)).where(
                    events.c.id > self._events_through, events.c.received_at < settled
                )
            ).scalar_one()
            if through is not None:
                for kind, count in conn.execute(
                    select(events.c.event_type, func.count())
                    .where(
                        events.c.id > self._events_through,
                        events.c.id <= through,
                        events.c.event_type.not_like(f"{ROUTINE_TYPE_PREFIX}%"),
                    )
                    .group_by(events.c.event_type)
                ):
                    self._events[kind] = self._events.get(kind, 0) + int(count)
                self._events_through = int(through)
            counted = dict(self._events)
        family = CounterMetricFamily(
            "resonera_safety_events",
            "Safety events stored by ingest, by type (routine hand-overs left out)",
            labels=["type"],
        )
        for kind, count in sorted(counted.items()):
            family.add_metric([kind], float(count))
        return family


def _update_failures(conn: Connection) -> Metric:
    """Update reports saying failed or rolled back, from the database (every API process says the
    same; the fleet alert reads the same rows)."""
    failed = sum(fleet_alerts.update_failures(conn).values())
    return CounterMetricFamily(
        "resonera_update_failures",
        "Agent updates that devices reported failed or rolled back",
        value=float(failed),
    )


def registry_for(engine: Engine, *, clock: Clock = utc_now) -> CollectorRegistry:
    """A registry with the ingest metrics (this process's, or with ``PROMETHEUS_MULTIPROC_DIR``
    every process's of the host) and the database gauges of ``engine``."""
    registry = CollectorRegistry(auto_describe=False)
    folder = os.environ.get(MULTIPROC_ENV)
    if folder:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Forward())
    registry.register(DatabaseGauges(engine, clock=clock))
    return registry


class _Forward(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
