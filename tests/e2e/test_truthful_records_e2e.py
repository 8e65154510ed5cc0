"""Truthful records end to end (issue 21), every hop real: safety MCU simulator on a pty → sessions
with prompts between them → the device store → mosquitto → server ingest → SQLite → REST API.

A 0.05 s accidental start, a 61 s session of a 10 min plan, a short program played through and a
session cut by an overheating amplifier: the clinician sees two sessions done (the accidental
start and the 1 s faulted one do not count), every second of all four in the day's dose, and as
safety events only the two stops and the fault with what came of it; the FHIR export has one
AdverseEvent for each of those and none for the routine hand-overs an older agent still sends."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from support import Mosquitto

from resonera.common import serial_link as sl
from resonera.common.ids import new_id
from resonera.common.program import load_program_toml
from resonera.common.records import SafetyEventRecord
from resonera.common.settings import MqttSettings
from resonera.device.session import Session, SessionWatch, standalone_parts
from resonera.device.settings import DeviceSettings
from resonera.device.store import DeviceStore
from resonera.device.sync import DeviceSync
from resonera.engine.audio.calibration import packaged_calibration
from resonera.engine.audio.sinks import NullSink
from resonera.hardware.sim import Simulator
from resonera.server.bootstrap import demo_setup
from resonera.server.crypto import new_key_line
from resonera.server.runner import run_server_in_thread
from resonera.server.settings import ServerSettings

# Times the safety MCU's watchdogs against real time: the main pass only.
pytestmark = pytest.mark.realtime

PASSWORD = "e2e clinician password"
DEVICE = "e2e-truthful-1"


def _tone(name: str, seconds: float) -> str:
    return f"""
name = "{name}"
fade_in_s = 0.2
fade_out_s = 0.2
[[steps]]
duration_s = {seconds}
[[steps.layers]]
type = "tone"
frequency_hz = 1000
gain = 0.3
"""


def _stop_after(seconds: float, sample_rate: int, act: Callable[[], None]) -> SessionWatch:
    """A watch that calls ``act()`` once the session has played ``seconds``."""
    played = [0]

    def on_block(block: np.ndarray, _renderer: object) -> None:
        before = played[0]
        played[0] += len(block)
        if before < seconds * sample_rate <= played[0]:
            act()  # once

    return SessionWatch(on_block=on_block)


def _older_agents_routine(at: datetime) -> list[SafetyEventRecord]:
    """Routine hand-overs as an agent from before issue 21 recorded them."""
    common: dict[str, Any] = {"at": at, "simulation": False}
    return [
        SafetyEventRecord(event_id=new_id(), type="consent_granted",
                          cause="the safety MCU reports armed and unmuted", **common),
        SafetyEventRecord(event_id=new_id(), type="consent_withdrawn",
                          code=sl.FAULT_DEVICE_REQUEST,
                          cause="muted on request: muted on the device's request", **common),
        SafetyEventRecord(event_id=new_id(), type="transition", from_state="idle",
                          to_state="fault",
                          cause="muted on request: muted on the device's request", **common),
    ]  # fmt: skip


def test_the_clinician_sees_only_real_safety_events_and_sessions_that_count(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    mqtt = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    server_settings = ServerSettings(
        database_url=f"sqlite:///{tmp_path / 'server.db'}",
        http_port=0,
        mqtt=mqtt,
        demo=True,
        patient_keys=new_key_line("e2e"),
    )
    with Simulator() as sim, run_server_in_thread(server_settings) as server:
        setup = demo_setup(
            server.engine,
            server_settings,
            device_id=DEVICE,
            email="clinician@e2e.test",
            password=PASSWORD,
        )
        device = DeviceSettings(
            device_id=DEVICE,
            data_dir=tmp_path / "device",
            mqtt=mqtt,
            serial_url=sim.port_path,
            sink="null",
            calibration_file=packaged_calibration(),
            arm_timeout_s=3.0,
        )
        store = DeviceStore(device.store_path)
        rate = device.sample_rate
        with standalone_parts(device, store) as parts:
            assert parts.monitor is not None

            def play(
                program: str, *, stop_after_s: float = 0.0, fault_after_s: float = 0.0
            ) -> None:
                session = Session(parts)
                if stop_after_s or fault_after_s:
                    act = session.stop if stop_after_s else sim.over_temperature
                    session.watch = _stop_after(stop_after_s or fault_after_s, rate, act)
                session.run(load_program_toml(program), NullSink())
                if fault_after_s:
                    sim.reset()  # it cools down; the next ARM clears the latched fault
                # a prompt between sessions: the MCU claimed and given back
                assert parts.monitor is not None
                parts.monitor.claim("a prompt between sessions", timeout_s=3.0).release()

            play(_tone("long", 600), stop_after_s=1e-9)  # stopped at its first block
            play(_tone("long", 600), stop_after_s=61.0)
            play(_tone("short", 2))
            play(_tone("long", 600), fault_after_s=1.0)
        for record in _older_agents_routine(datetime.now(UTC)):
            store.record_event(DEVICE, record)
        with DeviceSync(device, store) as sync:
            assert sync.drain(timeout_s=30), sync.last_error
        assert store.outbox_depth() == 0

        token = httpx.post(
            f"{server.api_url}/auth/login",
            json={"email": "clinician@e2e.test", "password": PASSWORD},
        ).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        patient = f"{server.url}/api/v1/patients/{setup.patient_id}"
        sessions = httpx.get(f"{patient}/sessions", headers=auth).json()
        adherence = httpx.get(f"{patient}/adherence", headers=auth).json()
        dose = httpx.get(f"{patient}/dose", params={"days": 1}, headers=auth).json()
        events = httpx.get(f"{patient}/safety-events", headers=auth).json()
        bundle = httpx.get(f"{patient}/export/fhir", headers=auth).json()

    played = sorted(s["played_s"] for s in sessions)
    assert len(played) == 4
    # the fault reaches the player in real time, the null sink plays faster: more than 1 s,
    # far less than the 60 s that would count
    assert played[0] < 0.2 and 1.0 <= played[1] < 30.0
    assert played[2] == pytest.approx(2.0, abs=0.05) and played[3] == pytest.approx(61.0, abs=0.2)
    assert sum(week["done"] for week in adherence["weeks"]) == 2
    [today] = dose["days"]
    assert today["sessions"] == 2
    assert today["played_s"] == pytest.approx(sum(played))  # every second counts toward the dose
    assert today["dose_fraction"] == pytest.approx(sum(s["dose_fraction"] for s in sessions))
    assert min(s["dose_fraction"] for s in sessions) > 0  # the 0.05 s start's too

    kinds = sorted((e["event_type"], e["body"].get("to_state")) for e in events)
    # the two stops (the person's own) and the fault with what came of it; the hot reading's
    # warnings may come and clear as the telemetry goes
    assert [k for k in kinds if not k[0].startswith("warning")] == [
        ("consent_withdrawn", None),
        ("fault", None),
        ("transition", "fault"),
        ("transition", "idle"),
        ("transition", "idle"),
    ]
    resources = [entry["resource"] for entry in bundle["entry"]]
    adverse = [r for r in resources if r["resourceType"] == "AdverseEvent"]
    assert len(adverse) == len(events)
    assert not any("device's request" in a["event"]["text"] for a in adverse)
