"""Program previews: a valid WAV whose spectrum is the program's, rendered once per content and
calibration (cached file), cut at ``preview_max_s``, and for a patient through their limits."""

from __future__ import annotations

import io
import logging
import threading
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from factories import ALPHA_TOML
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.server import programs
from resonera.server.models import AuditRow
from resonera.server.settings import ServerSettings

# Sound alone, no dates: left out of the faketime pass (make pytest-future).
pytestmark = pytest.mark.dateless

API = "/api/v1"
RATE = programs.PREVIEW_SAMPLE_RATE

TONE = """\
name = "Loud kilohertz"
fade_in_s = 0.5

[[steps]]
duration_s = 20
[[steps.layers]]
type = "tone"
frequency_hz = 1000
gain = 0.5
"""


def _create(client: TestClient, world: Any, document: str) -> str:
    response = client.post(
        f"{API}/programs", json={"document": document}, headers=world.clinician.headers
    )
    assert response.status_code == 201, response.text
    program_id: str = response.json()["id"]
    return program_id


def _wav(data: bytes) -> tuple[wave._wave_params, NDArray[np.float64]]:
    with wave.open(io.BytesIO(data)) as reader:
        params = reader.getparams()
        frames = reader.readframes(params.nframes)
    samples = np.frombuffer(frames, "<i2").reshape(-1, params.nchannels) / 32768.0
    return params, samples


def _peak_hz(channel: NDArray[np.float64]) -> float:
    """The strongest frequency of 10 s from the middle (0.1 Hz resolution)."""
    middle = len(channel) // 2
    window = channel[middle - 5 * RATE : middle + 5 * RATE] * np.hanning(10 * RATE)
    spectrum = np.abs(np.fft.rfft(window))
    return float(np.fft.rfftfreq(len(window), 1 / RATE)[int(np.argmax(spectrum))])


def _rms_db(channel: NDArray[np.float64]) -> float:
    middle = len(channel) // 2
    part = channel[middle - RATE : middle + RATE]
    return float(20 * np.log10(np.sqrt(np.mean(part**2))))


def _previews(settings: ServerSettings) -> list[Path]:
    return sorted((settings.data_dir / "previews").glob("*.wav"))


def test_preview_is_the_program_as_played_cut_to_the_limit_and_cached(
    client: TestClient, world: Any, server_settings: ServerSettings
) -> None:
    program_id = _create(client, world, ALPHA_TOML)
    url = f"{API}/programs/{program_id}/preview.wav"
    first = client.get(url, headers=world.auditor.headers)
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "audio/wav"
    assert first.headers["x-preview-seconds"] == "60"
    assert first.headers["x-program-seconds"] == "600"
    assert first.headers["x-preview-truncated"] == "true"
    assert "no-cache" in first.headers["cache-control"]
    params, samples = _wav(first.content)
    assert (params.nchannels, params.framerate, params.sampwidth) == (2, RATE, 2)
    assert abs(params.nframes / RATE - 60.0) < 0.2
    # Binaural: carrier − beat/2 in the left ear, carrier + beat/2 in the right.
    assert _peak_hz(samples[:, 0]) == pytest.approx(195.0, abs=0.15)
    assert _peak_hz(samples[:, 1]) == pytest.approx(205.0, abs=0.15)
    assert np.max(np.abs(samples[-100:])) < 0.01  # faded out, not cut off

    [file] = _previews(server_settings)
    made = file.stat().st_mtime_ns
    again = client.get(url, headers=world.clinician.headers)
    assert again.content == first.content
    assert again.headers["etag"] == first.headers["etag"]
    assert file.stat().st_mtime_ns == made  # served from the cache, not rendered again
    unchanged = client.get(
        url, headers={**world.clinician.headers, "If-None-Match": again.headers["etag"]}
    )
    assert unchanged.status_code == 304 and unchanged.content == b""

    put = client.put(
        f"{API}/programs/{program_id}",
        json={"document": ALPHA_TOML.replace("beat_hz = 10", "beat_hz = 8")},
        headers={**world.clinician.headers, "If-Match": '"1"'},
    )
    assert put.status_code == 200, put.text
    changed = client.get(url, headers=world.clinician.headers)
    assert changed.headers["etag"] != first.headers["etag"]
    _, samples = _wav(changed.content)
    assert _peak_hz(samples[:, 0]) == pytest.approx(196.0, abs=0.15)
    assert _peak_hz(samples[:, 1]) == pytest.approx(204.0, abs=0.15)
    assert len(_previews(server_settings)) == 2
    assert file.stat().st_mtime_ns == made


def test_reformatting_the_text_keeps_the_cached_preview(
    client: TestClient, world: Any, server_settings: ServerSettings
) -> None:
    program_id = _create(client, world, ALPHA_TOML)
    url = f"{API}/programs/{program_id}/preview.wav"
    etag = client.get(url, headers=world.clinician.headers).headers["etag"]
    put = client.put(
        f"{API}/programs/{program_id}",
        json={"document": "# same sound, new comment\n" + ALPHA_TOML},
        headers={**world.clinician.headers, "If-Match": '"1"'},
    )
    assert put.json()["version"] == 2
    assert client.get(url, headers=world.clinician.headers).headers["etag"] == etag
    assert len(_previews(server_settings)) == 1


def test_a_patients_preview_goes_through_their_limits(
    client: TestClient, world: Any, engine: Engine, server_settings: ServerSettings
) -> None:
    program_id = _create(client, world, TONE)
    url = f"{API}/programs/{program_id}/preview.wav"
    plain = client.get(url, headers=world.clinician.headers)
    assert plain.headers["x-preview-truncated"] == "false"
    assert plain.headers["x-preview-seconds"] == "20"
    limited = client.put(
        f"{API}/patients/{world.patient}/desired",
        json={"limits": {"max_level_dba": 62}},
        headers={**world.clinician.headers, "If-Match": '"0"'},
    )
    assert limited.status_code == 200, limited.text
    theirs = client.get(url, params={"patient": world.patient}, headers=world.clinician.headers)
    assert theirs.status_code == 200, theirs.text
    assert theirs.headers["etag"] != plain.headers["etag"]
    _, loud = _wav(plain.content)
    _, quiet = _wav(theirs.content)
    # The reference headphones put this tone at about 71 dB(A); the patient's ceiling is 62.
    assert _rms_db(loud[:, 0]) - _rms_db(quiet[:, 0]) > 7.0
    assert _peak_hz(quiet[:, 0]) == pytest.approx(1000.0, abs=0.15)
    with Session(engine) as session:
        reads = session.exec(select(AuditRow).where(AuditRow.resource == "program_preview")).all()
    assert [(r.patient_id, r.resource_id) for r in reads] == [(world.patient, program_id)]

    # Another clinician's patient, or an auditor naming a patient: no such patient for them.
    for actor in (world.other_clinician, world.auditor):
        refused = client.get(url, params={"patient": world.patient}, headers=actor.headers)
        assert refused.status_code == 404, refused.text


def test_a_program_the_patient_may_not_hear_is_refused_with_the_reason(
    client: TestClient, world: Any
) -> None:
    program_id = _create(client, world, ALPHA_TOML)
    put = client.put(
        f"{API}/patients/{world.patient}/desired",
        json={"profile": {"beat_hz": {"low": 4, "high": 8}}},
        headers={**world.clinician.headers, "If-Match": '"0"'},
    )
    assert put.status_code == 200, put.text
    refused = client.get(
        f"{API}/programs/{program_id}/preview.wav",
        params={"patient": world.patient},
        headers=world.clinician.headers,
    )
    assert refused.status_code == 422, refused.text
    assert "beat_hz 10 Hz is outside" in refused.json()["error"]["message"]


def test_concurrent_requests_render_once(
    engine: Engine,
    world: Any,
    client: TestClient,
    server_settings: ServerSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    program_id = _create(client, world, TONE)
    paths: list[Path] = []
    start = threading.Barrier(4)

    def ask() -> None:
        with Session(engine) as session:
            start.wait()
            paths.append(programs.preview_wav(server_settings, session, program_id))

    caplog.set_level(logging.INFO, logger="resonera.server.program_previews")
    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(paths) == 4 and len(set(paths)) == 1
    assert len([r for r in caplog.records if r.getMessage().startswith("rendered preview")]) == 1
    assert [p.name for p in _previews(server_settings)] == [paths[0].name]
    assert not list((server_settings.data_dir / "previews").glob("*.tmp"))


def test_missing_program_or_patient_is_404(client: TestClient, world: Any) -> None:
    missing = client.get(f"{API}/programs/0123-abc/preview.wav", headers=world.clinician.headers)
    assert missing.status_code == 404
    program_id = _create(client, world, TONE)
    nobody = client.get(
        f"{API}/programs/{program_id}/preview.wav",
        params={"patient": "0123-abc"},
        headers=world.admin.headers,
    )
    assert nobody.status_code == 404
