"""Prometheus metrics: ingest counters and lag (this process), and gauges read from the database
at scrape time (quarantine size, devices online), so any API process reports the fleet's state."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from resonera.server.models import DeviceStateRow, QuarantineRow, table_of

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


class DatabaseGauges(Collector):
    """Gauges computed with one query each at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        quarantine = table_of(QuarantineRow)
        state = table_of(DeviceStateRow)
        try:
            with self._engine.connect() as conn:
                held = conn.execute(select(func.count()).select_from(quarantine)).scalar_one()
                online = conn.execute(
                    select(func.count()).select_from(state).where(state.c.online.is_(True))
                ).scalar_one()
        except SQLAlchemyError as exc:
            log.warning("metrics: database unavailable: %s", exc)
            return
        yield GaugeMetricFamily(
            "resonera_quarantine_rows", "Messages held in quarantine", value=float(held)
        )
        yield GaugeMetricFamily(
            "resonera_devices_online",
            "Devices whose retained status is online",
            value=float(online),
        )


def registry_for(engine: Engine) -> CollectorRegistry:
    """A registry with this process's ingest metrics and the database gauges of ``engine``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Forward())
    registry.register(DatabaseGauges(engine))
    return registry


class _Forward(Collector):
    def collect(self) -> Iterator[object]:  # type: ignore[override]
        yield from REGISTRY.collect()
