"""Buttons only, end to end: the simulator's buttons pressed over its real pty, the device service
(with its safety monitor, the player, PyAudio into the PulseAudio null sink) starting, pausing,
skipping and stopping the person's assigned programs; the status light following; prompts spoken."""

from __future__ import annotations

from pathlib import Path

import pytest
from device_peer import Peer, ServerKey, service_on_mcu
from support import Mosquitto, require_tool, wait_until

from resonera.common import serial_link as sl
from resonera.common.prescription import prescribe
from resonera.common.program import builtin_program
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.scenario import execute

PROGRAMS = ["focus-isochronic", "calm-tone"]


# Plays through PortAudio's callback stream, which stalls under libfaketime; dates nothing itself;
# the simulated MCU's 100 ms watchdogs want the machine to themselves.
@pytest.mark.real_clock
@pytest.mark.realtime
def test_a_person_with_buttons_alone_starts_pauses_skips_and_stops(
    mosquitto: Mosquitto, peer: Peer, pulse_null_sink: str, tmp_path: Path
) -> None:
    require_tool("espeak-ng")
    key = ServerKey()
    device = f"panel-{tmp_path.name[-6:]}"
    with service_on_mcu(
        mosquitto,
        tmp_path,
        device,
        BoardConfig(board_id="panel-board"),
        prompt_keys=["session_start", "session_end", "max_volume"],
        sink="pyaudio",
        server_public_key=key.public_b64,
    ) as (sim, settings, service):
        mixer = service.panel.mixer

        def light() -> str:
            return execute(sim, "light?").removeprefix("ok light=")

        def playing() -> object:
            return service.status()["playing"]

        programs = [
            prescribe(f"lib-{name}", 1, builtin_program(name)).model_dump(mode="json")
            for name in PROGRAMS
        ]
        peer.publish_desired(device, key.payload(device, 1, programs=programs))
        wait_until(lambda: service.store.applied_desired() is not None, 20, "desired state")
        wait_until(lambda: service.status()["safety_link"] == "up", 10, "the MCU link")

        execute(sim, "press play_pause")
        wait_until(lambda: playing() == PROGRAMS[0], 20, "the first program to start")
        wait_until(lambda: light() == "playing", 10, "the light to show playing")
        wait_until(lambda: "session_start" in mixer.spoken, 10, "the start to be said")

        execute(sim, "press vol_up")  # already at the clinician's level: said, not done
        wait_until(lambda: "max_volume" in mixer.spoken, 10, "'maximum volume' to be said")
        assert mixer.volume_db == 0.0
        execute(sim, "press vol_down")
        wait_until(lambda: mixer.volume_db == -3.0, 10, "the volume to step down")
        controls = service.status()["controls"]
        assert controls == {
            "light": "playing",
            "paused": False,
            "volume_db": -3.0,
            "prompts": True,
        }

        execute(sim, "press play_pause")
        wait_until(lambda: service.panel.state.paused, 10, "pause")
        wait_until(lambda: light() == "idle", 10, "the light to show nothing sounding")
        assert playing() == PROGRAMS[0]
        execute(sim, "press play_pause")
        wait_until(lambda: not service.panel.state.paused, 10, "resume")
        wait_until(lambda: light() == "playing", 10, "the light to show playing again")

        execute(sim, "press play_pause long")
        wait_until(lambda: playing() == PROGRAMS[1], 20, "the next program")
        # the next press waits until the MCU is armed for the next session
        wait_until(lambda: sim.controller.armed, 20, "the next session to arm")

        execute(sim, "press stop")
        wait_until(lambda: playing() is None, 20, "the stop")
        # said between sessions: the MCU armed for it, then muted again
        wait_until(lambda: "session_end" in mixer.spoken, 20, "the end to be said")
        wait_until(lambda: sim.muted and light() == "idle", 10, "muted and idle again")

        execute(sim, "press vol_up")  # -3 dB → 0 dB, for the next session
        wait_until(lambda: mixer.volume_db == 0.0, 10, "the volume back up")
        execute(sim, "press vol_up")
        wait_until(lambda: list(mixer.spoken).count("max_volume") == 2, 20, "said while idle")
        wait_until(lambda: sim.muted, 10, "the amplifier muted after the prompt")
        assert playing() is None and sim.light == sl.LIGHT_IDLE
    store = settings.open_store()
    sessions = sorted(store.sessions(), key=lambda s: s.started_at)
    assert [(s.program_name, s.outcome) for s in sessions] == [
        (PROGRAMS[0], "stopped"),
        (PROGRAMS[1], "stopped"),
    ]
