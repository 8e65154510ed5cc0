"""Prescriptions (issue 20): the size of a signed desired state carrying 10 prescribed programs (each
library program's full definition, id, version, SHA-256), as JSON and gzipped, and the time the
server takes to build and sign it: resolving the library versions, ``check_prescribed`` under the
patient's profile, the document and its Ed25519 signature (``DesiredService.set``), on a migrated
SQLite database, each run rolled back so every run does the same work.

Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import gzip
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session

from resonera.common.ids import new_id
from resonera.server import programs
from resonera.server.backgrounds import BackgroundStore
from resonera.server.crypto import Ed25519Signer
from resonera.server.db import make_engine, migrate
from resonera.server.desired import DesiredService, MemoryPublisher, enforced_profile
from resonera.server.models import AssignmentRow, DeviceRow, PatientRow, UserRow
from resonera.server.prescriptions import resolve_prescription
from resonera.server.schemas import ProgramRef

PROGRAMS = 10
RUNS = 50

#: A program as clinicians write them: five steps of two or three layers, slides between them.
STEP = """
[[steps]]
duration_s = {seconds}
[[steps.layers]]
type = "binaural"
carrier_hz = {carrier}
beat_hz = {beat}
gain = 0.25
[[steps.layers]]
type = "noise"
colour = "pink"
gain = 0.08
[[steps.layers]]
type = "tone"
frequency_hz = {tone}
gain = 0.05
"""


def _document(index: int) -> str:
    steps = "".join(
        STEP.format(seconds=120 + 30 * k, carrier=180 + 10 * index, beat=10 - k, tone=220 + 20 * k)
        for k in range(5)
    )
    return f'name = "Program {index:02d}"\ndescription = "five steps down"\n{steps}'


def _setup(engine_url: str) -> tuple[int, str, list[str]]:
    engine = make_engine(engine_url)
    migrate(engine)
    now = datetime.now(UTC)
    with Session(engine) as session:
        user = UserRow(email="c@example.org", password_hash="x", role="clinician", created_at=now)
        patient = PatientRow(
            id=new_id(),
            name_enc="",
            birth_date_enc="",
            notes_enc="",
            created_at=now,
            updated_at=now,
        )
        session.add_all([user, patient, DeviceRow(id="dev-bench", created_at=now)])
        session.commit()
        session.add(
            AssignmentRow(
                device_id="dev-bench", patient_id=patient.id, valid_from=now, created_at=now
            )
        )
        session.commit()
        assert user.id is not None
        user_id, patient_id = user.id, patient.id
    ids = []
    for index in range(PROGRAMS):
        with Session(engine) as session:
            ids.append(
                programs.create_program(
                    session, actor_user_id=user_id, document=_document(index), fmt="toml"
                ).id
            )
    engine.dispose()
    return user_id, patient_id, ids


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'server.db'}"
        user_id, patient_id, ids = _setup(url)
        engine = make_engine(url)
        store = BackgroundStore(Path(folder) / "backgrounds")
        service = DesiredService(Ed25519Signer.of(Ed25519PrivateKey.generate()), MemoryPublisher())
        refs = [ProgramRef(library_id=i) for i in ids]
        config = {"profile": {}, "limits": {"max_session_minutes": 60}, "sessions_per_week": 5}
        profile = enforced_profile(config)
        times, payload = [], b""
        for _ in range(RUNS):
            with Session(engine) as session:
                start = time.perf_counter()
                entries = resolve_prescription(
                    session, refs, profile=profile, capabilities={}, store=store
                )
                values = {**config, "programs": [e.model_dump(mode="json") for e in entries]}
                _row, outgoing = service.set(
                    session,
                    patient_id=patient_id,
                    expected_version=0,
                    values=values,
                    user_id=user_id,
                    now=datetime.now(UTC),
                )
                times.append(time.perf_counter() - start)
                payload = outgoing[0].payload
                session.rollback()
        engine.dispose()
    ms = sorted(t * 1000 for t in times)
    print(f"desired state with {PROGRAMS} prescribed programs (5 steps x 3 layers each):")
    print(f"  signed document: {len(payload):,} bytes, gzip {len(gzip.compress(payload)):,} bytes")
    print(
        f"  build and sign ({RUNS} runs: resolve versions, check_prescribed, document, Ed25519):"
        f" p50 {statistics.median(ms):.1f} ms, p95 {ms[int(0.95 * (len(ms) - 1))]:.1f} ms,"
        f" min {ms[0]:.1f} ms"
    )


if __name__ == "__main__":
    main()
