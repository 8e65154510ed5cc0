"""Safety events → the local store and the outbox, without ever blocking the caller.

Every fault, warning, limit and dose action, refusal and stop the hardware monitor and the session
report, and every transition of the safety state machine out of the normal path, becomes a
``SafetyEventRecord`` (type, cause text, the readings and limits at that moment, board id,
simulation flag) stored with ``DeviceStore.record_event``, which queues the ``event`` message in
the same transaction. Routine hand-overs (consent granted and given back, the link up, closed or
dropped while nothing sounds, the transitions of a normal start and end:
``common.routine_events.routine_counter``) are not safety events: they are counted
(``routine_counts``, reported in telemetry and ``status``), never stored (docs/safety-events.md).

The callers are latency-critical (the monitor's I/O thread, the audio loop's state machine), and a
SQLite commit with ``synchronous=FULL`` takes milliseconds, so ``SafetyEventRecorder.event`` only
builds the record and hands it to one writer thread. ``flush()`` waits until everything handed
over is committed (tests, shutdown); ``close()`` flushes and stops the thread. A write that fails is
logged and counted (``failed``), never raised into the caller: an event we could not store must not
stop the safety chain that reported it.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from types import TracebackType
from typing import Protocol

from resonera.common import serial_link as sl
from resonera.common.ids import new_id
from resonera.common.records import (
    HardwareLimits,
    HardwareReadings,
    SafetyEventRecord,
    SafetyEventType,
)
from resonera.common.routine_events import ROUTINE_COUNTERS, RoutineCounter, routine_counter
from resonera.common.safety_link import HardLimits
from resonera.device.store import DeviceStore

log = logging.getLogger(__name__)

#: Events waiting for the writer beyond this are dropped oldest-first (and counted): memory stays
#: bounded even if the disk stalls for minutes.
MAX_BACKLOG = 10_000


class SafetyEventSink(Protocol):
    """What the monitor and the safety state machine call to report an event. MUST NOT block."""

    def event(
        self,
        type: SafetyEventType,
        cause: str,
        *,
        code: int = 0,
        readings: HardwareReadings | None = None,
        limits: HardwareLimits | None = None,
        attenuation_db: float = 0.0,
        hardware_board: str = "",
        from_state: str | None = None,
        to_state: str | None = None,
        session_id: str | None = None,
    ) -> SafetyEventRecord: ...


def readings_from_telemetry(telemetry: sl.Telemetry | None) -> HardwareReadings | None:
    """The record's view of one TELEMETRY (None before any arrived)."""
    if telemetry is None:
        return None
    return HardwareReadings(
        amp_temp_c=_finite(telemetry.amp_temp_c),
        supply_current_a=_finite(telemetry.supply_current_a),
        output_vrms=_finite(telemetry.output_vrms),
        dc_offset_mv=_finite(telemetry.dc_offset_mv),
        ear_spl_db=_finite(telemetry.ear_spl_db),
        clip=telemetry.clip,
        headphones=telemetry.headphones,
        muted=telemetry.muted,
        armed=telemetry.armed,
        fault_code=telemetry.fault & 0xFF,
    )


def limits_record(limits: HardLimits | None) -> HardwareLimits | None:
    if limits is None:
        return None
    values = [max(0.0, _finite(v)) for v in limits.values()]
    return HardwareLimits(
        max_output_vrms=values[0],
        max_amp_temp_c=values[1],
        max_supply_current_a=values[2],
        max_dc_offset_mv=values[3],
        max_ear_spl_db=values[4],
    )


def _finite(value: float) -> float:
    """Records refuse NaN/inf; a sensor that reports one is recorded at the float32 extreme."""
    if math.isnan(value):
        return 0.0
    return max(-3.4e38, min(3.4e38, value))


class SafetyEventRecorder:
    """Builds ``SafetyEventRecord``s and writes them from one background thread.

    ``simulation`` is stamped on every record (True when the device plays without a safety MCU).
    Thread-safe; use as a context manager or call ``close()``."""

    def __init__(self, store: DeviceStore, device_id: str, *, simulation: bool) -> None:
        self.store = store
        self.device_id = device_id
        self.simulation = simulation
        #: Counts: committed, failed to commit, dropped because the backlog was full.
        self.written = 0
        self.failed = 0
        self.dropped = 0
        #: Routine hand-overs seen since this recorder started, by counter (``routine_counts``).
        self._routine: dict[RoutineCounter, int] = dict.fromkeys(ROUTINE_COUNTERS, 0)
        self._backlog: deque[SafetyEventRecord] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closing = False
        self._thread = threading.Thread(
            target=self._run, name="resonera-safety-events", daemon=True
        )
        self._thread.start()

    def event(
        self,
        type: SafetyEventType,
        cause: str,
        *,
        code: int = 0,
        readings: HardwareReadings | None = None,
        limits: HardwareLimits | None = None,
        attenuation_db: float = 0.0,
        hardware_board: str = "",
        from_state: str | None = None,
        to_state: str | None = None,
        session_id: str | None = None,
    ) -> SafetyEventRecord:
        """Record one event (returns at once; the write happens on the writer thread); a routine
        hand-over is only counted (the record is returned all the same, never stored)."""
        record = SafetyEventRecord(
            event_id=new_id(),
            at=self.store.clock(),  # the device's records are dated by one clock: the store's
            type=type,
            cause=cause[:500],
            code=code & 0xFF,
            readings=readings,
            limits=limits,
            attenuation_db=min(0.0, attenuation_db),
            hardware_board=hardware_board[:120],
            simulation=self.simulation,
            from_state=from_state,
            to_state=to_state,
            session_id=session_id,
        )
        self.submit(record)
        return record

    def routine_counts(self) -> dict[str, int]:
        """Routine hand-overs counted since this recorder started, every counter named (0 when
        none): ``consent_granted``, ``device_mutes``, ``link_up``, ``link_closed``,
        ``link_drops``, ``session_transitions`` (``common.routine_events``)."""
        with self._cond:
            return {name: count for name, count in self._routine.items()}

    def submit(self, record: SafetyEventRecord) -> None:
        """Queue a ready-made record for writing (a routine one is counted instead)."""
        counter = routine_counter(record)
        if counter is not None:
            log.debug("routine %s (counted, not recorded): %s", record.type, record.cause)
            with self._cond:
                self._routine[counter] += 1
            return
        with self._cond:
            if self._closing:
                log.error("safety event after close, not stored: %s %s", record.type, record.cause)
                self.failed += 1
                return
            if len(self._backlog) >= MAX_BACKLOG:
                self._backlog.popleft()
                self.dropped += 1
            self._backlog.append(record)
            self._cond.notify_all()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every event handed over so far is written (or failed); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._backlog and not self._busy, timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        self.flush(timeout_s)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)

    def __enter__(self) -> SafetyEventRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._backlog) or self._closing)
                if not self._backlog:
                    return  # closing and drained
                record = self._backlog.popleft()
                self._busy = True
            try:
                self.store.record_event(self.device_id, record)
                ok = True
            except Exception:
                log.exception("cannot store safety event %s (%s)", record.type, record.cause)
                ok = False
            with self._cond:
                self._busy = False
                if ok:
                    self.written += 1
                else:
                    self.failed += 1
                self._cond.notify_all()
