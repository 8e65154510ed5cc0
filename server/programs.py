"""The program library: programs clinicians write (TOML or YAML), checked with the device's own code
(``common.program``, ``common.program_check``), versioned, audited, and previewed as WAV files.

- A document is refused, with the field (or line) and the reason, by the very model the device
  plays from; background layers are refused too (the server keeps no sound files, and a path in a
  program must never read a server file).
- ``version`` grows by one per change; an update names the version it replaces and loses with
  ``VersionConflict`` when someone else changed the program first (a compare-and-set ``UPDATE``, so
  two concurrent writers cannot both win).
- Previews are rendered by the engine's pipeline (``resonera.engine.pipeline.build_pipeline``:
  ``ProgramRenderer``, the safety chain, ``play``, as ``resonera-device render --calibration``
  renders) under the packaged default calibration (the server does not know a device's own), at most
  ``preview_max_s`` seconds, into ``<data_dir>/previews/<key>.wav``. The key is a hash of the
  program's content hash, the calibration, the profile the patient's device would enforce and the
  engine version: a text edit that changes nothing audible keeps the file, any audible change makes
  a new one. One render per key at a time (a file lock, so several API processes agree too); the
  WAV is written beside its name and renamed onto it, so no one is ever served half a file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import time
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files
from pathlib import Path
from typing import Any, Final, Literal

from fastapi import Request
from pydantic import ValidationError
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from resonera.common.desired import DesiredDocument, DesiredStateRejected, effective_profile
from resonera.common.errors import ProgramError, VersionConflict, describe_validation_error
from resonera.common.ids import new_id
from resonera.common.profile import HearingProfile
from resonera.common.program import Program
from resonera.common.program_check import check_program_for
from resonera.engine.audio.calibration import Calibration, default_calibration
from resonera.server.audit import audit
from resonera.server.models import PatientRow, ProgramLibraryRow, UserRow
from resonera.server.security import now_utc
from resonera.server.settings import ServerSettings

log = logging.getLogger(__name__)

ProgramFormat = Literal["toml", "yaml"]
FORMATS: Final = ("toml", "yaml")
#: A program document above this is refused (hand-written programs are a few KiB).
MAX_DOCUMENT_CHARS: Final = 64 * 1024
PREVIEW_SAMPLE_RATE: Final = 44100
PREVIEW_BLOCK_FRAMES: Final = 4096
#: A preview cut short fades out over this long instead of stopping dead.
PREVIEW_FADE_S: Final = 0.5
#: Bump when the preview's own rendering changes (block size, format, fade), so caches refill.
PREVIEW_FORMAT: Final = 1
#: The engine's packages, whose code is hashed into ``engine_version``.
ENGINE_PACKAGES: Final = ("resonera.engine", "resonera.engine.audio", "resonera.engine.safety")


class ProgramInvalid(Exception):
    """A document the device would refuse: ``field`` (a dotted path, ``document`` or ``name``) and
    the ``reason``, with the line for syntax errors."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NameTaken(ProgramInvalid):
    """Another library program has this name already."""


class ProgramNotFound(LookupError):
    pass


# -- reading and checking documents ----------------------------------------------------------


def _yaml_data(document: str) -> object:
    try:
        import yaml  # type: ignore[import-untyped,unused-ignore]
    except ImportError:  # PyYAML is in the server's dependencies; a trimmed install may lack it
        raise ProgramInvalid("format", "YAML is not available on this server; use TOML") from None
    try:
        # Aliases would let a few lines expand into a huge structure: hand-written programs need none.
        for event in yaml.parse(document, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise ProgramInvalid("document", "YAML aliases (*name) are not allowed")
        return yaml.safe_load(document)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ProgramInvalid("document", f"not valid YAML{where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ProgramInvalid("document", f"not valid YAML: {exc}") from None


def parse_document(document: str, fmt: ProgramFormat) -> Program:
    """The program a document describes, checked as a device checks it for a default profile on
    headphones; ``ProgramInvalid`` naming the field (or line) otherwise."""
    if fmt not in FORMATS:
        raise ProgramInvalid("format", f"{fmt!r} is not one of {', '.join(FORMATS)}")
    if len(document) > MAX_DOCUMENT_CHARS:
        raise ProgramInvalid(
            "document", f"{len(document)} characters; at most {MAX_DOCUMENT_CHARS} are allowed"
        )
    if fmt == "toml":
        try:
            data: object = tomllib.loads(document)
        except tomllib.TOMLDecodeError as exc:
            raise ProgramInvalid("document", f"not valid TOML: {exc}") from None
    else:
        data = _yaml_data(document)
    try:
        program = Program.model_validate(data)
    except ValidationError as exc:
        field = ".".join(str(p) for p in exc.errors()[0]["loc"]) or "document"
        reason = describe_validation_error(exc)
        raise ProgramInvalid(field, reason.removeprefix(f"{field}: ")) from None
    backgrounds = program.background_paths()
    if backgrounds:
        raise ProgramInvalid(
            backgrounds[0][0], "background files cannot be used in the library (no sound files)"
        )
    try:
        return check_program_for(program, HearingProfile(), "headphones")
    except ProgramError as exc:
        raise ProgramInvalid("document", str(exc)) from None


def program_of(row: ProgramLibraryRow) -> Program:
    """The stored program (checked when it was stored)."""
    return parse_document(row.document, "yaml" if row.format == "yaml" else "toml")


def desired_program(row: ProgramLibraryRow) -> dict[str, Any]:
    """The program as an entry of a patient's desired state (``PUT /patients/{id}/desired``)."""
    return program_of(row).model_dump(mode="json")


# -- the library -----------------------------------------------------------------------------


def list_programs(session: Session) -> list[ProgramLibraryRow]:
    return list(session.exec(select(ProgramLibraryRow).order_by(col(ProgramLibraryRow.name))))


def get_program(session: Session, program_id: str) -> ProgramLibraryRow | None:
    return session.get(ProgramLibraryRow, program_id)


def _audit(
    session: Session, user: UserRow, action: str, program_id: str, request: Request | None
) -> None:
    audit(session, request, user, action, "program", resource_id=program_id)


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


def _actor(session: Session, user_id: int) -> UserRow:
    user = session.get(UserRow, user_id)
    if user is None:
        raise ValueError(f"no user {user_id}")
    return user


def _name_free(session: Session, name: str, program_id: str | None) -> None:
    other = session.exec(select(ProgramLibraryRow).where(ProgramLibraryRow.name == name)).first()
    if other is not None and other.id != program_id:
        raise NameTaken("name", f"a library program named {name!r} exists already")


def _commit_named(session: Session, name: str) -> None:
    """Commit; a concurrent writer who took the same name first makes this ``NameTaken``."""
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise NameTaken("name", f"a library program named {name!r} exists already") from None


def create_program(
    session: Session,
    *,
    actor_user_id: int,
    document: str,
    fmt: ProgramFormat,
    request: Request | None = None,
) -> ProgramLibraryRow:
    """A new library program at version 1, committed with its audit row."""
    program = parse_document(document, fmt)
    user = _actor(session, actor_user_id)
    _name_free(session, program.name, None)
    now = now_utc()
    row = ProgramLibraryRow(
        id=new_id(),
        name=program.name,
        version=1,
        document=document,
        format=fmt,
        content_hash=program.digest(),
        created_by=actor_user_id,
        created_at=now,
        updated_by=actor_user_id,
        updated_at=now,
    )
    session.add(row)
    _audit(session, user, "create", row.id, request)
    _commit_named(session, program.name)
    session.refresh(row)  # loaded, so it stays readable in a session that expires on commit
    return row


def update_program(
    session: Session,
    program_id: str,
    *,
    actor_user_id: int,
    document: str,
    fmt: ProgramFormat,
    expected_version: int,
    request: Request | None = None,
) -> ProgramLibraryRow:
    """The program's next version, if it is still at ``expected_version`` (``VersionConflict``
    otherwise; ``ProgramNotFound`` when there is no such program)."""
    row = get_program(session, program_id)
    if row is None:
        raise ProgramNotFound(program_id)
    program = parse_document(document, fmt)
    user = _actor(session, actor_user_id)
    if row.version != expected_version:
        raise VersionConflict(row.version, "the program")
    _name_free(session, program.name, program_id)
    result = session.execute(
        update(ProgramLibraryRow)
        .where(
            col(ProgramLibraryRow.id) == program_id,
            col(ProgramLibraryRow.version) == expected_version,
        )
        .values(
            name=program.name,
            version=expected_version + 1,
            document=document,
            format=fmt,
            content_hash=program.digest(),
            updated_by=actor_user_id,
            updated_at=now_utc(),
        )
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        current = get_program(session, program_id)
        raise VersionConflict(
            current.version if current is not None else expected_version, "the program"
        )
    _audit(session, user, "update", program_id, request)
    _commit_named(session, program.name)
    session.refresh(row)
    return row


# -- previews --------------------------------------------------------------------------------


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


@cache
def engine_version() -> str:
    """The engine that renders: the package version and a hash of the engine's code
    (``resonera.engine``), so a new release, or any change to that code, renders previews afresh."""
    digest = hashlib.sha256()
    for package in ENGINE_PACKAGES:
        for source in sorted(files(package).iterdir(), key=lambda f: f.name):
            if source.name.endswith(".py"):
                digest.update(source.name.encode() + b"\0" + source.read_bytes())
    try:
        release = version("resonera")
    except PackageNotFoundError:  # a source tree that was never installed
        release = "0+unknown"
    return f"{release}+{digest.hexdigest()[:12]}/{PREVIEW_FORMAT}"


def patient_profile(session: Session, patient_id: str) -> HearingProfile:
    """The profile a device of this patient enforces: their desired profile over the defaults,
    narrowed by their limits (``common.desired.effective_profile``, as the device computes it)."""
    from resonera.server.desired import DesiredService, config_document

    doc = config_document(DesiredService.current(session, patient_id))
    try:
        return effective_profile(DesiredDocument(0, doc, b""), HearingProfile())
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
    row = get_program(session, program_id)
    if row is None:
        raise ProgramNotFound(program_id)
    if patient_id is not None and session.get(PatientRow, patient_id) is None:
        raise ProgramNotFound(f"patient {patient_id}")
    profile = patient_profile(session, patient_id) if patient_id else HearingProfile()
    calibration = default_calibration()  # the server does not know a device's own calibration
    try:
        program = check_program_for(program_of(row), profile, profile.output)
    except ProgramError as exc:
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
