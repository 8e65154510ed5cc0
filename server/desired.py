"""The desired state: a patient's profile, limits and programs, versioned, signed, and published
retained on ``topics.desired(device)`` for each device the patient currently uses.

Two version numbers, on purpose:
- the patient's config version (``patient_config.version``, the API's ETag): one row per change,
  never updated; a unique (patient, version) constraint makes concurrent edits lose with 409;
- the device's desired version (``device_desired.version``): grows by one for every document
  published to that device, whichever patient it serves, so a device that refuses lower or equal
  versions (no replay, no rollback) accepts every legitimate change.

A clinician's dose-ledger reset requests (``DoseLedgerResetRow``) ride in every document of their
device until the device's ``dose_ledger_reset`` safety event answers them (``pending_resets``); the
device carries each out once, by id.

Documents are signed by a pluggable ``DesiredStateSigner`` (``crypto.py``) over canonical JSON and
published after the database commit (a document is never out before its row). Publishing is
retained and QoS 1; ``republish_all`` at start repairs anything a broker outage lost.

A device an active rollout targets finds ``agent_update`` in its document
(``common.agent_update.AgentUpdateTarget``, ``server/updates.py``); a device serving no patient
gets documents too when a rollout targets it, without a patient's part.

A revoked device's topic carries its ``revoked`` notice instead (``server/notices.py``,
``docs/shut-out.md``): ``notify_revoked`` publishes it after the revocation's commit, and
``republish_all`` publishes it again rather than the device's last document, which a revoked
device no longer takes.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

import paho.mqtt.client as paho
from fastapi import Request
from sqlalchemy import or_
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from resonera.common import topics
from resonera.common.clock import utc_now
from resonera.common.desired import (
    LEDGER_RESETS_KEY,
    DesiredDocument,
    effective_profile,
)
from resonera.common.errors import VersionConflict
from resonera.common.mqtt_client import build_client, connect_in_background, stop_loop
from resonera.common.profile import HearingProfile
from resonera.server import updates
from resonera.server.audit import audit
from resonera.server.crypto import DesiredStateSigner, sign_document
from resonera.server.models import (
    AssignmentRow,
    DeviceDesiredRow,
    DeviceRow,
    DoseLedgerResetRow,
    PatientConfigRow,
    SafetyEventRow,
    UserRow,
)
from resonera.server.notices import REVOKED_REASON, notice_payload
from resonera.server.settings import ServerSettings

log = logging.getLogger(__name__)

DOCUMENT_VERSION: Final = 1
#: The desired document's agent update (``common.agent_update.AgentUpdateTarget``).
AGENT_UPDATE_KEY: Final = "agent_update"


class DesiredPublisher(Protocol):
    """Puts a document on the broker (retained). Must not block for long; may queue."""

    def publish(self, device_id: str, payload: bytes) -> None: ...

    def connected(self) -> bool: ...

    def close(self) -> None: ...


@dataclass
class MemoryPublisher:
    """Keeps the last document per device (tests; an API without a broker)."""

    documents: dict[str, bytes] = field(default_factory=dict)
    up: bool = True

    def publish(self, device_id: str, payload: bytes) -> None:
        self.documents[device_id] = payload

    def connected(self) -> bool:
        return self.up

    def close(self) -> None:
        pass


class MqttPublisher:
    """A paho client of the API process, connecting (and reconnecting) in the background; paho
    queues QoS 1 publishes while it is disconnected."""

    def __init__(self, settings: ServerSettings) -> None:
        client_id = settings.ingest_client_id.replace("ingest", "api", 1)[:128]
        self._client = build_client(settings.mqtt, client_id, persistent_session=False)
        self._lock = threading.Lock()
        connect_in_background(self._client, settings.mqtt, clean_start=True, session_expiry_s=0)
        self._client.loop_start()

    def publish(self, device_id: str, payload: bytes) -> None:
        with self._lock:
            info = self._client.publish(topics.desired(device_id), payload, qos=1, retain=True)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            log.warning("publishing the desired state of %s failed: rc=%s", device_id, info.rc)

    def connected(self) -> bool:
        return self._client.is_connected()

    def close(self) -> None:
        self._client.disconnect()
        stop_loop(self._client)


@dataclass(frozen=True)
class Outgoing:
    device_id: str
    payload: bytes


def reset_outcomes(
    session: Session, device_ids: Iterable[str]
) -> dict[tuple[str, str], SafetyEventRow]:
    """The devices' ``dose_ledger_reset`` safety events, by (device, the request they answer): a
    device answers only for its own ledger."""
    rows = session.exec(
        select(SafetyEventRow)
        .where(
            col(SafetyEventRow.device_id).in_(sorted(set(device_ids))),
            SafetyEventRow.event_type == "dose_ledger_reset",
        )
        .order_by(col(SafetyEventRow.device_time))
    ).all()
    out: dict[tuple[str, str], SafetyEventRow] = {}
    for row in rows:
        detail = row.body.get("dose_reset")
        if isinstance(detail, dict) and isinstance(detail.get("reset_id"), str):
            # the first answer is the one carried out
            out.setdefault((row.device_id, detail["reset_id"]), row)
    return out


def pending_resets(session: Session, device_id: str, patient_id: str) -> list[dict[str, Any]]:
    """The reset requests for the device's ledger, made for the patient it serves, that the
    device has not answered yet: carried in every document until it does (once by id)."""
    rows = session.exec(
        select(DoseLedgerResetRow)
        .where(
            DoseLedgerResetRow.device_id == device_id,
            DoseLedgerResetRow.patient_id == patient_id,
        )
        .order_by(col(DoseLedgerResetRow.requested_at), col(DoseLedgerResetRow.id))
    ).all()
    answered = reset_outcomes(session, [device_id]) if rows else {}
    return [
        {"id": row.id, "reason": row.reason, "requested_by": row.requested_by_email}
        for row in rows
        if (device_id, row.id) not in answered
    ]


def config_document(row: PatientConfigRow | None) -> dict[str, Any]:
    if row is None:
        return {"profile": {}, "limits": {}, "programs": [], "sessions_per_week": 0}
    return {
        "profile": row.profile,
        "limits": row.limits,
        "programs": row.programs,
        "sessions_per_week": row.sessions_per_week,
    }


def enforced_profile(config: dict[str, Any]) -> HearingProfile:
    """The profile a device enforces under a config document's ``profile`` and ``limits``
    (``common.desired.effective_profile`` over the defaults, as the device computes it);
    ``DesiredStateRejected`` when the device would refuse them."""
    return effective_profile(DesiredDocument(0, config, b""), HearingProfile())


class DesiredService:
    def __init__(self, signer: DesiredStateSigner, publisher: DesiredPublisher) -> None:
        self.signer = signer
        self.publisher = publisher

    @staticmethod
    def current(session: Session, patient_id: str) -> PatientConfigRow | None:
        return session.exec(
            select(PatientConfigRow)
            .where(PatientConfigRow.patient_id == patient_id)
            .order_by(col(PatientConfigRow.version).desc())
        ).first()

    @staticmethod
    def devices_of(session: Session, patient_id: str, now: datetime) -> list[str]:
        rows = session.exec(
            select(AssignmentRow.device_id).where(
                AssignmentRow.patient_id == patient_id,
                col(AssignmentRow.valid_from) <= now,
                or_(col(AssignmentRow.valid_to).is_(None), col(AssignmentRow.valid_to) > now),
            )
        ).all()
        return sorted(set(rows))

    def set_audited(
        self,
        session: Session,
        request: Request,
        user: UserRow,
        *,
        patient_id: str,
        expected_version: int,
        values: dict[str, Any],
        now: datetime,
    ) -> tuple[PatientConfigRow, list[Outgoing]]:
        """``set`` by ``user`` with its audit row (an ``update`` of the patient's desired state):
        the API, the limits form and the prescription editor all save through here."""
        assert user.id is not None
        row, outgoing = self.set(
            session,
            patient_id=patient_id,
            expected_version=expected_version,
            values=values,
            user_id=user.id,
            now=now,
        )
        audit(
            session,
            request,
            user,
            "update",
            "desired_state",
            resource_id=str(row.version),
            patient_id=patient_id,
        )
        return row, outgoing

    def set(
        self,
        session: Session,
        *,
        patient_id: str,
        expected_version: int,
        values: dict[str, Any],
        user_id: int,
        now: datetime,
    ) -> tuple[PatientConfigRow, list[Outgoing]]:
        """Add version ``expected_version + 1`` (``VersionConflict`` if that is not next) and the
        signed documents of the patient's devices; the caller commits, then ``publish``es. A
        concurrent writer that got there first makes the commit fail (unique version)."""
        current = self.current(session, patient_id)
        current_version = current.version if current is not None else 0
        if current_version != expected_version:
            raise VersionConflict(current_version, "the desired state")
        row = PatientConfigRow(
            patient_id=patient_id,
            version=current_version + 1,
            created_by=user_id,
            created_at=now,
            **values,
        )
        session.add(row)
        outgoing = [
            self._document_for(session, device_id, row, now)
            for device_id in self.devices_of(session, patient_id, now)
        ]
        return row, outgoing

    def for_device(
        self, session: Session, device_id: str, patient_id: str, now: datetime
    ) -> Outgoing | None:
        """The document for a device newly assigned to ``patient_id`` (None: nothing set yet)."""
        current = self.current(session, patient_id)
        if current is None:
            return None
        return self._document_for(session, device_id, current, now)

    def reissue(
        self, session: Session, patient_id: str, device_ids: Iterable[str], now: datetime
    ) -> list[Outgoing]:
        """New documents for some of the patient's devices with the current config (or none yet)
        and the pending dose-ledger resets; the caller commits, then ``publish``es."""
        current = self.current(session, patient_id)
        return [
            self._document_for(session, device_id, current, now, patient_id=patient_id)
            for device_id in device_ids
        ]

    def reconcile(
        self, session: Session, now: datetime, device_ids: Iterable[str] | None = None
    ) -> list[Outgoing]:
        """New documents for the devices (all, or ``device_ids``) whose document carries another
        agent update than the current rollout asks of them (``updates.stale_devices``): after a
        rollout starts, pauses, resumes or ends, a device's cohort or running version changes, or
        it reports a failure. The caller commits, then ``publish``es."""
        return self.refresh(session, updates.stale_devices(session, device_ids), now)

    def refresh(self, session: Session, device_ids: Iterable[str], now: datetime) -> list[Outgoing]:
        """New documents for ``device_ids``, each for the patient it serves now (its current config,
        or none yet) or, serving nobody, with no patient's part at all (an agent update alone); the
        caller commits, then ``publish``es."""
        out: list[Outgoing] = []
        for device_id in device_ids:
            patient = self.patient_of(session, device_id, now)
            config = self.current(session, patient) if patient is not None else None
            out.append(self._document_for(session, device_id, config, now, patient_id=patient))
        return out

    @staticmethod
    def patient_of(session: Session, device_id: str, now: datetime) -> str | None:
        """The patient the device is assigned to at ``now`` (None: nobody)."""
        return session.exec(
            select(AssignmentRow.patient_id)
            .where(
                AssignmentRow.device_id == device_id,
                col(AssignmentRow.valid_from) <= now,
                or_(col(AssignmentRow.valid_to).is_(None), col(AssignmentRow.valid_to) > now),
            )
            .order_by(col(AssignmentRow.valid_from).desc())
        ).first()

    def _document_for(
        self,
        session: Session,
        device_id: str,
        config: PatientConfigRow | None,
        now: datetime,
        *,
        patient_id: str | None = None,
    ) -> Outgoing:
        """The device's next document. Without a patient (``config`` and ``patient_id`` None) it
        has no profile, limits or programs: the device keeps the profile it was provisioned with,
        and the document carries only what is not a patient's (an agent update)."""
        state = session.get(DeviceDesiredRow, device_id)
        version = (state.version if state is not None else 0) + 1
        patient = config.patient_id if config is not None else patient_id
        content: dict[str, Any] = {
            "v": DOCUMENT_VERSION,
            "device": device_id,
            "version": version,
            "issued_at": now.isoformat(),
        }
        if patient is not None:
            content["patient_config_version"] = config.version if config is not None else 0
            content.update(config_document(config))
            resets = pending_resets(session, device_id, patient)
            if (
                resets
            ):  # absent otherwise: documents of devices that never needed one stay as they were
                content[LEDGER_RESETS_KEY] = resets
        target = updates.target_for(session, device_id)
        if target is not None:  # absent otherwise, as for resets
            content[AGENT_UPDATE_KEY] = target.to_json()
        updates.note_target(session, device_id, target, now)
        document = sign_document(self.signer, content)
        text = json.dumps(document, sort_keys=True, separators=(",", ":"))
        if state is None:
            state = DeviceDesiredRow(
                device_id=device_id, version=version, document=text, updated_at=now
            )
        state.version = version
        state.patient_id = patient
        state.patient_version = config.version if config is not None else None
        state.document = text
        state.updated_at = now
        session.add(state)
        return Outgoing(device_id, text.encode())

    def publish(self, outgoing: Iterable[Outgoing]) -> None:
        for item in outgoing:
            self.publisher.publish(item.device_id, item.payload)

    def notify_revoked(self, device_id: str, now: datetime) -> None:
        """Publish the signed ``revoked`` notice (retained) on the device's desired-state topic;
        after the revocation is committed, and before the broker's CRL shuts the device out if
        the caller can order it so (a device connected then reads it at once)."""
        self.publisher.publish(
            device_id, notice_payload(self.signer, device_id, "revoked", REVOKED_REASON, now)
        )

    def republish_all(self, engine: Engine, now: datetime | None = None) -> int:
        """Publish every device's last document again (retained: idempotent for devices); for a
        revoked device its ``revoked`` notice (issued ``now``, by default the time of this call)."""
        with Session(engine) as session:
            revoked = set(session.exec(select(DeviceRow.id).where(col(DeviceRow.revoked))).all())
            rows = session.exec(select(DeviceDesiredRow)).all()
            for row in rows:
                if row.device_id in revoked:
                    self.notify_revoked(row.device_id, now or utc_now())
                else:
                    self.publisher.publish(row.device_id, row.document.encode())
        return len(rows)
