"""What the command line sets up without the API: the first admin, and the demo's clinician,
patient and device. Both validate like the API does."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.common.errors import ConfigError, describe_validation_error
from resonera.common.ids import new_id
from resonera.server.crypto import FieldCipher
from resonera.server.models import (
    AssignmentRow,
    ClinicianPatientRow,
    DeviceRow,
    PatientRow,
    UserRow,
)
from resonera.server.schemas import DeviceIdStr, Email, Password, Role
from resonera.server.security import hash_password, now_utc
from resonera.server.settings import ServerSettings

#: The demo device counts as the demo patient's from this moment on.
DEMO_ASSIGNED_FROM = datetime(2000, 1, 1, tzinfo=UTC)


class _NewUser(BaseModel):
    email: Email
    password: Password
    role: Role


class _DemoDevice(BaseModel):
    device_id: DeviceIdStr


def _checked_user(email: str, password: str, role: str) -> _NewUser:
    try:
        return _NewUser.model_validate({"email": email, "password": password, "role": role})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def create_user(engine: Engine, email: str, password: str, role: str) -> int:
    """Add a user; ``ConfigError`` if the email is taken or anything is invalid."""
    new = _checked_user(email, password, role)
    with Session(engine) as session:
        if session.exec(select(UserRow).where(UserRow.email == new.email)).first() is not None:
            raise ConfigError(f"a user with email {new.email} exists")
        user = UserRow(
            email=new.email,
            password_hash=hash_password(new.password),
            role=new.role,
            created_at=now_utc(),
        )
        session.add(user)
        session.commit()
        assert user.id is not None
        return user.id


@dataclass(frozen=True)
class DemoSetup:
    user_id: int
    patient_id: str


def demo_setup(
    engine: Engine, settings: ServerSettings, *, device_id: str, email: str, password: str
) -> DemoSetup:
    """A clinician (password reset if they exist), their demo patient, ``device_id`` registered
    and assigned to the patient since 2000. Idempotent."""
    new = _checked_user(email, password, "clinician")
    try:
        _DemoDevice(device_id=device_id)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    cipher = FieldCipher.from_settings(
        settings.patient_key_file,
        settings.patient_keys.get_secret_value() if settings.patient_keys else None,
        demo=settings.demo,
    )
    now = now_utc()
    with Session(engine) as session:
        user = session.exec(select(UserRow).where(UserRow.email == new.email)).first()
        if user is None:
            user = UserRow(email=new.email, password_hash="", role="clinician", created_at=now)
        elif user.role != "clinician":
            raise ConfigError(f"{new.email} exists with role {user.role}, not clinician")
        user.password_hash = hash_password(new.password)
        session.add(user)
        session.flush()
        assert user.id is not None
        link = session.exec(
            select(ClinicianPatientRow).where(ClinicianPatientRow.user_id == user.id)
        ).first()
        if link is not None:
            patient_id = link.patient_id
        else:
            patient_id = new_id()
            fields = {
                "name": "Demo Patient",
                "birth_date": date(1980, 1, 1).isoformat(),
                "notes": "",
            }
            sealed = {
                name: cipher.encrypt(value, patient_id=patient_id, field=name)
                for name, value in fields.items()
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
            session.flush()
            session.add(ClinicianPatientRow(user_id=user.id, patient_id=patient_id, created_at=now))
        if session.get(DeviceRow, device_id) is None:
            session.add(DeviceRow(id=device_id, note="demo", created_at=now))
            session.flush()
        assigned = session.exec(
            select(AssignmentRow).where(AssignmentRow.device_id == device_id)
        ).first()
        if assigned is None:
            session.add(
                AssignmentRow(
                    device_id=device_id,
                    patient_id=patient_id,
                    valid_from=DEMO_ASSIGNED_FROM,
                    created_at=now,
                )
            )
        session.commit()
        return DemoSetup(user.id, patient_id)
