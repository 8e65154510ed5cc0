"""A slow consumer: the ingest consumer's database holds a real write lock from another
connection most of the time (``SlowDatabase``), while simulated devices (real store, outbox, sync
code, mutual TLS) keep producing. The broker's queue stays bounded by what the devices still hold,
each outbox by its configured bound (what exceeds it is ``metrics``, thinned and counted, never a
session or a safety event), and once the database is fast again every record is stored once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet import connected_fleet
from support import require_tool

from resonera.device.settings import OutboxLimits
from resonera.stack.fleet_sim import Fleet, LocalStack, local_stack, run_slow_consumer

pytestmark = pytest.mark.slow

DEVICES = int(os.environ.get("RESONERA_FLEET_SLOW_DEVICES", "20"))
#: The smallest bound a device accepts: reached within the slowdown at this production rate.
OUTBOX = OutboxLimits(max_bytes=64 * 1024)
#: At most this slow; the slowdown ends once about one metrics message per device was thinned.
SLOW_S = 30.0


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    require_tool("mosquitto")
    with local_stack(tmp_path / "fleet", consumers=1) as running:
        yield running


@pytest.fixture
def fleet(stack: LocalStack) -> Iterator[Fleet]:
    with connected_fleet(stack, DEVICES, outbox=OUTBOX) as fleet:
        yield fleet


def test_slow_consumer_bounds_queues_drops_nothing_silently_and_catches_up(
    stack: LocalStack, fleet: Fleet
) -> None:
    result = run_slow_consumer(
        stack,
        fleet,
        slow_s=SLOW_S,
        interval_s=0.1,
        enough=lambda: fleet.metrics_thinned() >= DEVICES,
    )
    assert result.drained, "the outboxes did not drain once the database was fast again"
    # The slowdown was real: the devices produced faster than the consumer could store.
    assert result.acked_rate < result.produced_rate
    assert result.peak_pending > 2 * DEVICES
    # The broker never held more than about two copies of what the devices still hold
    # (a resend can meet its original in the queue), plus retained states; it dropped nothing.
    assert result.broker_dropped == 0
    assert result.peak_broker_held <= 2 * result.peak_pending + 3 * DEVICES + 100
    # Each outbox stayed within its bound (give or take the record queued before the thinning).
    assert result.peak_outbox_bytes <= OUTBOX.max_bytes + 4096
    assert result.thinned > 0, "the outbox bound was never reached: the scenario proved nothing"

    produced = {(d.device_id, m) for d in fleet.devices for m in d.produced}
    metrics = {(d.device_id, m) for d in fleet.devices for m in d.produced_metrics}
    stored = stack.stored_ids()
    assert len(stored) == len(set(stored)), "a record was stored twice"
    assert set(stored) <= produced
    missing = produced - set(stored)
    # Only metrics may be missing, and only as many as the devices counted as thinned.
    assert missing <= metrics, f"sessions or safety events lost: {sorted(missing - metrics)[:3]}"
    assert len(missing) <= result.thinned
    assert fleet.outbox_depths() == (0, 0)
    assert stack.consumers[0].poll() is None
    log = (stack.workdir / "ingest-1.log").read_text(errors="replace")
    assert "Traceback" not in log
