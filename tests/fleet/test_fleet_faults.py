"""A thousand simulated devices (real device store, outbox and sync code, own certificates, mutual
TLS) against a real mosquitto and real ``resonera-server ingest`` processes on SQLite: every record
is stored exactly once, through a broker restart, killed consumers, a reconnect storm and two
consumers on the shared subscription. One fleet is held for the whole module (connecting 1,000
TLS clients is the expensive part); each test counts only the records it produced."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet import assert_exactly_once, connected_fleet
from support import require_tool

from resonera.stack.fleet_sim import Fleet, LocalStack, local_stack

pytestmark = pytest.mark.slow

DEVICES = int(os.environ.get("RESONERA_FLEET_DEVICES", "1000"))
DRAIN_S = 150.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    require_tool("mosquitto")
    with local_stack(tmp_path_factory.mktemp("fleet"), consumers=1) as running:
        yield running


@pytest.fixture(scope="module")
def fleet(stack: LocalStack) -> Iterator[Fleet]:
    with connected_fleet(stack, DEVICES) as fleet:
        yield fleet


def test_every_record_of_a_thousand_devices_is_stored_exactly_once(
    stack: LocalStack, fleet: Fleet
) -> None:
    fleet.produce(2, events_every=2, metrics_every=2)
    assert fleet.drain(DRAIN_S), f"{fleet.pending} messages unacknowledged"
    assert fleet.connected == DEVICES
    counts = stack.stored()
    assert counts == {
        "session_record": 2 * DEVICES,
        "safety_event": DEVICES,
        "device_message": DEVICES,
    }
    assert_exactly_once(stack, fleet)


def test_broker_restart_and_killed_consumers_lose_and_duplicate_nothing(
    stack: LocalStack, fleet: Fleet
) -> None:
    fleet.produce(1)
    stack.kill_consumers()  # a crash: whatever it held unacknowledged comes again
    stack.restart_broker()
    fleet.produce(1)  # queued while the broker was away or coming back
    stack.start_consumer()
    assert fleet.drain(DRAIN_S), f"{fleet.pending} messages unacknowledged"
    assert fleet.connected == DEVICES
    assert_exactly_once(stack, fleet)


def test_reconnect_storm_recovers_and_drains(stack: LocalStack, fleet: Fleet) -> None:
    fleet.produce(1)
    fleet.drop_all()
    fleet.produce(1)
    assert fleet.drain(DRAIN_S), f"{fleet.pending} messages unacknowledged"
    assert fleet.wait(lambda: fleet.connected == DEVICES, 60.0)
    assert_exactly_once(stack, fleet)


def test_two_consumers_on_the_shared_subscription_keep_exactly_once(
    stack: LocalStack, fleet: Fleet
) -> None:
    stack.start_consumer()
    assert len(stack.consumers) == 2
    fleet.produce(2)
    assert fleet.drain(DRAIN_S), f"{fleet.pending} messages unacknowledged"
    assert_exactly_once(stack, fleet)
    logs = [p.read_text(errors="replace") for p in Path(stack.workdir).glob("ingest-*.log")]
    assert not any("Traceback" in text for text in logs)
