"""The safety MCU's firmware that came in the agent's bundle (``docs/updates.md``, "The MCU's
firmware in the bundle"): flashed by the agent that runs from the slot holding it.

``McuFirmwareUpdates.start(slot)`` is called once this agent takes updates: after its health check
passed (a new agent, confirmed), or at its start when it is not on trial (so a firmware a power
loss left unflashed is tried again). When the slot holds a firmware (``slots.FIRMWARE_FILE``)
whose version is not the one the MCU's HELLO says, and the MCU did not already refuse or roll back
that image (``slots.FIRMWARE_FAILED``), a thread of its own runs ``McuUpdater`` between sessions:
it holds sessions first (the service refuses new ones; False while one plays, then it waits for the
session's end) and lets them go after. The MCU's own rules (muted throughout, a trial confirmed
after its health check) are ``McuUpdater``'s.

Each step is reported as an ``UpdateReport`` with ``component`` "mcu" and the firmware versions;
``installing`` once (not every tenth of the transfer). A refusal that is the moment's (a session
holds the MCU, it consents, a limit is crossed) is tried again later; one that is the MCU's for
good (no bootloader), a refused image or a rolled-back one is recorded and not tried again for
this slot's bundle.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Final

from resonera.common import serial_link as sl
from resonera.common.agent_update import ENDED_STATES, UpdateReport, UpdateState
from resonera.device.hwmonitor import HardwareMonitor
from resonera.device.mcu_update import (
    McuUpdateError,
    McuUpdater,
    McuUpdateRefused,
    McuUpdateReport,
    SignedImage,
)
from resonera.device.updater.slots import AgentSlots

__all__ = ["McuFirmwareUpdates"]

log = logging.getLogger(__name__)

#: Between two tries that the moment refused (the MCU not heard from, in use, consenting).
RETRY_S: Final = 30.0
#: What the reports name when the slot's marker has no rollout (made before it kept one).
UNKNOWN_ROLLOUT: Final = "unknown"


class McuFirmwareUpdates:
    """See the module. ``hold_sessions``/``release_sessions``: the service's (``ServiceHooks``);
    ``lock`` is held from holding sessions to letting them go, so the agent's own switch waits
    for a firmware update under way (and one never starts during the switch)."""

    def __init__(
        self,
        slots: AgentSlots,
        monitor: HardwareMonitor,
        report: Callable[[UpdateReport], None],
        *,
        hold_sessions: Callable[[], bool],
        release_sessions: Callable[[], None],
        stop: threading.Event,
        retry_s: float = RETRY_S,
    ) -> None:
        self.slots = slots
        self.monitor = monitor
        self._report = report
        self._hold = hold_sessions
        self._release = release_sessions
        self._stop = stop
        self.retry_s = retry_s
        self.lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        #: How the last run ended (``installed``, ``failed``, ``rolled_back``, ``current``: the
        #: MCU runs the slot's firmware, ``none``: no firmware), for the tests and the log.
        self.outcome: str | None = None
        self._slot = ""
        #: SHA-256 of the slot's signed firmware file: what a failure record names.
        self._sha256 = ""
        self._rollout = UNKNOWN_ROLLOUT

    def start(self, slot: str | None) -> None:
        if slot is None or self.slots.firmware(slot) is None:
            self.outcome = "none"
            return
        self._thread = threading.Thread(
            target=self._run, args=(slot,), name="mcu-firmware", daemon=True
        )
        self._thread.start()

    def session_ended(self) -> None:
        self._wake.set()

    def _pause(self) -> None:
        """Until a session ends (since the try began), a while passes, or the service stops."""
        waited = 0.0
        while waited < self.retry_s and not self._stop.is_set() and not self._wake.is_set():
            self._stop.wait(0.2)
            waited += 0.2

    def _run(self, slot: str) -> None:
        try:
            self.outcome = self._flash(slot)
        except Exception:  # the agent lives on; the next start tries again
            log.exception("the safety MCU's firmware update failed")
            self.outcome = "error"

    def _flash(self, slot: str) -> str:
        path = self.slots.firmware(slot)
        if path is None:
            return "none"
        marker = self.slots.marker(slot) or {}
        self._slot, self._rollout = slot, str(marker.get("rollout") or UNKNOWN_ROLLOUT)
        data = path.read_bytes()
        self._sha256 = hashlib.sha256(data).hexdigest()
        failure = self.slots.firmware_failure(slot)
        if failure is not None and failure.get("sha256") == self._sha256:
            log.info("the safety MCU's firmware in slot %s was refused before: not again", slot)
            return str(failure.get("state") or "failed")
        try:
            image = SignedImage.parse(data, str(path))
        except McuUpdateError as exc:
            self._ended("unknown", "failed", str(exc))
            return "failed"
        while not self._stop.is_set():
            self._wake.clear()  # a session that ends from now on wakes the pause below
            hello = self.monitor.hello
            if hello is None:
                log.info("the MCU's firmware %s waits for the MCU's HELLO", image.version)
                self._pause()
                continue
            if hello.firmware_version == image.version:
                return "current"
            with self.lock:
                if not self._hold():
                    outcome = None  # a session plays: after its end
                else:
                    try:
                        outcome = self._update(image, hello.firmware_version)
                    finally:
                        self._release()
            if outcome is not None:
                return outcome
            self._pause()
        return "stopped"

    def _update(self, image: SignedImage, running: str) -> str | None:
        """One try; its end state, or None when the moment refused it (try again later)."""
        said: list[str] = []

        def step(one: McuUpdateReport) -> None:
            if one.state in ENDED_STATES or one.state in said:
                return  # the end is reported below, progress once
            said.append(one.state)
            self._send(one.state, one.from_version, one.to_version)

        try:
            result = McuUpdater(self.monitor, report=step).run(image)
        except McuUpdateRefused as exc:
            hello = self.monitor.hello
            if hello is None or hello.protocol_minor >= sl.UPDATE_SINCE_MINOR:
                log.info("the MCU's firmware %s waits: %s", image.version, exc)
                return None
            self._ended(image.version, "failed", str(exc), running)
            return "failed"
        if result.state == "installed":
            self._send("installed", running, image.version)
            log.info("the safety MCU runs firmware %s", image.version)
        else:
            self._ended(image.version, result.state, result.reason, running)
        return result.state

    def _send(
        self, state: UpdateState, from_version: str, to_version: str, reason: str | None = None
    ) -> None:
        self._report(
            UpdateReport(state, from_version, to_version, self._rollout, reason, component="mcu")
        )

    def _ended(self, version: str, state: str, reason: str, running: str | None = None) -> None:
        """A refused or rolled-back firmware: recorded (never tried again), then reported."""
        log.error("the safety MCU's firmware %s was not taken (%s): %s", version, state, reason)
        self.slots.record_firmware_failure(self._slot, self._sha256, version, state, reason)
        hello = self.monitor.hello
        from_version = running or (hello.firmware_version if hello is not None else "unknown")
        ended: UpdateState = "rolled_back" if state == "rolled_back" else "failed"
        self._send(ended, from_version, version, reason[:500] or None)
