"""Agent updates inside the device service: the thread that runs the update's state machine
(``machine.py``) and the few hooks the service gives it.

``AgentUpdates`` is what the service holds (``device/service.py``):

- ``start(applied)``: at the service's start. A failure the launcher or the previous agent's
  health check recorded is reported first (``rolled_back``, once). When this agent runs from the
  slot on trial, its health check (``health.py``) runs, and updates are taken only once it passed;
  otherwise the applied desired state's ``agent_update`` is taken at once.
- ``desired(content)``: each applied desired state; its ``agent_update`` (or its absence) goes to
  the machine.
- ``session_started`` / ``session_ended``: the switch waits for the end of a session; while one
  plays the download is throttled (``fetch.py``) and installing runs at ``nice`` 10
  (``slots.py``).

The switch: ``hold_sessions()`` asks the service to refuse new sessions (False: one plays, the
machine waits for its end); the trial is written and ``current`` swapped (``slots.py``); then
``restart()`` has the service shut down as usual and exit 75 for the launcher. Each step is
reported as an ``UpdateReport`` (up kind ``update``), queued in the outbox.

The safety MCU's firmware a bundle carried (``mcu.py``) is flashed by the agent that runs from its
slot, once it takes updates (its health check passed, or at any start off trial), between sessions;
the agent's switch waits for a firmware update under way (``McuFirmwareUpdates.lock``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from resonera.common.agent_update import (
    AgentUpdateTarget,
    BundleRejected,
    UpdateReport,
    VerifiedBundle,
    check_bundle,
    extract_firmware,
    extract_wheels,
    update_key_from_b64,
)
from resonera.device.backgrounds import device_client_files
from resonera.device.hwmonitor import HardwareMonitor
from resonera.device.settings import DeviceSettings
from resonera.device.store import DeviceStore
from resonera.device.updater import machine as m
from resonera.device.updater.fetch import BundleFetcher, DownloadFailed, downloads_dir
from resonera.device.updater.health import TrialHealth
from resonera.device.updater.mcu import McuFirmwareUpdates
from resonera.device.updater.slots import AgentSlots, SlotError, Trial

__all__ = ["AgentUpdates", "ServiceHooks"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceHooks:
    """What the service lends the updates: its MQTT link's state, a kick to publish, and the
    switch's two steps."""

    monitor: HardwareMonitor | None
    connected: Callable[[], bool]
    link_error: Callable[[], str | None]
    kick: Callable[[], None]
    #: Refuse new sessions from now on; False (and nothing held) when one plays.
    hold_sessions: Callable[[], bool]
    release_sessions: Callable[[], None]
    #: Shut down as usual and exit 75 (the launcher starts what ``state.json`` names).
    restart: Callable[[], None]


class AgentUpdates:
    def __init__(
        self,
        settings: DeviceSettings,
        store: DeviceStore,
        running_version: str,
        hooks: ServiceHooks,
        *,
        slots: AgentSlots | None = None,
        prefix: Path | None = None,
    ) -> None:
        """``prefix``: the environment this agent runs from (``sys.prefix``), which names its
        slot."""
        self.settings = settings
        self.prefix = prefix
        self.store = store
        self.running_version = running_version
        self.hooks = hooks
        self.slots = slots or AgentSlots.of(settings.data_dir)
        client_files = device_client_files(settings)
        self.fetcher: BundleFetcher | None = (
            None
            if settings.server_url is None or client_files is None
            else BundleFetcher(
                downloads_dir(self.slots.directory),
                settings.server_url,
                client_files,
                settings.enroll_ca_file,
                throttled=lambda: self._session_active,
            )
        )
        self.machine = m.UpdateMachine(running_version)
        self._events: queue.Queue[m.Event | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._session_active = False
        #: The SHA-256 of the bundle asked for now: a download of another stops.
        self._wanted: str | None = None
        self._verified: VerifiedBundle | None = None
        self._retry_at: float | None = None
        self.health: TrialHealth | None = None
        self.mcu: McuFirmwareUpdates | None = (
            None
            if hooks.monitor is None
            else McuFirmwareUpdates(
                self.slots,
                hooks.monitor,
                self._report,
                hold_sessions=hooks.hold_sessions,
                release_sessions=hooks.release_sessions,
                stop=self._stop,
            )
        )

    # --- the service's calls ------------------------------------------------------------------

    def start(self, applied: dict[str, Any] | None) -> None:
        """See the module. Nothing is done for a device whose slots were never set up; with
        ``updates_enabled`` off, a trial still gets its health check, but no update is taken."""
        try:
            state = self.slots.state()
        except SlotError:
            log.exception("agent updates are off: the slot state cannot be read")
            return
        if state.get("good") is None:
            log.info("agent updates are off: no slots (resonera-device slots adopt PATH)")
            return
        failure = state.get("failure") or {}
        if failure.get("sha256"):
            self.machine.given_up.add(str(failure["sha256"]))
        self._report_rollback()
        slot = self.slots.running_slot(self.prefix)
        trial = self.slots.trial_of(slot)
        if trial is not None and slot is not None:
            self.health = TrialHealth(
                self.slots,
                slot,
                trial,
                self.store,
                self.settings.device_id,
                self.hooks.monitor,
                self.hooks.connected,
                self.hooks.link_error,
                self.hooks.kick,
                self.settings.update_health_timeout_s,
                passed=lambda: self._take_updates(applied),
                failed=self.hooks.restart,
                stop=self._stop,
            )
            self.health.start()
            return
        self._take_updates(applied)

    def desired(self, content: dict[str, Any]) -> None:
        """An applied desired state: what it asks of the agent's version."""
        try:
            target = AgentUpdateTarget.from_desired(content)
        except BundleRejected as exc:
            log.warning("the desired state's agent_update is ignored: %s", exc)
            return
        self._wanted = target.sha256 if target is not None else None
        self._events.put(m.TargetSeen(target))

    def session_started(self) -> None:
        self._session_active = True
        self._events.put(m.SessionStarted())

    def session_ended(self) -> None:
        self._session_active = False
        self._events.put(m.SessionEnded())
        if self.mcu is not None:
            self.mcu.session_ended()

    def close(self) -> None:
        self._stop.set()
        self._events.put(None)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    # --- the thread -------------------------------------------------------------------------------

    def _take_updates(self, applied: dict[str, Any] | None) -> None:
        if self._stop.is_set() or not self.settings.updates_enabled:
            return
        if self.mcu is not None:
            self.mcu.start(self.slots.running_slot(self.prefix))
        self._thread = threading.Thread(target=self._run, name="updates", daemon=True)
        self._thread.start()
        if applied is not None:
            self.desired(applied)

    def _run(self) -> None:
        while True:
            timeout = None
            if self._retry_at is not None:
                timeout = max(0.0, self._retry_at - time.monotonic())
            try:
                event = self._events.get(timeout=timeout)
            except queue.Empty:
                self._retry_at, event = None, m.RetryDue()
            if event is None or self._stop.is_set():
                return
            for action in self.machine.handle(event):
                try:
                    self._do(action)
                except Exception:  # the thread must live on; the next event tries again
                    log.exception("update step %s failed", type(action).__name__)

    def _do(self, action: m.Action) -> None:
        match action:
            case m.Report(state, target, reason):
                self._report(
                    UpdateReport(
                        state, self.running_version, target.version, target.rollout, reason
                    )
                )
            case m.Fetch(target):
                self._events.put(self._fetch(target))
            case m.Verify(target):
                self._events.put(self._verify(target))
            case m.Prepare(target):
                self._events.put(self._prepare(target))
            case m.Switch(target, slot):
                if not self._switch(target, slot):
                    self._events.put(m.SwitchRefused())
            case m.Discard(target):
                if self.fetcher is not None:
                    self.fetcher.discard(target.sha256)
                self.slots.drop_prepared(target.sha256)
            case m.RetryAfter(delay_s):
                self._retry_at = time.monotonic() + delay_s

    def _fetch(self, target: AgentUpdateTarget) -> m.Event:
        try:
            slot = self.slots.inactive_slot()
        except SlotError as exc:
            return m.Rejected(target.sha256, str(exc))
        if self.slots.prepared(slot, target.sha256):
            return m.Prepared(target.sha256, slot)  # made before a restart: not again
        if self.fetcher is None:
            return m.Rejected(
                target.sha256, "this device cannot fetch updates: no server_url or certificate"
            )
        try:
            self.fetcher.fetch(target, lambda: self._wanted != target.sha256 or self._stop.is_set())
        except DownloadFailed as exc:
            log.warning("update %s: %s", target.version, exc)
            return m.DownloadFailed(target.sha256, str(exc), exc.corrupt)
        return m.Downloaded(target.sha256)

    def pinned_keys(self) -> list[Ed25519PublicKey]:
        """The update keys in force: those a confirmed bundle pinned, else the settings'."""
        keys = self.slots.update_keys() or tuple(self.settings.update_public_keys)
        return [update_key_from_b64(k) for k in keys]

    def _verify(self, target: AgentUpdateTarget) -> m.Event:
        assert self.fetcher is not None
        try:
            pinned = self.pinned_keys()
            if not pinned:
                raise BundleRejected("no update key is pinned on this device (update_public_keys)")
            self._verified = check_bundle(
                self.fetcher.path_for(target.sha256),
                target=target,
                pinned=pinned,
                running_version=self.running_version,
            )
        except (BundleRejected, OSError) as exc:
            return m.Rejected(target.sha256, str(exc))
        return m.Verified(target.sha256)

    def _prepare(self, target: AgentUpdateTarget) -> m.Event:
        verified = self._verified
        if verified is None or verified.sha256 != target.sha256:
            return m.Rejected(target.sha256, "the bundle was not verified before installing")

        def wheels_into(folder: Path) -> list[Path]:
            return extract_wheels(verified, folder)

        def firmware_into(file: Path) -> Path | None:
            return extract_firmware(verified, file)

        try:
            slot = self.slots.prepare(
                target.version,
                target.sha256,
                wheels_into,
                verified.manifest.update_keys,
                firmware_into=firmware_into,
                rollout=target.rollout,
            )
        except (SlotError, BundleRejected, OSError) as exc:
            return m.Rejected(target.sha256, f"the bundle did not install: {exc}")
        if self.fetcher is not None:
            self.fetcher.discard(target.sha256)  # the slot holds it now
        return m.Prepared(target.sha256, slot)

    def _switch(self, target: AgentUpdateTarget, slot: str) -> bool:
        if self.mcu is None:
            return self._switch_held(target, slot)
        with self.mcu.lock:  # after a firmware update under way, never beside one
            return self._switch_held(target, slot)

    def _switch_held(self, target: AgentUpdateTarget, slot: str) -> bool:
        if not self.hooks.hold_sessions():
            return False
        marker = self.slots.marker(slot) or {}
        keys = marker.get("update_keys") or None
        trial = Trial(
            slot,
            target.version,
            self.running_version,
            target.rollout,
            target.sha256,
            self.settings.update_health_timeout_s,
            tuple(str(k) for k in keys) if keys else None,
        )
        try:
            self.slots.switch_to_trial(trial)
        except Exception:
            self.hooks.release_sessions()
            raise
        log.info("switching to agent %s (slot %s): restarting", target.version, slot)
        self.hooks.restart()
        return True

    def _report(self, report: UpdateReport) -> None:
        try:
            self.store.queue_message(self.settings.device_id, "update", report.to_json())
        except Exception:
            log.exception("the update report %s could not be queued", report.state)
            return
        self.hooks.kick()

    def _report_rollback(self) -> None:
        """A failure recorded by the launcher or a trial's health check, reported once."""
        failure = self.slots.unreported_failure()
        if failure is None:
            return
        self._report(
            UpdateReport(
                "rolled_back",
                str(failure.get("from_version") or self.running_version),
                str(failure.get("version")),
                str(failure.get("rollout") or "unknown"),
                str(failure.get("reason") or "")[:500] or None,
            )
        )
        self.slots.mark_reported()
