"""The health check of a new agent on trial (``docs/updates.md``, "Two slots"): run by the service at
its start when ``state.json`` says the slot it runs from is on trial.

Healthy means, within ``update_health_timeout_s`` of the start: the agent started and opened its
store (it got this far), the safety MCU said HELLO and accepted an ARM (released at once: muted
again; skipped when the device has no MCU configured, the simulation), the broker connection is up,
and its ``installed`` report was acknowledged by the server (published at QoS 1, deleted from the
outbox by the ack). Then the trial becomes the good slot. Otherwise the first step that did not
pass says why: the failure is recorded, ``current`` goes back to the good slot, the ``installed``
report not acknowledged is taken out of the outbox, and the service exits 75 for the launcher to
start the previous agent, which reports ``rolled_back`` with that reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from resonera.common.agent_update import UpdateReport
from resonera.device.hwmonitor import HardwareMonitor, HardwareNotReady
from resonera.device.store import DeviceStore
from resonera.device.updater.slots import AgentSlots

__all__ = ["TrialHealth"]

log = logging.getLogger(__name__)

POLL_S: Final = 0.2
#: Between two ARM attempts that the MCU refused or did not answer.
ARM_RETRY_S: Final = 1.0
HOLDER: Final = "the update's health check"


@dataclass
class TrialHealth:
    """One trial's check. ``connected``: the broker link is up; ``link_error``: what it last
    said; ``kick``: publish what was queued; ``passed``/``failed``: told at the end (the service
    starts taking updates, or exits 75)."""

    slots: AgentSlots
    slot: str
    trial: dict[str, Any]
    store: DeviceStore
    device_id: str
    monitor: HardwareMonitor | None
    connected: Callable[[], bool]
    link_error: Callable[[], str | None]
    kick: Callable[[], None]
    timeout_s: float
    passed: Callable[[], None]
    failed: Callable[[], None]
    stop: threading.Event
    clock: Callable[[], float] = time.monotonic

    def start(self) -> None:
        threading.Thread(target=self.run, name="update-health", daemon=True).start()

    def run(self) -> None:
        deadline = self.clock() + self.timeout_s
        report_id: str | None = None
        try:
            reason = self._mcu(deadline) or self._broker(deadline)
            if reason is None:
                report_id = self._queue_installed()
                reason = self._acked(report_id, deadline)
        except Exception as exc:  # any fault of the new agent is a failed check, said so
            log.exception("the update's health check failed")
            reason = f"the health check failed: {exc}"
        if self.stop.is_set() and reason is not None:
            return  # stopped meanwhile: the launcher decides at the next start
        version = self.trial.get("version")
        if reason is None:
            self.slots.confirm(self.slot)
            log.info("agent %s passed its health check: slot %s is good", version, self.slot)
            self.passed()
            return
        log.error("agent %s failed its health check: %s", version, reason)
        if report_id is not None:
            self.store.acknowledge([report_id])  # never sent: the rollback is what is said
        self.slots.give_up(self.slot, f"{version}: {reason}")
        self.failed()

    def _wait(self, done: Callable[[], bool], deadline: float) -> bool:
        while not done():
            if self.clock() >= deadline or self.stop.wait(POLL_S):
                return done()
        return True

    def _mcu(self, deadline: float) -> str | None:
        monitor = self.monitor
        if monitor is None:
            return None  # no MCU configured (simulation): nothing to arm
        why = "it did not say HELLO"
        while self.clock() < deadline and not self.stop.is_set():
            if monitor.hello is not None:
                try:
                    claim = monitor.claim(
                        HOLDER, timeout_s=max(0.5, min(5.0, deadline - self.clock()))
                    )
                except HardwareNotReady as exc:
                    why = str(exc)
                else:
                    claim.release()
                    return None
            self.stop.wait(ARM_RETRY_S if monitor.hello is not None else POLL_S)
        return f"the safety MCU did not arm within {self.timeout_s:.0f} s: {why}"

    def _broker(self, deadline: float) -> str | None:
        if self._wait(self.connected, deadline):
            return None
        error = self.link_error()
        return f"no broker connection within {self.timeout_s:.0f} s" + (
            f": {error}" if error else ""
        )

    def _queue_installed(self) -> str:
        trial = self.trial
        report = UpdateReport(
            "installed",
            str(trial.get("from_version")),
            str(trial.get("version")),
            str(trial.get("rollout")),
        )
        envelope = self.store.queue_message(self.device_id, "update", report.to_json())
        self.kick()
        return envelope.id

    def _acked(self, report_id: str, deadline: float) -> str | None:
        if self._wait(lambda: not self.store.messages([report_id]), deadline):
            return None
        return f"its installed report was not acknowledged within {self.timeout_s:.0f} s"
