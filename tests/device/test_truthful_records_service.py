"""Issue 21's test: scripted use standing for about ten minutes of a person's use (sessions started
and stopped, the prompts between sessions claiming and giving back the MCU, the link dropping and
coming back, one real fault injected through the simulator), compressed in time with a short
program, yields only the safety events the script caused; everything else is counted.

The device service with its one monitor on the simulator's real pty, the player through PyAudio
into the PulseAudio null sink, prompts spoken with espeak-ng, the desired state over mosquitto."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from device_peer import Peer, ServerKey, service_on_mcu
from support import Mosquitto, require_tool, wait_until

from resonera.common.prescription import prescribe
from resonera.common.program import load_program_toml
from resonera.hardware.firmware.config import BoardConfig

SHORT = """
name = "short"
fade_in_s = 0.2
fade_out_s = 0.2
[[steps]]
duration_s = 3
[[steps.layers]]
type = "tone"
frequency_hz = 1000
gain = 0.3
"""


# Plays through PortAudio's callback stream, which stalls under libfaketime; dates nothing itself;
# the simulated MCU's 100 ms watchdogs want the machine to themselves.
@pytest.mark.real_clock
@pytest.mark.realtime
def test_scripted_use_yields_only_the_safety_events_the_script_caused(
    mosquitto: Mosquitto, peer: Peer, pulse_null_sink: str, tmp_path: Path
) -> None:
    require_tool("espeak-ng")
    key = ServerKey()
    device = f"truthful-{tmp_path.name[-6:]}"
    with service_on_mcu(
        mosquitto,
        tmp_path,
        device,
        BoardConfig(board_id="truthful-board"),
        prompt_keys=["session_start", "session_end"],
        sink="pyaudio",
        server_public_key=key.public_b64,
    ) as (sim, _settings, service):
        monitor = service.monitor
        assert monitor is not None
        program = prescribe("lib-short", 1, load_program_toml(SHORT)).model_dump(mode="json")
        peer.publish_desired(device, key.payload(device, 1, programs=[program]))
        wait_until(lambda: service.store.applied_desired() is not None, 20, "desired state")
        wait_until(lambda: service.status()["safety_link"] == "up", 10, "the MCU link")

        def playing() -> object:
            return service.status()["playing"]

        def session(stop_after_s: float | None = None, fault_after_s: float | None = None) -> None:
            wait_until(lambda: monitor.holder is None, 30, "the prompts between sessions")
            assert service.play("short").startswith("ok")
            wait_until(lambda: playing() == "short", 10, "the session to start")
            if stop_after_s is not None:
                time.sleep(stop_after_s)
                service.stop_playing()
            if fault_after_s is not None:
                time.sleep(fault_after_s)
                sim.over_temperature()
            wait_until(lambda: playing() is None, 30, "the session to end")
            assert service.status()["safety_state"] == "idle"

        session()  # played through
        session(stop_after_s=1.0)  # the person stops it: their own stop is recorded
        session()
        # the link drops and comes back between sessions (nothing consented: routine)
        wait_until(lambda: monitor.holder is None, 30, "the prompts between sessions")
        sim.go_silent()
        wait_until(lambda: service.status()["safety_link"] == "down", 10, "the link to drop")
        sim.speak_again()
        wait_until(lambda: service.status()["safety_link"] == "up", 10, "the link to return")
        session(fault_after_s=1.0)  # the amplifier overheats mid-session: a real fault
        sim.reset()  # it cools down: the next ARM clears the latched fault
        wait_until(lambda: service.why_cannot_play("short") is None, 10, "the cause to be gone")
        session()
        session(stop_after_s=0.05)  # an accidental start, stopped at once
        session()
        wait_until(lambda: monitor.holder is None, 30, "the last prompt")
        assert service.recorder.flush()
        events = sorted(service.store.events(limit=1000), key=lambda e: (e.at, e.event_id))
        counts = service.recorder.routine_counts()
        records = service.store.sessions(limit=100)

    assert [r.outcome for r in reversed(records)] == [
        "completed",
        "stopped",
        "completed",
        "fault",
        "completed",
        "stopped",
        "completed",
    ]
    caused = [(e.type, e.to_state) for e in events]
    # the two stops by the person, and the fault: the MCU's FAULT, its withdrawal of consent, the
    # session's state, the warning the hot reading raised and its clearing when it cooled
    assert Counter(caused) == Counter(
        [
            ("transition", "idle"),
            ("transition", "idle"),
            ("fault", None),
            ("consent_withdrawn", None),
            ("transition", "fault"),
            ("warning", None),
            ("warning_cleared", None),
        ]
    ), caused
    stops = [e for e in events if e.type == "transition" and e.to_state == "idle"]
    assert all(e.cause == "stopped by the person" for e in stops)
    fault = next(e for e in events if e.type == "fault")
    assert "temperature" in fault.cause
    # the rest was counted: a normal start and end of every session, every hand-over
    assert counts["session_transitions"] == 7 * 2 + 4  # 7 starts (2 each), 4 played through
    assert counts["consent_granted"] >= 7
    assert counts["device_mutes"] >= 6
    assert counts["link_drops"] == 1
    assert counts["link_up"] == 2
