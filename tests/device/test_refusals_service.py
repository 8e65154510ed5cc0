"""Every outcome is heard and seen (issue 21), end to end: the device service on the simulated
safety MCU over its real pty, PyAudio into the PulseAudio null sink recorded from its monitor. For
each reason a play press cannot start, the recording holds that reason's prompt (found by
cross-correlating it with the prompt's rendered WAV, and no other reason's matching as well), the
light the device sent the simulator (its LIGHT frames, ``Simulator.lights_asked``) is the table's,
and no check-in question is asked (the profile has one before every session). A fault the MCU
holds, or headphones out, cannot be heard (it will not arm): the light says it. A refused
program and a session the clinician's lowered limits stopped come through signed desired states,
as from the server. (Nothing assigned is heard through the button in
``test_prescribed_service.py``.)"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import soundfile
from audio_recording import monitor_recording, recorded
from device_peer import Peer, ServerKey, service_on_mcu
from factories import make_record
from numpy.typing import NDArray
from scipy.signal import fftconvolve
from support import Mosquitto, require_tool, wait_until

from resonera.common import serial_link as sl
from resonera.common.profile import CheckInQuestion, HearingProfile
from resonera.device.prompts import prompts_dir
from resonera.device.refusals import REASONS, ReasonCode
from resonera.device.service import DeviceService
from resonera.device.sync import ShutOut
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.scenario import execute
from resonera.hardware.sim import Simulator

pytestmark = pytest.mark.realtime

QUESTION = CheckInQuestion(
    id="calm", text="How calm?", low_label="not", high_label="very", when="before"
)
#: The person's profile as the clinician's signed desired state carries it.
PROFILE = {"max_level_dba": 80.0, "checkins": [QUESTION.model_dump()]}
#: The built-in program's 200 Hz carrier is outside this range: the program is refused.
NARROW = {**PROFILE, "carrier_hz": {"low": 300.0, "high": 400.0}}
#: The reasons that can be heard (the MCU arms for their prompt), each made true on the service.
AUDIBLE: tuple[ReasonCode, ...] = (
    "shut_out_revoked",
    "storage_full",
    "clock_untrusted",
    "daily_limit",
    "program_refused",
    "limits_lowered",  # a session stopped, not a press refused
    "dose_reached",  # last: the week's dose stays used
)
#: Far over a week's allowance at 80 dBA for 40 h (5,760 Pa²s).
WEEK_OF_SOUND_PA2S = 10_000.0
PROMPTS = [REASONS[code].prompt for code in AUDIBLE] + ["refused_fault", "checkin_before"]


def lights_sent(sim: Simulator, since: float) -> list[int]:
    """The light states the device sent the simulator (its LIGHT frames) since ``since``."""
    return [state for at, state in sim.lights_asked if at >= since]


def match(recording: NDArray[np.float64], template: NDArray[np.float64]) -> float:
    """The peak normalised cross-correlation of ``template`` within ``recording`` (1: exact)."""
    if len(recording) < len(template):
        return 0.0
    dot = fftconvolve(recording, template[::-1], mode="valid")
    cumulative = np.concatenate(([0.0], np.cumsum(recording**2)))
    energy = cumulative[len(template) :] - cumulative[: -len(template)]
    norm = np.sqrt(np.maximum(energy, 1e-12)) * np.linalg.norm(template)
    return float(np.max(np.abs(dot) / norm))


class Clinician:
    """Signed desired states for one device, published retained as the server does."""

    peer: Peer

    def __init__(self, device: str) -> None:
        self.key, self.device, self.version = ServerKey(), device, 10

    def send(self, profile: dict[str, object], **limits: float) -> None:
        self.version += 1
        limits = {"max_level_dba": 75.0, "max_session_minutes": 60, **limits}
        payload = self.key.payload(self.device, self.version, profile=profile, limits=limits)
        self.peer.publish_desired(self.device, payload)
        assert self.peer.report_of(self.version)["status"] == "applied"


def make_true(code: ReasonCode, service: DeviceService, clinician: Clinician) -> Callable[[], None]:
    """Make ``code`` hold on ``service`` (a play press then refused, or a session stopped);
    returns what undoes it."""
    if code == "daily_limit":  # the clinician allows one a day, and one was played today
        service.store.save_desired(1, {"limits": {"max_sessions_per_day": 1}}, None, "applied")
        started = datetime.now(UTC) - timedelta(seconds=1)  # today, whatever the hour
        played = make_record(started_at=started, ended_at=started + timedelta(seconds=61),
                             planned_s=600.0, played_s=61.0, outcome="stopped")  # fmt: skip
        service.store.record_session(service.settings.device_id, played)
        return lambda: service.store.save_desired(2, {}, None, "applied")
    if code == "dose_reached":
        service.ledger.add_energy(time.time(), WEEK_OF_SOUND_PA2S)
        return lambda: None
    if code == "program_refused":
        clinician.send(NARROW)
        return lambda: clinician.send(PROFILE)
    if code == "limits_lowered":  # a session plays, then the clinician lowers the limits
        assert service.command("play calm-tone").startswith("ok playing"), "calm-tone to play"
        wait_until(lambda: service.status()["playing"] is not None, 20, "the session to play")
        clinician.send(PROFILE, max_level_dba=70.0)
        return lambda: clinician.send(PROFILE)
    if code == "shut_out_revoked":
        service.sync.shut_out = ShutOut("revoked", "certificate revoked", time.time())

        def back() -> None:
            service.sync.shut_out = None

        return back
    if code == "storage_full":
        service.min_free_bytes = 1 << 62

        def room() -> None:
            service.min_free_bytes = 32 << 20

        return room
    service.clock = lambda: 0.0  # a board without RTC, booted in 1970

    def right() -> None:
        service.clock = time.time

    return right


@pytest.mark.real_clock
def test_each_refusal_is_said_and_shown_before_any_question(
    mosquitto: Mosquitto, pulse_null_sink: str, tmp_path: Path
) -> None:
    require_tool("espeak-ng")
    profile = HearingProfile(checkins=[QUESTION])
    device = f"refuse-{tmp_path.name[-6:]}"
    clinician = Clinician(device)
    with (
        closing(Peer(mosquitto, ack=False)) as clinician.peer,  # (an ack would end "shut out")
        service_on_mcu(
            mosquitto,
            tmp_path,
            device,
            BoardConfig(board_id="refusal-board"),
            prompt_keys=PROMPTS,
            sink="pyaudio",
            profile=profile,
            server_public_key=clinician.key.public_b64,
        ) as (sim, settings, service),
        monitor_recording(pulse_null_sink, tmp_path / "monitor.raw") as raw,
    ):
        panel, mixer = service.panel, service.panel.mixer
        wait_until(lambda: service.status()["safety_link"] == "up", 10, "the MCU link")
        assert service.monitor is not None
        wait_until(lambda: service.monitor.telemetry is not None, 10, "the MCU's telemetry")  # type: ignore[union-attr]
        assert service.status()["ready"] is None  # and the headphones seen plugged in
        # the socket refuses in the prompt's words
        reply = service.command("play no-such-program")
        assert reply.startswith(f"error {REASONS['program_refused'].words} ("), reply

        # what the MCU will not arm for: the prompt cannot be heard, the light says it
        for code, cause in (
            ("headphones_unplugged", sim.unplug_headphones),
            ("hardware_fault", sim.over_temperature),
        ):
            cause()
            wait_until(lambda: (service.status()["ready"] or {}).get("code") == code, 10, code)  # noqa: B023
            since = time.monotonic()
            execute(sim, "press play_pause")
            wait_until(
                lambda: sl.LIGHT_FAULT in lights_sent(sim, since),  # noqa: B023
                10,
                f"the light for {code}",
            )
            assert panel.controls.checkin is None
            sim.reset()
            wait_until(lambda: service.status()["ready"] is None, 10, "healthy again")
            execute(sim, "press stop")  # a fault shown is acknowledged with stop
            wait_until(lambda: sim.light == sl.LIGHT_IDLE, 10, "the light back to idle")

        # where each prompt's recording starts: it runs to the next one's start (on a loaded
        # machine the recorder can lag the prompt's end by more than a fixed wait)
        heard: dict[ReasonCode, int] = {}
        for code in AUDIBLE:
            reason = REASONS[code]
            said = list(mixer.spoken).count(reason.prompt)
            start = len(recorded(raw))
            since = time.monotonic()
            undo = make_true(code, service, clinician)
            if code != "limits_lowered":
                execute(sim, "press play_pause")
            wait_until(
                lambda: list(mixer.spoken).count(reason.prompt) > said,  # noqa: B023
                20,
                f"{reason.prompt} said",
            )
            wait_until(lambda: sim.muted, 10, "the MCU muted after the prompt")
            heard[code] = start
            assert reason.light in lights_sent(sim, since), (code, lights_sent(sim, since))
            if code != "limits_lowered":  # (a stop is said once; nothing stands in the way)
                assert service.status()["ready"]["code"] == code
            if code == "shut_out_revoked":
                assert service.status()["shut_out"]["kind"] == "revoked"
            assert service.status()["playing"] is None
            undo()
            execute(sim, "press vol_down")  # the person acts: the refusal's light goes out
            if code != "dose_reached":  # (a used-up week shows whenever idle)
                wait_until(lambda: sim.light == sl.LIGHT_IDLE, 10, "the light back to idle")

        sessions = sorted(service.store.sessions(), key=lambda s: s.started_at)
        assert sessions[0].played_s == 61.0  # the day's, made above
        stopped = sessions[1:]  # the one the lower limits stopped, and no other
        assert [s.outcome for s in stopped] == ["stopped"], stopped
        assert "clinician lowered the limits" in stopped[0].reason
        time.sleep(1.0)  # the last prompt's tail through the recorder
    assert not any("checkin" in utterance for utterance in mixer.spoken)  # no question asked
    audio = recorded(raw)[:, 0].astype(np.float64)
    directory = prompts_dir(settings.data_dir)
    templates = {
        code: soundfile.read(directory / f"{REASONS[code].prompt}.wav", dtype="float64")[0]
        for code in AUDIBLE
    }
    starts = [*heard.values(), len(audio)]
    for (heard_code, start), stop in zip(heard.items(), starts[1:], strict=True):
        window = audio[start:stop]
        scores = {other: match(window, template) for other, template in templates.items()}
        assert scores[heard_code] > 0.8, (heard_code, scores)
        assert all(scores[heard_code] > s for other, s in scores.items() if other != heard_code)
