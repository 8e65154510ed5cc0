"""The prescription loop end to end (issue 20), every hop real: a clinician, signed in in Chromium,
adds a library program to their patient on the patient page and saves; the server signs the
desired state and publishes it through mosquitto with mutual TLS; the device service on the MCU
simulator's pty applies it; a press of the simulated play button plays it through PyAudio into
the PulseAudio null sink, whose monitor ``parec`` records; the recording matches an independent
render of that program version (the engine's pipeline into a WAV): the same duration (±0.1 s),
spectral peak (±0.1 Hz) and level (±0.5 dB); and the session comes back through ingest to the
patient page with the program's name and version."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
from clinic import EMAIL, PASSWORD, signing_key
from device_peer import service_on_mcu
from fleet import run_tls_broker
from numpy.typing import NDArray
from playwright.sync_api import Browser, Page, expect
from support import real_clock_env, require_tool, wait_until

from resonera.common.desired import DesiredDocument, effective_profile
from resonera.common.profile import HearingProfile
from resonera.common.program import Program
from resonera.engine.audio.calibration import load_calibration_file, packaged_calibration
from resonera.engine.audio.sinks import WavSink
from resonera.engine.pipeline import build_pipeline
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.scenario import execute
from resonera.server.bootstrap import demo_setup
from resonera.server.crypto import new_key_line
from resonera.server.runner import run_server_in_thread
from resonera.server.settings import ServerSettings

pytestmark = [
    pytest.mark.slow,
    # PortAudio's callback stream stalls under libfaketime; the test dates nothing itself
    pytest.mark.real_clock,
    pytest.mark.realtime,  # the simulated MCU's 100 ms watchdogs, sound recorded
]

RATE = 48000
NAME = "Evening tone"
SECONDS = 8.0
TONE_HZ = 330.0
#: A plain tone: its peak and level are easy to measure, and a spoken prompt at the start (the
#: device says "session starting" and the name) lies in another band.
DOCUMENT = f"""\
name = "{NAME}"
description = "a steady tone for the evening"
fade_in_s = 0.5
fade_out_s = 0.5

[[steps]]
duration_s = {SECONDS}
[[steps.layers]]
type = "tone"
frequency_hz = {TONE_HZ}
gain = 0.25
"""
BOARD = BoardConfig(board_id="rx-loop-board")
#: Frames of the envelope the tone is followed by (10 ms at 48 kHz).
HOP = 480


@contextmanager
def recording(sink: str, path: Path) -> Iterator[Path]:
    """``parec`` from the sink's monitor into ``path`` (raw stereo float32 at ``RATE``)."""
    with path.open("wb") as out:
        process = subprocess.Popen(
            [
                require_tool("parec"),
                "-d",
                f"{sink}.monitor",
                "--raw",
                "--format=float32le",
                "--channels=2",
                f"--rate={RATE}",
                "--latency-msec=20",
            ],
            stdout=out,
            stderr=subprocess.DEVNULL,
            env=real_clock_env(),  # a recorder needs no date, and faketime stalls its timers
        )
        try:
            wait_until(lambda: path.stat().st_size > 0, 10, "parec to deliver audio")
            yield path
        finally:
            process.terminate()
            process.wait(timeout=10)


def recorded(path: Path) -> NDArray[np.float64]:
    data = path.read_bytes()
    return np.frombuffer(data[: len(data) - len(data) % 8], "<f4").reshape(-1, 2).astype(float)


def tone_span(audio: NDArray[np.float64]) -> tuple[int, int]:
    """The first and last frame where the tone sounds: its amplitude in ``TONE_HZ``'s band,
    frame by frame, above a tenth of its steady level (speech, broadband and elsewhere in
    frequency, stays below that)."""
    mono = audio.mean(axis=1)
    frames = len(mono) // HOP
    # over 4 hops (40 ms, 25 Hz wide): a tone's phase is continuous, so its amplitude adds up
    width = 4 * HOP
    window = np.exp(-2j * math.pi * TONE_HZ * np.arange(width) / RATE)
    amplitude = np.array(
        [abs(np.dot(mono[i * HOP : i * HOP + width], window)) for i in range(frames - 4)]
    )
    steady = float(np.median(amplitude[amplitude > amplitude.max() / 2]))
    on = np.flatnonzero(amplitude > steady / 10)
    assert len(on), "the tone is not in the recording"
    return int(on[0] * HOP + width // 2), int(on[-1] * HOP + width // 2)


def peak_hz(signal: NDArray[np.float64]) -> float:
    """The strongest frequency, interpolated between bins (parabola on the log spectrum)."""
    size = 1 << 22
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal)), n=size))
    k = int(np.argmax(spectrum[1:])) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2])
    return float((k + 0.5 * (a - c) / (a - 2 * b + c)) * RATE / size)


def level_db(signal: NDArray[np.float64]) -> float:
    return 20 * math.log10(math.sqrt(float(np.mean(signal**2))))


def render(program: Program, profile: HearingProfile, path: Path) -> NDArray[np.float64]:
    """The program as the engine renders it for this profile and calibration, into a WAV."""
    pipeline = build_pipeline(
        program,
        sample_rate=RATE,
        calibration=load_calibration_file(packaged_calibration()),
        profile=profile,
    )
    result = pipeline.play(WavSink(path), block_frames=1024)
    assert result.outcome == "completed", result
    audio, rate = soundfile.read(path, dtype="float64", always_2d=True)
    assert rate == RATE
    return np.asarray(audio)


def sign_in(page: Page, base: str) -> None:
    page.goto(base + "/login")
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


def test_a_program_prescribed_in_the_browser_plays_on_the_device_as_rendered(
    pulse_null_sink: str, browser: Browser, tmp_path: Path
) -> None:
    key_file, public_key = signing_key(tmp_path)
    device = "rx-loop-1"
    with run_tls_broker(tmp_path / "fleet") as tls:
        settings = ServerSettings(
            database_url=f"sqlite:///{tmp_path / 'server.db'}",
            http_port=0,
            mqtt=tls.server(),
            demo=True,
            patient_keys=new_key_line("e2e"),
            desired_signing_key_file=key_file,
            data_dir=tmp_path / "server-data",
        )
        with run_server_in_thread(settings) as server:
            setup = demo_setup(
                server.engine, settings, device_id=device, email=EMAIL, password=PASSWORD
            )
            token = httpx.post(
                f"{server.api_url}/auth/login", json={"email": EMAIL, "password": PASSWORD}
            ).json()["access_token"]
            with httpx.Client(
                base_url=server.api_url, headers={"Authorization": f"Bearer {token}"}
            ) as api:
                created = api.post("/programs", json={"document": DOCUMENT})
                assert created.status_code == 201, created.text
                library_id = created.json()["id"]
                with (
                    service_on_mcu(
                        tls.broker,
                        tmp_path,
                        device,
                        BOARD,
                        sink="pyaudio",
                        server_public_key=public_key,
                        mqtt=tls.device(device),
                    ) as (sim, _device_settings, service),
                ):
                    context = browser.new_context(viewport={"width": 1280, "height": 900})
                    try:
                        page = context.new_page()
                        sign_in(page, server.url)
                        patient_page = f"{server.url}/patients/{setup.patient_id}"
                        page.goto(f"{patient_page}?q=evening#add-program")
                        page.get_by_role("button", name=f"Add '{NAME}' to the prescription").click()
                        page.get_by_role("button", name="Save prescription as version").click()
                        expect(page.locator(".notice")).to_contain_text("Saved as version")

                        # the device applies it and says so; the page shows it applied
                        row = page.locator("#prescribed-programs > li").first

                        def applied() -> bool:
                            page.reload()
                            return "Applied on the device" in row.inner_text()

                        wait_until(applied, 30, "the device to report the program applied")
                        desired = api.get(f"/patients/{setup.patient_id}/desired").json()
                        [entry] = desired["programs"]
                        assert (entry["library_id"], entry["version"]) == (library_id, 1)

                        wait_until(
                            lambda: service.status()["safety_link"] == "up", 10, "the MCU link"
                        )
                        with recording(pulse_null_sink, tmp_path / "monitor.raw") as raw:
                            execute(sim, "press play_pause")
                            wait_until(
                                lambda: service.status()["playing"] == NAME, 20, "it to play"
                            )
                            wait_until(lambda: service.status()["playing"] is None, 30, "its end")

                            def trailing_silence() -> bool:
                                audio = recorded(raw)
                                return len(audio) > RATE and bool(
                                    np.abs(audio[-RATE // 4 :]).max() < 1e-4
                                )

                            wait_until(trailing_silence, 10, "the monitor to fall silent")

                        # the session, through ingest, on the patient page
                        def session_shown() -> bool:
                            page.reload()
                            return f"{NAME} v1" in page.locator("#sessions").inner_text()

                        wait_until(session_shown, 30, "the session on the patient page")
                    finally:
                        context.close()

                version = api.get(f"/programs/{library_id}/versions/1").json()
                program = Program.model_validate(version["definition"])
                config = {"profile": desired["profile"], "limits": desired["limits"]}
    profile = effective_profile(DesiredDocument(0, config, b""), HearingProfile())
    rendered = render(program, profile, tmp_path / "reference.wav")
    # silence around it, as around the recording, so both spans are measured alike
    reference = np.pad(rendered, ((RATE // 2, RATE // 2), (0, 0)))
    played = recorded(tmp_path / "monitor.raw")

    (ref_on, ref_off), (rec_on, rec_off) = tone_span(reference), tone_span(played)
    durations = ((rec_off - rec_on) / RATE, (ref_off - ref_on) / RATE)
    assert abs(durations[0] - durations[1]) <= 0.1, durations
    # the steady middle, clear of the fades and of a prompt said as the session starts
    margin = int(2.5 * RATE)
    ref_middle = reference[ref_on + margin : ref_off - RATE].mean(axis=1)
    rec_middle = played[rec_on + margin : rec_off - RATE].mean(axis=1)
    peaks = (peak_hz(rec_middle), peak_hz(ref_middle))
    assert abs(peaks[0] - peaks[1]) <= 0.1 and abs(peaks[1] - TONE_HZ) <= 0.1, peaks
    levels = (level_db(rec_middle), level_db(ref_middle))
    assert abs(levels[0] - levels[1]) <= 0.5, levels
