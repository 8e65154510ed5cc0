"""``rotate-patient-key``: every patient field re-encrypted under the newest key, in batches,
audited, resumable after a kill (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from support import wait_until

from resonera.common.ids import new_id
from resonera.server.crypto import FieldCipher, key_id_of, new_key_line, parse_keys
from resonera.server.key_rotation import RotationError, rotate_patient_key
from resonera.server.models import AuditRow, KeyRotationRow, PatientRow

BIN = Path(sys.executable).parent / "resonera-server"
OLD = new_key_line("old1")
NEW = new_key_line("new2")


def _cipher(*lines: str) -> FieldCipher:
    return FieldCipher(*parse_keys("\n".join(lines), "test"))


def _add_patients(engine: Engine, cipher: FieldCipher, count: int) -> dict[str, str]:
    """``count`` patients under ``cipher``'s key; their names by id."""
    now = datetime.now(UTC)
    names = {}
    with Session(engine) as session:
        for number in range(count):
            patient_id, name = new_id(), f"Patient {number}"
            names[patient_id] = name
            values = {"name": name, "birth_date": "1970-01-02", "notes": ""}
            sealed = {
                field: cipher.encrypt(value, patient_id=patient_id, field=field)
                for field, value in values.items()
            }
            session.add(
                PatientRow(
                    id=patient_id,
                    name_enc=sealed["name"],
                    birth_date_enc=sealed["birth_date"],
                    notes_enc=sealed["notes"],
                    created_at=now,
                    updated_at=now,
                )
            )
        session.commit()
    return names


def _patients(engine: Engine) -> list[PatientRow]:
    with Session(engine) as session:
        return list(session.exec(select(PatientRow).order_by(col(PatientRow.id))).all())


def _keys_in_use(engine: Engine) -> list[set[str]]:
    return [
        {key_id_of(p.name_enc), key_id_of(p.birth_date_enc), key_id_of(p.notes_enc)}
        for p in _patients(engine)
    ]


def _runs(engine: Engine) -> list[KeyRotationRow]:
    with Session(engine) as session:
        return list(session.exec(select(KeyRotationRow).order_by(col(KeyRotationRow.id))).all())


def _audit_actions(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return list(session.exec(select(AuditRow.action).order_by(col(AuditRow.id))).all())


def _readable_with_only(engine: Engine, names: dict[str, str], key: str) -> None:
    cipher = _cipher(key)
    for patient in _patients(engine):
        assert (
            cipher.decrypt(patient.name_enc, patient_id=patient.id, field="name")
            == (names[patient.id])
        )
        assert cipher.decrypt(patient.birth_date_enc, patient_id=patient.id, field="birth_date")
        assert cipher.decrypt(patient.notes_enc, patient_id=patient.id, field="notes") == ""


def test_rotation_reencrypts_every_field_in_batches_and_audits(engine: Engine) -> None:
    names = _add_patients(engine, _cipher(OLD), 23)
    report = rotate_patient_key(engine, _cipher(OLD, NEW), batch_size=5, actor="cli:test")
    assert (report.key_id, report.patients, report.fields) == ("new2", 23, 69)
    assert report.old_keys == {"old1"}
    assert not report.resumed
    assert _keys_in_use(engine) == [{"new2"}] * 23
    _readable_with_only(engine, names, NEW)  # the old key can go now
    (run,) = _runs(engine)
    assert run.finished_at is not None
    assert (run.patients, run.fields, run.started_by) == (23, 69, "cli:test")
    actions = _audit_actions(engine)
    assert actions[0] == "rotate_key_start"
    assert actions[-1] == "rotate_key_finish"
    assert actions.count("rotate_key_reencrypt") == 23
    with Session(engine) as session:
        per_patient = session.exec(
            select(AuditRow).where(AuditRow.action == "rotate_key_reencrypt")
        ).all()
    assert {a.patient_id for a in per_patient} == set(names)
    assert {a.actor_email for a in per_patient} == {"cli:test"}
    # Nothing left to do: a new run finds nothing and says so.
    again = rotate_patient_key(engine, _cipher(OLD, NEW), actor="cli:test")
    assert (again.patients, again.fields) == (0, 0)


def test_key_ids_that_look_alike_are_told_apart(engine: Engine) -> None:
    # As a LIKE pattern "k_2:%" matches "kx2:...", and "K_2:..." in SQLite's case-blind LIKE.
    wildcard, upper, new = new_key_line("kx2"), new_key_line("K_2"), new_key_line("k_2")
    names = _add_patients(engine, _cipher(wildcard), 2) | _add_patients(engine, _cipher(upper), 2)
    report = rotate_patient_key(engine, _cipher(wildcard, upper, new))
    assert report.patients == 4
    assert report.old_keys == {"kx2", "K_2"}
    assert _keys_in_use(engine) == [{"k_2"}] * 4
    _readable_with_only(engine, names, new)


def test_a_field_under_an_unconfigured_key_stops_with_what_to_do(engine: Engine) -> None:
    _add_patients(engine, _cipher(new_key_line("lost")), 1)
    with pytest.raises(RotationError, match="unknown key 'lost'; add its key to the patient key"):
        rotate_patient_key(engine, _cipher(OLD, NEW))
    assert _keys_in_use(engine) == [{"lost"}]


def _env(database_url: str, keys: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESONERA_SERVER_")}
    return {
        **env,
        "RESONERA_SERVER_DATABASE_URL": database_url,
        "RESONERA_SERVER_PATIENT_KEYS": keys,
    }


def test_killed_rotation_resumes_where_it_stopped(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    names = _add_patients(engine, _cipher(OLD), 40)
    env = _env(database_url, f"{OLD};{NEW}")
    command = [str(BIN), "rotate-patient-key", "--batch-size", "3", "--pause", "0.2"]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_until(
            lambda: any(run.patients >= 6 for run in _runs(engine)),
            what="the rotation's first batches",
        )
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # Killed midway: some patients under the new key, the rest under the old, none half done.
    (run,) = _runs(engine)
    assert run.finished_at is None
    in_use = _keys_in_use(engine)
    assert {"new2"} in in_use
    assert {"old1"} in in_use
    assert all(len(keys) == 1 for keys in in_use)
    done_before = in_use.count({"new2"})
    assert run.patients == done_before
    both = _cipher(OLD, NEW)
    for patient in _patients(engine):
        assert (
            both.decrypt(patient.name_enc, patient_id=patient.id, field="name")
            == (names[patient.id])
        )

    result = subprocess.run(
        [str(BIN), "rotate-patient-key", "--batch-size", "7", "--key-id", "new2"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "resumed an interrupted run" in result.stdout
    assert f"of {40 - done_before} patients under key 'new2'" in result.stdout
    assert _keys_in_use(engine) == [{"new2"}] * 40
    _readable_with_only(engine, names, NEW)
    (run,) = _runs(engine)
    assert run.finished_at is not None
    assert run.patients == 40
    actions = _audit_actions(engine)
    assert actions.count("rotate_key_reencrypt") == 40  # each patient once, across both runs
    assert actions.count("rotate_key_resume") == 1


def test_the_command_refuses_a_key_id_that_is_not_the_newest(
    database_url: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [str(BIN), "rotate-patient-key", "--key-id", "old1"],
        check=False,
        cwd=tmp_path,
        env=_env(database_url, f"{OLD};{NEW}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "the newest patient key is 'new2', not 'old1'" in line
