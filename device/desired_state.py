"""Taking a desired-state document: verify (``desired.verify_desired``), decide when it applies, store
it, and report the outcome to the server as a ``reported`` message in the outbox.

- Refused (bad JSON, no or wrong signature, unknown key, another device, not newer, a profile the
  device cannot enforce): nothing changes; ``{"desired_version": N, "status": "refused", "reason"}``.
- Accepted between sessions, or during one when it only lowers what is allowed: applied at once,
  ``status: "applied"``. ``on_lowered`` is told during a session (the service stops the session, so
  the lower limits hold from the next block of sound on).
- Accepted during a session but raising something: kept ``pending`` (``status: "deferred"``) and
  applied by ``session_ended`` (``status: "applied"``).
- The very document already taken, delivered again (the retained copy after every reconnect): nothing
  is done or reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from resonera.common.profile import HearingProfile
from resonera.device.desired import (
    DesiredStateRejected,
    effective_profile,
    lowers_only,
    verify_desired,
)
from resonera.device.store import DeviceStore

log = logging.getLogger(__name__)

Outcome = Literal["applied", "deferred", "refused", "unchanged"]


@dataclass(frozen=True)
class DesiredResult:
    outcome: Outcome
    version: int | None
    reason: str = ""


def _claimed_version(payload: bytes) -> int | None:
    """The version a document claims, unverified: only for the report of a refusal."""
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    version = document.get("version") if isinstance(document, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


class DesiredStateApplier:
    """Thread-safe; ``handle`` is called from the MQTT thread, ``session_*`` from the player's."""

    def __init__(
        self,
        store: DeviceStore,
        device_id: str,
        pinned: Ed25519PublicKey | None,
        base_profile: HearingProfile,
        *,
        on_lowered: Callable[[HearingProfile], None] = lambda _profile: None,
    ) -> None:
        self.store = store
        self.device_id = device_id
        self.pinned = pinned
        self.base_profile = base_profile
        self.on_lowered = on_lowered
        self._lock = threading.Lock()
        self._session_active = False
        self._last_refused: bytes | None = None

    def current_profile(self) -> HearingProfile:
        return self.store.applied_profile() or self.base_profile

    def handle(self, payload: bytes) -> DesiredResult:
        digest = hashlib.sha256(payload).digest()
        with self._lock:
            result = self._handle(payload)
            if result.outcome == "refused":
                # the same refused retained copy comes back after every reconnect: report it once
                if digest == self._last_refused:
                    return DesiredResult("unchanged", result.version, result.reason)
                self._last_refused = digest
        if result.outcome != "unchanged":
            self._report(result)
        return result

    def _handle(self, payload: bytes) -> DesiredResult:
        if self.pinned is None:
            return DesiredResult(
                "refused",
                _claimed_version(payload),
                "no server key is pinned on this device (server_public_key): nothing is applied",
            )
        accepted = self.store.desired_version()
        try:
            document = verify_desired(
                payload, device_id=self.device_id, pinned=self.pinned, applied_version=accepted
            )
            profile = effective_profile(document, self.base_profile)
        except DesiredStateRejected as exc:
            if self._is_redelivery(payload, accepted):
                return DesiredResult("unchanged", accepted)
            return DesiredResult("refused", _claimed_version(payload), str(exc))
        current = self.current_profile()
        if self._session_active and not lowers_only(current, profile):
            self.store.save_desired(document.version, document.content, profile, "pending")
            log.info("desired state %d deferred until the session ends", document.version)
            return DesiredResult(
                "deferred",
                document.version,
                "raises a limit during a session: applied when the session ends",
            )
        self.store.save_desired(document.version, document.content, profile, "applied")
        log.info("desired state %d applied", document.version)
        if self._session_active and profile != current:
            self.on_lowered(profile)
        return DesiredResult("applied", document.version)

    def _is_redelivery(self, payload: bytes, accepted: int) -> bool:
        if accepted == 0 or self.pinned is None:
            return False
        try:
            document = verify_desired(
                payload, device_id=self.device_id, pinned=self.pinned, applied_version=0
            )
        except DesiredStateRejected:
            return False
        if document.version != accepted:
            return False
        stored = self.store.pending_desired() or self.store.applied_desired()
        return (
            stored is not None and stored.version == accepted and stored.content == document.content
        )

    def session_started(self) -> None:
        with self._lock:
            self._session_active = True

    def session_ended(self) -> DesiredResult | None:
        """Between sessions again: a deferred document is applied now (and reported)."""
        with self._lock:
            self._session_active = False
            applied = self.store.apply_pending_desired()
        if applied is None:
            return None
        result = DesiredResult("applied", applied.version)
        self._report(result)
        return result

    def _report(self, result: DesiredResult) -> None:
        if result.outcome == "refused":
            log.warning("desired state %s refused: %s", result.version, result.reason)
        body: dict[str, object] = {"desired_version": result.version, "status": result.outcome}
        if result.reason:
            body["reason"] = result.reason
        try:
            self.store.queue_message(self.device_id, "reported", body)
        except Exception:  # the MQTT thread must survive; the next delivery reports again
            log.exception("could not queue the desired-state report")
