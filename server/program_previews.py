"""Previews of library programs as WAV files, rendered by the engine's pipeline
(``resonera.engine.pipeline.build_pipeline``: ``ProgramRenderer``, the safety chain, ``play``, as
``resonera-device render --calibration`` renders) under the packaged default calibration (the
server does not know a device's own) and the profile the patient's device would enforce, at most
``preview_max_s`` seconds, into ``<data_dir>/previews/<key>.wav``.

The key is a hash of the program's content hash, the calibration, the profile and the engine
version: a text edit that changes nothing audible keeps the file, any audible change makes a new
one. One render per key at a time (a file lock, so several API processes agree too); the WAV is
written beside its name and renamed onto it, so no one is ever served half a file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fastapi import Request
from sqlmodel import Session

from resonera.common.desired import DesiredStateRejected
from resonera.common.errors import ProgramError
from resonera.common.prescription import resolve_content_paths
from resonera.common.profile import HearingProfile
from resonera.common.program import Program
from resonera.common.program_check import check_program_for
from resonera.engine import capabilities
from resonera.engine.audio.calibration import Calibration, default_calibration
from resonera.server.audit import audit
from resonera.server.backgrounds import BackgroundStore
from resonera.server.desired import DesiredService, config_document, enforced_profile
from resonera.server.models import PatientRow, ProgramLibraryRow, UserRow
from resonera.server.program_documents import ProgramNotFound, program_of
from resonera.server.settings import ServerSettings

log = logging.getLogger(__name__)

PREVIEW_SAMPLE_RATE: Final = 44100
PREVIEW_BLOCK_FRAMES: Final = 4096
#: A preview cut short fades out over this long instead of stopping dead.
PREVIEW_FADE_S: Final = 0.5
#: Bump when the preview's own rendering changes (block size, format, fade), so caches refill.
PREVIEW_FORMAT: Final = 1


@dataclass(frozen=True)
class Preview:
    """A rendered preview: the file, how many seconds of the program it holds, and whether it
    was cut short at the settings' ``preview_max_s``."""

    path: Path
    seconds: float
    program_s: float
    truncated: bool
    cached: bool


class PreviewRefused(Exception):
    """The program cannot play for this patient (their profile or limits); the message says why."""


def engine_version() -> str:
    """The engine that renders (``engine.capabilities.engine_version``: the release and a hash of
    the engine's code) and this preview format, so a new release, any change to the engine's code
    or to the preview's own rendering renders previews afresh."""
    return f"{capabilities.engine_version()}/{PREVIEW_FORMAT}"


def patient_profile(session: Session, patient_id: str) -> HearingProfile:
    """The profile a device of this patient enforces: their desired profile over the defaults,
    narrowed by their limits (``common.desired.effective_profile``, as the device computes it)."""
    doc = config_document(DesiredService.current(session, patient_id))
    try:
        return enforced_profile(doc)
    except DesiredStateRejected as exc:
        raise PreviewRefused(f"the patient's device would refuse their profile: {exc}") from None


def _preview_key(
    content_hash: str, calibration: Calibration, profile: HearingProfile, max_s: float
) -> str:
    parts = {
        "program": content_hash,
        "calibration": calibration.model_dump(mode="json"),
        "profile": profile.model_dump(mode="json"),
        "engine": engine_version(),
        "rate": PREVIEW_SAMPLE_RATE,
        "max_s": max_s,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _render(
    program: Program, profile: HearingProfile, calibration: Calibration, path: Path, max_s: float
) -> None:
    # Here, not at the top: numpy and the engine cost every server process (API, ingest, CLI)
    # 13 MB and 0.2 s at start (measured), and only a preview needs them.
    from resonera.engine.audio.sinks import WavSink
    from resonera.engine.pipeline import build_pipeline

    started = time.perf_counter()
    # no MCU limits, no ledger: a file on disk exposes no one, so no dose is counted for a preview
    pipeline = build_pipeline(
        program, sample_rate=PREVIEW_SAMPLE_RATE, calibration=calibration, profile=profile
    )
    renderer = pipeline.renderer
    fade_s = min(PREVIEW_FADE_S, max_s / 10)
    result = pipeline.play(
        WavSink(path, durable=False, background=True),
        block_frames=PREVIEW_BLOCK_FRAMES,
        should_stop=lambda: renderer.position_s >= max_s - fade_s,
        stop_fade_s=fade_s,
        compensate_latency=True,
    )
    if result.outcome == "fault":
        raise OSError(f"cannot write the preview {path}: {result.reason}")
    log.info(
        "rendered preview %s: %.1f s of %r in %.2f s",
        path.name,
        result.played_s,
        program.name,
        time.perf_counter() - started,
    )


def render_preview(
    settings: ServerSettings,
    session: Session,
    program_id: str,
    *,
    patient_id: str | None = None,
) -> Preview:
    """The program's preview from the cache, rendered first on a miss (once, whoever else asks
    meanwhile). ``ProgramNotFound``; ``PreviewRefused`` when the patient may not hear it."""
    row = session.get(ProgramLibraryRow, program_id)
    if row is None:
        raise ProgramNotFound(program_id)
    if patient_id is not None and session.get(PatientRow, patient_id) is None:
        raise ProgramNotFound(f"patient {patient_id}")
    profile = patient_profile(session, patient_id) if patient_id else HearingProfile()
    calibration = default_calibration()  # the server does not know a device's own calibration
    try:
        program = check_program_for(program_of(row), profile, profile.output)
        program = resolve_content_paths(program, BackgroundStore.for_settings(settings).locate)
    except ProgramError as exc:  # ContentMissing included: a background the store lacks
        raise PreviewRefused(str(exc)) from None
    max_s = settings.preview_max_s
    folder = settings.data_dir / "previews"
    folder.mkdir(parents=True, exist_ok=True)
    key = _preview_key(row.content_hash, calibration, profile, max_s)
    path = folder / f"{key}.wav"
    cached = path.exists()
    if not cached:
        with open(folder / f"{key}.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the second asker waits here, then finds the file
            if not path.exists():
                _render(program, profile, calibration, path, max_s)
    seconds = min(program.duration_s, max_s)
    return Preview(path, seconds, program.duration_s, program.duration_s > max_s, cached)


def preview_wav(
    settings: ServerSettings,
    session: Session,
    program_id: str,
    *,
    patient_id: str | None = None,
) -> Path:
    """The path of the program's preview WAV (see ``render_preview``)."""
    return render_preview(settings, session, program_id, patient_id=patient_id).path


def audit_preview(
    session: Session, request: Request, user: UserRow, program_id: str, patient_id: str | None
) -> None:
    """A preview for a patient is a read of their data: audited, and committed. One for the
    default profile is not patient data and is not."""
    if patient_id is None:
        return
    audit(
        session,
        request,
        user,
        "read",
        "program_preview",
        resource_id=program_id,
        patient_id=patient_id,
    )
    session.commit()
