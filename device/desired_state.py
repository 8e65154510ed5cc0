"""Taking a desired-state document: verify (``desired.verify_desired``), decide when it applies, store
it, and report the outcome to the server as a ``reported`` message in the outbox.

One module of some 480 lines: when a document applies, what is stored and what is reported are
one transaction's decisions, kept together so none can drift from the others.

- Refused (bad JSON, no or wrong signature, unknown key, another device, not newer, a profile the
  device cannot enforce): nothing changes; ``{"desired_version": N, "status": "refused", "reason"}``.
- Accepted between sessions, or during one when it only lowers what is allowed: applied at once,
  ``status: "applied"``. ``on_lowered`` is told during a session (the service stops the session, so
  the lower limits hold from the next block of sound on).
- Accepted during a session but raising something: kept ``pending`` (``status: "deferred"``) and
  applied by ``session_ended`` (``status: "applied"``).
- The very document already taken, delivered again (the retained copy after every reconnect): nothing
  is done or reported, unless a program of it that was refused for want of its background file can
  be had now (``reassess``).

Prescribed programs (issue 20, ``device/prescriptions.py``): each entry of ``programs`` is checked
with ``check_prescribed`` under the profile the same document makes and this engine's capabilities
(``capabilities``), and its background files fetched (``device/backgrounds.py``); each program is
applied or refused on its own, and the document's profile and limits apply whatever becomes of its
programs (safety first). A list that cannot be one prescription refuses the whole document. The
programs accepted are stored with the document in one transaction (``DeviceStore.save_desired``),
and every report lists each program's outcome in the clinician's order and the engine's
capabilities: ``{"desired_version", "status", "programs": [{"library_id", "version", "sha256",
"status", "reason"}], "capabilities": {...}}``. ``reassess`` (at the agent's start) reviews the
applied document's programs again when the engine's capabilities differ from those last reported
(an upgrade) or a refused program's file may be had now, and reports the applied version again;
with no document applied yet it reports version 0 with the capabilities, so the server knows what
this device can play before it prescribes anything.

Fetching a file takes time, so it is done outside the lock the player's ``session_*`` calls take:
a button press never waits for a download.

A document may carry a clinician's requests to reset a corrupted dose ledger (``dose_ledger_reset``,
each with an id). They are carried out from the *applied* document only, between sessions (at once, or
when the session ends), each once by its id (``DoseLedger.reset``): a replayed, older or repeated
document resets nothing again. Each outcome (applied, or refused because the ledger is intact) is a
``dose_ledger_reset`` safety event with the ledger's week before, synced to the server, and a
``reported`` message ``{"dose_ledger_reset": ID, "status", "version"}``. A crash between the reset and
its event writes the event on the next look.

Every verified document also says what time it is, at least: its signed ``issued_at`` is a time the
server had reached, however old the retained copy. It raises the dose clock's floor
(``DoseClock.raise_floor``, ``device/trusted_time.py``), so a device whose clock reads 1970 and
that has no network time dates its seconds no earlier than that.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from resonera.common.canonical import canonical_json
from resonera.common.desired import (
    DesiredStateRejected,
    effective_profile,
    ledger_resets,
    lowers_only,
    verify_desired,
)
from resonera.common.ids import new_id
from resonera.common.prescription import EngineCapabilities, ProgramReport
from resonera.common.profile import HearingProfile
from resonera.common.records import (
    DesiredReport,
    DoseLedgerReset,
    LedgerResetReport,
    SafetyEventRecord,
)
from resonera.device.backgrounds import (
    BackgroundCache,
    BackgroundFetcher,
    BackgroundUnavailable,
    background_fetcher,
    backgrounds_dir,
)
from resonera.device.prescriptions import ProgramVerdict, refused, review_programs
from resonera.device.safety.dose_ledger import DoseLedger, LedgerReset
from resonera.device.settings import DeviceSettings
from resonera.device.store import DeviceStore, StoredDesired
from resonera.device.trusted_time import DoseClock, TimeSources
from resonera.engine.capabilities import engine_capabilities

log = logging.getLogger(__name__)

Outcome = Literal["applied", "deferred", "refused", "unchanged"]

#: The store's note of the capabilities last reported (canonical JSON), to see an engine change.
REPORTED_CAPABILITIES = "reported_capabilities"


@dataclass(frozen=True)
class DesiredResult:
    outcome: Outcome
    version: int | None
    reason: str = ""
    #: What became of each prescribed program, in the clinician's order (None: not reviewed).
    programs: tuple[ProgramReport, ...] | None = None
    #: The applied document came again (the retained copy after a reconnect).
    redelivered: bool = False


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
        on_update: Callable[[dict[str, Any]], None] = lambda _content: None,
        backgrounds: BackgroundCache | None = None,
        fetcher: BackgroundFetcher | None = None,
        simulation: bool = False,
        wall_clock: Callable[[], float] = time.time,
        time_sources: TimeSources | None = None,
    ) -> None:
        """``open_ledger``: the device's dose ledger, for clinician resets (without it, requests
        wait in the applied document until an applier with a ledger, the service, takes it).
        ``backgrounds``: the cache of background files (None: none held); ``fetcher``: how
        missing ones are fetched (None: this device cannot fetch, so a program whose file it
        lacks is refused, and its capabilities say so). ``time_sources``: the dose clock's
        (None: the real ones), whose floor each document's signed time raises."""
        self.store = store
        self.device_id = device_id
        self.pinned = pinned
        self.base_profile = base_profile
        self.on_lowered = on_lowered
        #: Told of each profile applied (outside the lock): the panel speaks its check-in
        #: questions into the prompt cache then, never on the audio path.
        self.on_applied = on_applied
        self.open_ledger = open_ledger
        #: Told each applied document's content (outside the lock): its ``agent_update`` is what
        #: the agent's updates take (``device/updater/``).
        self.on_update = on_update
        self.backgrounds = backgrounds
        self.fetcher = fetcher
        self.simulation = simulation
        self.wall_clock = wall_clock
        self.time_sources = time_sources
        #: Held for a whole document (fetches included): documents are taken one at a time.
        self._taking = threading.Lock()
        #: Held only to decide and store: the player's ``session_*`` never wait for a download.
        self._lock = threading.Lock()
        self._session_active = False
        self._last_refused: bytes | None = None

    @classmethod
    def for_settings(
        cls,
        settings: DeviceSettings,
        store: DeviceStore,
        **hooks: Any,
    ) -> DesiredStateApplier:
        """The device's applier: its pinned key, provisioned profile, background cache in the
        data folder and fetcher (``background_fetcher``); ``hooks``: the keyword arguments above."""
        cache = BackgroundCache(backgrounds_dir(settings.data_dir))
        return cls(
            store,
            settings.device_id,
            settings.pinned_server_key(),
            settings.profile,
            backgrounds=cache,
            fetcher=background_fetcher(settings, cache),
            simulation=settings.simulation,
            **hooks,
        )

    def current_profile(self) -> HearingProfile:
        return self.store.applied_profile() or self.base_profile

    def capabilities(self) -> EngineCapabilities:
        """What this device's engine can play, with the background files it holds now."""
        held = self.backgrounds.held() if self.backgrounds is not None else []
        return engine_capabilities(held, fetches_backgrounds=self.fetcher is not None)

    def handle(self, payload: bytes) -> DesiredResult:
        digest = hashlib.sha256(payload).digest()
        with self._taking:
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
            self._update_asked()
        if result.redelivered:
            self.reassess(engine_changed=False)
        self.apply_ledger_resets()
        return result

    def reassess(self, *, engine_changed: bool | None = None) -> DesiredResult | None:
        """Review the applied document's programs again and report the applied version anew,
        when the engine's capabilities differ from those last reported (``engine_changed`` None:
        find out; the agent's start) or a program refused before passes now (a background file
        that could not be had is fetched again). With no document applied, an engine change is
        reported as version 0. The result reported, or None when nothing changed."""
        with self._taking:
            capabilities = self.capabilities()
            if engine_changed is None:
                engine_changed = self.store.meta(REPORTED_CAPABILITIES) != _noted(capabilities)
            applied = self.store.applied_desired()
            if applied is None:
                result = DesiredResult("applied", 0, programs=()) if engine_changed else None
            else:
                result = self._reassess(applied, engine_changed)
        if result is not None:
            self._report(result)
            if result.version:
                self._applied(self.current_profile())
        return result

    def _reassess(self, applied: StoredDesired, engine_changed: bool) -> DesiredResult | None:
        profile = applied.profile or self.base_profile
        reason = ""
        try:
            verdicts = review_programs(applied.content, profile, self.capabilities())
        except DesiredStateRejected as exc:  # applied by a release that did not read programs
            verdicts, reason = [], f"its programs are not a prescription this device takes: {exc}"
        before = applied.programs or ()
        passed_now = {(v.library_id, v.version) for v in verdicts if v.passed}
        retry = any(
            (p.library_id, p.version) in passed_now for p in before if p.status != "applied"
        )
        if not (engine_changed or retry or applied.programs is None):
            return None
        verdicts = self._fetch_backgrounds(verdicts)
        reports = tuple(v.report() for v in verdicts)
        if reports == before and not engine_changed:
            return None  # the same files are still out of reach: nothing new to say
        with self._lock:
            assigned = [v.assigned() for v in verdicts if v.passed]
            if not self.store.reassess_desired(applied.version, assigned, reports):
                return None  # a newer document was applied meanwhile, and reported
        log.info("desired state %d: its programs reviewed again", applied.version)
        return DesiredResult("applied", applied.version, reason, programs=reports)

    def _fetch_backgrounds(self, verdicts: list[ProgramVerdict]) -> list[ProgramVerdict]:
        """Each passed program with its background files had (held, or fetched now), or refused
        saying which file could not be had and why. Outside ``_lock``: this takes time."""
        out = []
        for verdict in verdicts:
            entry = verdict.entry
            if not verdict.passed or entry is None or not entry.backgrounds:
                out.append(verdict)
                continue
            label = f"{entry.name!r} (library {entry.library_id} v{entry.version})"
            try:
                for file in entry.backgrounds:
                    if self.fetcher is not None:
                        self.fetcher.ensure(file)
                    elif self.backgrounds is None or not self.backgrounds.holds(file.sha256):
                        raise BackgroundUnavailable(
                            f"background file {file.sha256[:12]}… is not held and this device "
                            "cannot fetch files"
                        )
            except BackgroundUnavailable as exc:
                log.warning("%s refused: %s", label, exc)
                out.append(refused(verdict, f"{label}: {exc}"))
            else:
                out.append(verdict)
        return out

    def _update_asked(self) -> None:
        applied = self.store.applied_desired()
        try:
            if applied is not None:
                self.on_update(applied.content)
        except Exception:  # the document stays applied whatever the updates make of it
            log.exception("handing the desired agent version to the updates")

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
            verdicts = review_programs(document.content, profile, self.capabilities())
        except DesiredStateRejected as exc:
            if self._is_redelivery(payload, accepted):
                return DesiredResult("unchanged", accepted, redelivered=True)
            return DesiredResult("refused", _claimed_version(payload), str(exc))
        self._signed_time(document.content)
        verdicts = self._fetch_backgrounds(verdicts)
        reports = tuple(v.report() for v in verdicts)
        assigned = [v.assigned() for v in verdicts if v.passed]
        with self._lock:
            current = self.current_profile()
            if self._session_active and not lowers_only(current, profile):
                self.store.save_desired(
                    document.version,
                    document.content,
                    profile,
                    "pending",
                    assigned=assigned,
                    programs=reports,
                )
                log.info("desired state %d deferred until the session ends", document.version)
                return DesiredResult(
                    "deferred",
                    document.version,
                    "raises a limit during a session: applied when the session ends",
                    programs=reports,
                )
            self.store.save_desired(
                document.version,
                document.content,
                profile,
                "applied",
                assigned=assigned,
                programs=reports,
            )
            log.info(
                "desired state %d applied: %d of %d program(s)",
                document.version,
                len(assigned),
                len(reports),
            )
            if self._session_active and profile != current:
                self.on_lowered(profile)
        return DesiredResult("applied", document.version, programs=reports)

    def _signed_time(self, content: dict[str, Any]) -> None:
        """A verified document's ``issued_at`` raises the dose clock's floor (a time that has
        passed, whatever this device's clock reads). Without a ledger, or without a valid time,
        nothing is done; a failure is logged and never refuses the document."""
        try:
            issued = datetime.fromisoformat(str(content.get("issued_at")))
        except ValueError:
            return
        if self.open_ledger is None or issued.tzinfo is None:
            return
        try:
            ledger = self.open_ledger()
        except Exception:  # the document still applies: its limits are what matters
            log.exception("the dose ledger cannot be opened for the server's signed time")
            return
        try:
            DoseClock(ledger, self.time_sources).raise_floor(issued.timestamp())
        except Exception:
            log.exception("the server's signed time could not be kept")
        finally:
            ledger.close()

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
            result = DesiredResult("applied", applied.version, programs=applied.programs)
            self._report(result)
            self._applied(applied.profile or self.base_profile)
            self._update_asked()
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
        capabilities = self.capabilities()  # after this document's files were fetched
        report = DesiredReport(
            desired_version=result.version,
            status=status,
            reason=result.reason[:500] if result.reason else None,
            programs=list(result.programs) if result.programs is not None else None,
            capabilities=capabilities,
        )
        body = report.model_dump(mode="json", exclude_none=True)
        try:
            self.store.queue_message(self.device_id, "reported", body)
            # a crash between the two only reports the same capabilities again at the next start
            self.store.set_meta(REPORTED_CAPABILITIES, _noted(capabilities))
        except Exception:  # the MQTT thread must survive; the next delivery reports again
            log.exception("could not queue the desired-state report")


def _noted(capabilities: EngineCapabilities) -> str:
    return canonical_json(capabilities.model_dump(mode="json")).decode()
