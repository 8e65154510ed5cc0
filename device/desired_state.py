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

A document may carry a clinician's requests to reset a corrupted dose ledger (``dose_ledger_reset``,
each with an id). They are carried out from the *applied* document only, between sessions (at once, or
when the session ends), each once by its id (``DoseLedger.reset``): a replayed, older or repeated
document resets nothing again. Each outcome (applied, or refused because the ledger is intact) is a
``dose_ledger_reset`` safety event with the ledger's week before, synced to the server, and a
``reported`` message ``{"dose_ledger_reset": ID, "status", "version"}``. A crash between the reset and
its event writes the event on the next look.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from resonera.common.desired import (
    DesiredStateRejected,
    effective_profile,
    ledger_resets,
    lowers_only,
    verify_desired,
)
from resonera.common.ids import new_id
from resonera.common.profile import HearingProfile
from resonera.common.records import (
    DesiredReport,
    DoseLedgerReset,
    LedgerResetReport,
    SafetyEventRecord,
)
from resonera.device.safety.dose_ledger import DoseLedger, LedgerReset
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
        on_applied: Callable[[HearingProfile], None] = lambda _profile: None,
        open_ledger: Callable[[], DoseLedger] | None = None,
        simulation: bool = False,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``open_ledger``: the device's dose ledger, for clinician resets (without it, requests
        wait in the applied document until an applier with a ledger, the service, takes it)."""
        self.store = store
        self.device_id = device_id
        self.pinned = pinned
        self.base_profile = base_profile
        self.on_lowered = on_lowered
        #: Told of each profile applied (outside the lock): the panel speaks its check-in
        #: questions into the prompt cache then, never on the audio path.
        self.on_applied = on_applied
        self.open_ledger = open_ledger
        self.simulation = simulation
        self.wall_clock = wall_clock
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
        if result.outcome == "applied":
            self._applied(self.current_profile())
        self.apply_ledger_resets()
        return result

    def _applied(self, profile: HearingProfile) -> None:
        try:
            self.on_applied(profile)
        except Exception:  # a hook's failure must not undo or block the applied document
            log.exception("after applying the desired state")

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
            ledger_resets(document.content)
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
        result = None
        if applied is not None:
            result = DesiredResult("applied", applied.version)
            self._report(result)
            self._applied(applied.profile or self.base_profile)
        self.apply_ledger_resets()
        return result

    def apply_ledger_resets(self) -> list[LedgerReset]:
        """Between sessions: carry out the applied document's reset requests not done yet, record
        and report each; the outcomes newly recorded."""
        with self._lock:
            if self._session_active or self.open_ledger is None:
                return []
            applied = self.store.applied_desired()
            if applied is None:
                return []
            try:
                requests = ledger_resets(applied.content)
            except DesiredStateRejected:  # checked before it was applied; a stored one is good
                return []
            if not requests:
                return []
            recorded: list[LedgerReset] = []
            try:
                ledger = self.open_ledger()
            except Exception:  # e.g. its key is lost: said by the error; the MQTT thread lives on
                log.exception("the dose ledger cannot be opened for a clinician's reset")
                return recorded
            try:
                for request in requests:
                    outcome = ledger.reset(
                        request.reset_id,
                        self.wall_clock(),
                        reason=request.reason,
                        requested_by=request.requested_by,
                    )
                    if outcome.event_recorded:
                        continue  # done and recorded before
                    self._record_reset(outcome, applied.version)
                    ledger.mark_recorded(request.reset_id)
                    recorded.append(outcome)
            except Exception:  # tried again with the next document or at the session's end
                log.exception("a clinician's dose ledger reset could not be carried out")
            finally:
                ledger.close()
            return recorded

    def _record_reset(self, outcome: LedgerReset, version: int) -> None:
        assert outcome.reset_id is not None
        if outcome.applied:
            cause = (
                f"dose ledger reset by the clinician ({outcome.requested_by or 'server'}): "
                f"{outcome.removed_rows} damaged minute(s) removed; the week was counted as "
                f"{outcome.week_fraction_before:.0%} used, now {outcome.week_fraction_after:.0%}"
            )
        else:
            cause = (
                "dose ledger reset refused: the ledger is not corrupted, so the week's "
                f"{outcome.week_fraction_before:.0%} stands"
            )
        record = SafetyEventRecord(
            event_id=new_id(),
            at=outcome.at,
            type="dose_ledger_reset",
            cause=f"{cause} (reason: {outcome.reason})"[:500],
            simulation=self.simulation,
            dose_reset=DoseLedgerReset(
                reset_id=outcome.reset_id,
                applied=outcome.applied,
                reason=outcome.reason[:500],
                requested_by=outcome.requested_by[:254],
                removed_rows=outcome.removed_rows,
                corrupted_before=outcome.corrupted_before,
                week_pa2s_before=outcome.week_pa2s_before,
                week_fraction_before=outcome.week_fraction_before,
                week_fraction_after=outcome.week_fraction_after,
            ),
        )
        self.store.record_event(self.device_id, record)
        report = DesiredReport(
            desired_version=version,
            status="applied",
            dose_ledger_reset=LedgerResetReport(
                id=outcome.reset_id,
                status="applied" if outcome.applied else "refused",
                reason=None if outcome.applied else "the dose ledger is not corrupted",
            ),
        )
        self.store.queue_message(
            self.device_id, "reported", report.model_dump(mode="json", exclude_none=True)
        )

    def _report(self, result: DesiredResult) -> None:
        if result.outcome == "refused":
            log.warning("desired state %s refused: %s", result.version, result.reason)
        status = result.outcome
        if status == "unchanged":  # nothing new to say
            return
        report = DesiredReport(
            desired_version=result.version,
            status=status,
            reason=result.reason[:500] if result.reason else None,
        )
        body = report.model_dump(mode="json", exclude_none=True)
        try:
            self.store.queue_message(self.device_id, "reported", body)
        except Exception:  # the MQTT thread must survive; the next delivery reports again
            log.exception("could not queue the desired-state report")
