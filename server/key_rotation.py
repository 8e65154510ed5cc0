"""Re-encrypting every patient field under the newest patient key (``rotate-patient-key``).

How a key is rotated: add the new key as the last line of ``patient_key_file`` (keep the old
lines), restart the API processes so they encrypt with it, run ``rotate-patient-key``, and remove
the old lines only when it reports that no field uses them any more. While it runs, every process
reads both keys, so the API keeps working.

Patients are taken in id order, ``batch_size`` per transaction; each transaction re-encrypts its
patients, writes an audit row per patient and moves the run's cursor (``key_rotation``) past them.
A run that is killed loses at most its open transaction and resumes at the cursor. Each update is
conditional on the ciphertext it read, so a patient changed meanwhile by the API is left alone in
that pass; a final pass from the start repeats until no field is left under another key.
"""

from __future__ import annotations

import getpass
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, and_, func, or_, select
from sqlalchemy.engine import Engine

from resonera.common.errors import ResoneraError
from resonera.server.crypto import DecryptionError, FieldCipher, key_id_of
from resonera.server.models import AuditRow, KeyRotationRow, PatientRow, table_of

log = logging.getLogger(__name__)

#: Encrypted patient fields: (field name in the associated data, column).
PATIENT_FIELDS: Final = (
    ("name", "name_enc"),
    ("birth_date", "birth_date_enc"),
    ("notes", "notes_enc"),
)
BATCH_SIZE: Final = 200
#: Passes over the patients before giving up on ones the API keeps changing under us.
MAX_PASSES: Final = 5
AUDIT_RESOURCE: Final = "patient_key"


class RotationError(ResoneraError):
    """The rotation cannot go on (a field under a key that is not configured, for one)."""


@dataclass
class RotationReport:
    key_id: str
    #: Patients and fields re-encrypted by this run (not by an earlier, interrupted one).
    patients: int = 0
    fields: int = 0
    resumed: bool = False
    #: Other keys this run found fields under (an interrupted run's finds are not repeated).
    old_keys: set[str] = field(default_factory=set)


def _now() -> datetime:
    return datetime.now(UTC)


def cli_actor() -> str:
    """Who runs the command, for the audit log: ``cli:<user>@<host>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"[:254]


def _needs_rotation(table: Any, key_id: str) -> Any:
    # Not LIKE: "_" in a key id is a wildcard there, and SQLite's LIKE ignores case.
    prefix = f"{key_id}:"
    return or_(
        *(func.substr(table.c[column], 1, len(prefix)) != prefix for _f, column in PATIENT_FIELDS)
    )


def remaining(engine: Engine, key_id: str) -> int:
    """Patients with at least one field not under ``key_id``."""
    table = table_of(PatientRow)
    with engine.connect() as conn:
        query = select(func.count()).select_from(table).where(_needs_rotation(table, key_id))
        return int(conn.execute(query).scalar_one())


def rotate_patient_key(
    engine: Engine,
    cipher: FieldCipher,
    *,
    batch_size: int = BATCH_SIZE,
    pause_s: float = 0.0,
    actor: str = "",
    clock: Callable[[], datetime] = _now,
    progress: Callable[[RotationReport], None] | None = None,
) -> RotationReport:
    """Re-encrypt every patient field under ``cipher.current``, resuming an unfinished run for
    that key. ``pause_s`` between batches leaves the database to a live API. Raises
    ``RotationError`` when a field cannot be decrypted with the configured keys."""
    if batch_size < 1:
        raise RotationError("the batch size must be at least 1")
    actor = actor or cli_actor()
    key_id = cipher.current
    report = RotationReport(key_id=key_id)
    rotations = table_of(KeyRotationRow)
    patients = table_of(PatientRow)
    with engine.begin() as conn:
        run = conn.execute(
            select(rotations)
            .where(rotations.c.key_id == key_id, rotations.c.finished_at.is_(None))
            .order_by(rotations.c.id.desc())
            .limit(1)
        ).first()
        now = clock()
        if run is None:
            run_id = conn.execute(
                rotations.insert()
                .returning(rotations.c.id)
                .values(
                    key_id=key_id,
                    started_at=now,
                    updated_at=now,
                    after_patient_id="",
                    patients=0,
                    fields=0,
                    started_by=actor,
                )
            ).scalar_one()
            cursor = ""
        else:
            run_id, cursor, report.resumed = run.id, run.after_patient_id, True
        _audit(conn, now, actor, "resume" if report.resumed else "start", key_id)
    for _ in range(MAX_PASSES):
        while True:
            with engine.begin() as conn:
                rows = conn.execute(
                    select(patients.c.id, *(patients.c[c] for _f, c in PATIENT_FIELDS))
                    .where(and_(patients.c.id > cursor, _needs_rotation(patients, key_id)))
                    .order_by(patients.c.id)
                    .limit(batch_size)
                ).all()
                if not rows:
                    break
                now = clock()
                done = _rotate_batch(conn, cipher, rows, report=report, now=now, actor=actor)
                cursor = rows[-1].id
                conn.execute(
                    rotations.update()
                    .where(rotations.c.id == run_id)
                    .values(
                        after_patient_id=cursor,
                        updated_at=now,
                        patients=rotations.c.patients + done[0],
                        fields=rotations.c.fields + done[1],
                    )
                )
            if progress is not None:
                progress(report)
            if pause_s > 0:
                time.sleep(pause_s)
        left = remaining(engine, key_id)
        if left == 0:
            break
        log.info("%d patients changed during the pass; another pass", left)
        cursor = ""
    else:
        raise RotationError(
            f"{left} patients still have fields under other keys after {MAX_PASSES} passes "
            "(changed while rotating?); run rotate-patient-key again"
        )
    with engine.begin() as conn:
        now = clock()
        conn.execute(
            rotations.update()
            .where(rotations.c.id == run_id)
            .values(finished_at=now, updated_at=now, after_patient_id=cursor)
        )
        _audit(conn, now, actor, "finish", key_id)
    return report


def _rotate_batch(
    conn: Connection,
    cipher: FieldCipher,
    rows: Sequence[Any],
    *,
    report: RotationReport,
    now: datetime,
    actor: str,
) -> tuple[int, int]:
    """Re-encrypt ``rows``; return (patients, fields) changed."""
    patients = table_of(PatientRow)
    changed_patients = changed_fields = 0
    for row in rows:
        values: dict[str, str] = {}
        for name, column in PATIENT_FIELDS:
            stored = row._mapping[column]
            try:
                new = cipher.reencrypt(stored, patient_id=row.id, field=name)
            except DecryptionError as exc:
                raise RotationError(
                    f"{exc}; add its key to the patient key file (keep the old keys until the "
                    "rotation is done) and run rotate-patient-key again"
                ) from None
            if new is not None:
                report.old_keys.add(key_id_of(stored))
                values[column] = new
        if not values:
            continue
        # Only if nobody changed the patient since we read it; a later pass takes it otherwise.
        unchanged = and_(
            patients.c.id == row.id, *(patients.c[c] == row._mapping[c] for _f, c in PATIENT_FIELDS)
        )
        if conn.execute(patients.update().where(unchanged).values(**values)).rowcount != 1:
            continue
        _audit(conn, now, actor, "reencrypt", cipher.current, patient_id=row.id)
        changed_patients += 1
        changed_fields += len(values)
    report.patients += changed_patients
    report.fields += changed_fields
    return changed_patients, changed_fields


def _audit(
    conn: Connection,
    now: datetime,
    actor: str,
    action: str,
    key_id: str,
    *,
    patient_id: str | None = None,
) -> None:
    conn.execute(
        table_of(AuditRow).insert(),
        {
            "at": now,
            "actor_id": None,
            "actor_email": actor,
            "actor_role": "admin",
            "action": f"rotate_key_{action}",
            "resource": "patient" if patient_id is not None else AUDIT_RESOURCE,
            "resource_id": patient_id if patient_id is not None else key_id,
            "patient_id": patient_id,
            "method": "CLI",
            "path": "rotate-patient-key",
            "client": socket.gethostname()[:100],
        },
    )
