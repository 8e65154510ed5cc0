"""The program library pages: create and edit with the device's validation, versions, roles, and
the cookie-authenticated preview WAV (through TestClient; the browser test plays it in Chromium)."""

from __future__ import annotations

import io
import wave
from collections.abc import Callable

import numpy as np
from dashboard.helpers import Seeded, create_program, form_token, table_cells
from factories import ALPHA_TOML as ALPHA
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.server.models import AuditRow

SignIn = Callable[[str], str]


def create(client: TestClient, csrf: str, document: str = ALPHA, fmt: str = "toml") -> str:
    return create_program(client, csrf, document, fmt)


def channel_peaks(wav_bytes: bytes) -> tuple[float, float, int]:
    """The strongest frequency of the left and right channel, and the sample rate."""
    with wave.open(io.BytesIO(wav_bytes)) as wav:
        assert wav.getnchannels() == 2 and wav.getsampwidth() == 2
        rate = wav.getframerate()
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    assert len(frames) > rate  # more than a second
    samples = frames.astype(np.float64) * np.hanning(len(frames))[:, None]
    spectrum = np.abs(np.fft.rfft(samples, axis=0))
    freqs = np.fft.rfftfreq(len(frames), 1 / rate)
    left, right = (float(freqs[int(np.argmax(spectrum[:, ch]))]) for ch in (0, 1))
    return left, right, rate


def test_create_edit_and_preview_a_program(
    client: TestClient, sign_in: SignIn, seeded: Seeded
) -> None:
    csrf = sign_in(seeded.clinician)
    library = client.get("/programs")
    assert library.status_code == 200 and "The library is empty." in library.text
    program_id = create(client, csrf)
    page = client.get(f"/programs/{program_id}?saved=1")
    assert "Saved as version 1." in page.text
    assert f'src="/programs/{program_id}/preview.wav' in page.text
    assert [row[0] for row in table_cells(client.get("/programs").text, "programs")] == [
        "Alpha drift"
    ]

    preview = client.get(f"/programs/{program_id}/preview.wav")
    assert preview.status_code == 200
    assert preview.headers["content-type"] == "audio/wav"
    assert preview.content[:4] == b"RIFF" and preview.content[8:12] == b"WAVE"
    left, right, _rate = channel_peaks(preview.content)
    # Binaural: both ears near the 200 Hz carrier, 10 Hz apart.
    assert abs((left + right) / 2 - 200) < 6
    assert abs(abs(right - left) - 10) < 1.5

    edited = ALPHA.replace("carrier_hz = 200", "carrier_hz = 300")
    response = client.post(
        f"/programs/{program_id}",
        data={
            "document": edited,
            "format": "toml",
            "version": "1",
            "csrf_token": form_token(page.text),
        },
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/programs/{program_id}?saved=2"
    left, right, _rate = channel_peaks(client.get(f"/programs/{program_id}/preview.wav").content)
    assert abs((left + right) / 2 - 300) < 6

    stale = client.post(
        f"/programs/{program_id}",
        data={"document": ALPHA, "format": "toml", "version": "1", "csrf_token": csrf},
    )
    assert stale.status_code == 409
    assert "someone saved version 2 meanwhile" in stale.text


def test_invalid_programs_name_the_field(
    client: TestClient, sign_in: SignIn, seeded: Seeded
) -> None:
    csrf = sign_in(seeded.clinician)
    for document, where in (
        (ALPHA.replace("beat_hz = 10", "beat_hz = 99"), "beat_hz"),
        ('name = "x"\n[[steps]\n', "line 2"),
        ("", "empty"),
    ):
        response = client.post(
            "/programs", data={"document": document, "format": "toml", "csrf_token": csrf}
        )
        assert response.status_code == 400, document
        assert "Not saved:" in response.text and where in response.text
    create(client, csrf)
    taken = client.post("/programs", data={"document": ALPHA, "format": "toml", "csrf_token": csrf})
    assert taken.status_code == 409 and "exists already" in taken.text
    assert "The library is empty." not in client.get("/programs").text


def test_auditors_read_the_library_but_do_not_write(
    client: TestClient, sign_in: SignIn, seeded: Seeded
) -> None:
    program_id = create(client, sign_in(seeded.admin))
    client.cookies.clear()
    csrf = sign_in(seeded.auditor)
    page = client.get(f"/programs/{program_id}")
    assert page.status_code == 200
    assert "Save as version" not in page.text and "Alpha drift" in page.text
    refused = client.post(
        "/programs", data={"document": ALPHA, "format": "toml", "csrf_token": csrf}
    )
    assert refused.status_code == 403
    assert client.post("/programs", data={"document": ALPHA, "format": "toml"}).status_code == 403
    assert client.get("/programs/0123abcd").status_code == 404


def test_preview_needs_a_session(client: TestClient, sign_in: SignIn, seeded: Seeded) -> None:
    program_id = create(client, sign_in(seeded.clinician))
    client.cookies.clear()
    response = client.get(f"/programs/{program_id}/preview.wav")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login")


def test_a_clinician_hears_a_program_as_their_patient_would(
    client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    csrf = sign_in(seeded.clinician)
    program_id = create(client, csrf)
    page = client.get(f"/patients/{seeded.patient}?preview={program_id}")
    src = f"/programs/{program_id}/preview.wav?patient={seeded.patient}"
    assert f'src="{src}&amp;v=' in page.text
    wav = client.get(src)
    assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
    left, right, _rate = channel_peaks(wav.content)
    assert abs(abs(right - left) - 10) < 1.5
    with Session(engine) as session:
        audit = session.exec(select(AuditRow).where(AuditRow.resource == "program_preview")).one()
    assert audit.patient_id == seeded.patient and audit.resource_id == program_id
    other = client.get(f"/programs/{program_id}/preview.wav?patient={seeded.other_patient}")
    assert other.status_code == 403
    client.cookies.clear()
    sign_in(seeded.admin)
    assert client.get(src).status_code == 403
    assert client.get(f"/programs/{program_id}/preview.wav").status_code == 200


def test_tags_are_shown_and_edited_without_a_new_version(
    client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    csrf = sign_in(seeded.clinician)
    program_id = create_program(client, csrf, ALPHA, tags=" Sleep,evening , sleep,")
    assert [row[3] for row in table_cells(client.get("/programs").text, "programs")] == [
        "sleep, evening"
    ]
    page = client.get(f"/programs/{program_id}")
    assert "Tags: sleep, evening" in page.text and 'value="sleep, evening"' in page.text

    def save(tags: str, version: str = "1") -> Response:
        response: Response = client.post(
            f"/programs/{program_id}",
            data={
                "document": ALPHA,
                "format": "toml",
                "tags": tags,
                "version": version,
                "csrf_token": csrf,
            },
        )
        return response

    saved = save("tinnitus")
    assert saved.status_code == 303
    assert saved.headers["location"] == f"/programs/{program_id}?unchanged=1"
    page = client.get(saved.headers["location"])
    assert "the program stays version 1" in page.text and "Tags: tinnitus" in page.text

    bad = save("ok, bad!")
    assert bad.status_code == 400
    assert "Not saved: tags: tag &#39;bad!&#39; may hold only" in bad.text
    assert 'value="ok, bad!"' in bad.text  # what was typed stays in the form
    stale = save("late", version="0")
    assert stale.status_code == 409
    with Session(engine) as session:
        actions = [
            a.action
            for a in session.exec(select(AuditRow).where(AuditRow.resource == "program")).all()
        ]
    assert sorted(actions) == ["create", "update_tags"]
