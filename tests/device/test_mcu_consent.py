"""One holder of the safety MCU's consent at a time, through the one monitor on its port: a session
takes the MCU over from a prompt spoken between sessions, a prompt is refused while a session holds
it, a release mutes only what it armed, a port that is not there yet is tried again, and a session
the MCU does not consent to plays nothing. The simulator on its real pty stands in for the MCU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import wait_until

from resonera.common.program import load_program_toml
from resonera.device.hwmonitor import HardwareMonitor, HardwareNotReady
from resonera.device.session import Session, standalone_parts
from resonera.device.settings import DeviceSettings
from resonera.device.store import DeviceStore
from resonera.engine.audio.calibration import packaged_calibration
from resonera.engine.audio.sinks import WavSink
from resonera.hardware.sim import Simulator

# Times the safety MCU's watchdogs or measures recorded sound against real time: the main pass
# only (the dates of their sessions are checked under faketime by the sessions' other tests).
pytestmark = pytest.mark.realtime

TONE = """
name = "tone"
fade_in_s = 0.5
fade_out_s = 0.5
[[steps]]
duration_s = 4
[[steps.layers]]
type = "tone"
frequency_hz = 1000
gain = 0.5
"""


def test_a_session_takes_the_mcu_over_from_a_prompt_and_a_release_mutes_only_its_own() -> None:
    with Simulator() as sim, HardwareMonitor(sim.port_path) as monitor:
        prompt = monitor.claim("a prompt", timeout_s=3.0)
        assert prompt.consent and monitor.holder == "a prompt"

        session = monitor.claim("a session", timeout_s=3.0, preempt=True)
        assert session.consent
        assert not prompt.consent  # silent from its next block
        assert "handed to a session" in prompt.reason
        prompt.release()  # the prompt ending late: what the session armed stays armed
        assert session.consent and not sim.muted

        with pytest.raises(HardwareNotReady, match="in use by a session"):
            monitor.claim("another prompt", timeout_s=3.0)
        assert session.consent

        session.release()
        assert not monitor.consent and monitor.holder is None
        wait_until(lambda: sim.muted, 5, "the MCU to mute")

        again = monitor.claim("a prompt after the session", timeout_s=3.0)
        assert again.consent and not sim.muted
        again.release()


def test_a_port_that_is_not_there_yet_is_opened_when_it_comes(tmp_path: Path) -> None:
    link = tmp_path / "ttyMCU"  # a stable name for the MCU's port, as udev would make
    monitor = HardwareMonitor(str(link), reconnect_interval_s=0.05)
    monitor.start(wait_for_port=True)
    try:
        assert not monitor.consent
        assert "cannot open the safety MCU's serial port" in monitor.reason
        with pytest.raises(HardwareNotReady, match="no such device"):
            monitor.claim("a session", timeout_s=1.0, preempt=True)
        assert monitor.holder is None
        with Simulator() as sim:
            os.symlink(sim.port_path, link)  # the MCU is plugged in
            wait_until(lambda: monitor.connected, 10, "the monitor to open the port")
            claim = monitor.claim("a session", timeout_s=3.0, preempt=True)
            assert claim.consent
            claim.release()
    finally:
        monitor.stop()


def test_a_session_the_mcu_does_not_consent_to_plays_nothing_and_says_why(tmp_path: Path) -> None:
    with Simulator() as sim:
        settings = DeviceSettings(
            device_id="consent-dev",
            data_dir=tmp_path,
            serial_url=sim.port_path,
            calibration_file=packaged_calibration(),
            arm_timeout_s=2.0,
        )
        store = DeviceStore(settings.store_path)
        sim.unplug_headphones()  # the MCU refuses to arm while they are out
        wav = tmp_path / "session.wav"
        with standalone_parts(settings, store) as parts:
            session = Session(parts)
            with pytest.raises(HardwareNotReady, match=r"(?i)headphones"):
                session.run(load_program_toml(TONE), WavSink(wav))
            assert parts.monitor is not None and not parts.monitor.consent
    assert not wav.exists()  # not one sample
    assert store.sessions() == []
    transitions = [
        (e.from_state, e.to_state)
        for e in sorted(store.events(limit=100), key=lambda e: (e.at, e.event_id))
        if e.type == "transition" and e.session_id == session.session_id
    ]
    # the normal start is counted, not recorded; the refusal is a safety event
    assert transitions == [("arming", "idle")]
