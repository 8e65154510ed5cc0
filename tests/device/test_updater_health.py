"""The health check of a new agent on trial (``device/updater/health.py``) on a real store and real
slots: passed, the trial becomes good and its keys are pinned; failed, the reason is recorded,
``current`` goes back, and an ``installed`` report never acknowledged leaves the outbox."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from device_peer import device_settings

from resonera.common.envelope import decode_envelope
from resonera.device.store import DeviceStore
from resonera.device.updater.health import TrialHealth
from resonera.device.updater.slots import MARKER, AgentSlots, Trial

pytestmark = pytest.mark.real_clock  # the check waits out its timeout on the monotonic clock

SHA = "a" * 64


@pytest.fixture
def on_trial(tmp_path: Path) -> Iterator[tuple[AgentSlots, DeviceStore]]:
    settings = device_settings(None, tmp_path, "upd-health")
    store = settings.open_store()
    slots = AgentSlots.of(settings.data_dir)
    slots.adopt(Path(sys.prefix))
    slots.path("b").mkdir()
    marker = {"version": "0.2.0", "sha256": SHA, "update_keys": ["k-new"]}
    (slots.path("b") / MARKER).write_text(json.dumps(marker))
    slots.switch_to_trial(Trial("b", "0.2.0", "0.1.0", "r7", SHA, 60.0, ("k-new",)))
    yield slots, store
    store.close()


def check(
    slots: AgentSlots,
    store: DeviceStore,
    *,
    connected: bool,
    kick: Callable[[], None] = lambda: None,
) -> str:
    """Run the check to its end; "passed" or "failed"."""
    said: list[str] = []
    trial = slots.trial_of("b")
    assert trial is not None
    TrialHealth(
        slots,
        "b",
        trial,
        store,
        "upd-health",
        None,  # no MCU configured (simulation)
        lambda: connected,
        lambda: "connection refused",
        kick,
        timeout_s=1.0,
        passed=lambda: said.append("passed"),
        failed=lambda: said.append("failed"),
        stop=threading.Event(),
    ).run()
    [outcome] = said
    return outcome


def updates_queued(store: DeviceStore) -> list[dict[str, object]]:
    bodies = [decode_envelope(m.payload) for m in store.pending(limit=100)]
    return [e.body for e in bodies if e.kind == "update"]


def test_a_trial_whose_installed_report_is_acknowledged_becomes_good_and_pins_its_keys(
    on_trial: tuple[AgentSlots, DeviceStore],
) -> None:
    slots, store = on_trial

    def server_acks() -> None:  # what the broker and the server do once it is published
        store.acknowledge([m.message_id for m in store.pending(limit=100)])

    assert check(slots, store, connected=True, kick=server_acks) == "passed"
    state = slots.state()
    assert state["good"] == {"slot": "b", "version": "0.2.0"} and state["trial"] is None
    assert state["update_keys"] == ["k-new"] and slots.current() == "b"


def test_no_broker_connection_rolls_the_trial_back_saying_so(
    on_trial: tuple[AgentSlots, DeviceStore],
) -> None:
    slots, store = on_trial
    assert check(slots, store, connected=False) == "failed"
    state = slots.state()
    assert state["trial"] is None and state["good"]["slot"] == "a" and slots.current() == "a"
    assert state["failure"]["reason"] == (
        "0.2.0: no broker connection within 1 s: connection refused"
    )
    assert state["failure"]["reported"] is False  # the previous agent reports it
    assert updates_queued(store) == []


def test_an_installed_report_never_acknowledged_fails_the_trial_and_leaves_the_outbox(
    on_trial: tuple[AgentSlots, DeviceStore],
) -> None:
    slots, store = on_trial
    assert check(slots, store, connected=True) == "failed"
    assert "installed report was not acknowledged" in slots.state()["failure"]["reason"]
    assert updates_queued(store) == []  # the server never hears "installed" of a rolled-back one
