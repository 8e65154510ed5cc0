"""One session, end to end on the device: consent, playback, record, queue for sync.

The agent plays only while the safety MCU consents, unless the device was started in simulation mode,
which every record it makes says.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from resonera.common.errors import ResoneraError
from resonera.common.ids import new_id
from resonera.common.program import Program
from resonera.common.records import SessionRecord
from resonera.common.safety_link import HardLimits
from resonera.device.audio.player import play
from resonera.device.audio.sinks import AudioSink, NullSink, PyAudioSink, WavSink, open_default_sink
from resonera.device.audio.synth import ProgramRenderer
from resonera.device.hwmonitor import HardwareMonitor
from resonera.device.safety.chain import DoseEvent
from resonera.device.safety.dose_ledger import DoseLedger
from resonera.device.safety.session import build_chain, load_session_calibration, preflight
from resonera.device.settings import DeviceSettings
from resonera.device.store import DeviceStore

log = logging.getLogger(__name__)


class NoSafetyMonitor(ResoneraError):
    """Playing was asked for without a safety MCU and without simulation mode."""


class SessionRefused(ResoneraError):
    """The session would pass the weekly sound allowance and the profile says to refuse it."""


def open_sink(settings: DeviceSettings, wav_path: Path | None = None) -> AudioSink:
    """The sink the settings ask for; ``auto`` is the sound card when there is one, else a WAV."""
    wav = wav_path or settings.default_wav_path
    if settings.sink == "pyaudio":
        return PyAudioSink(output_device=settings.output_device)
    if settings.sink == "wav":
        return WavSink(wav)
    if settings.sink == "null":
        return NullSink()
    return open_default_sink(
        wav, sample_rate=settings.sample_rate, output_device=settings.output_device
    )


def play_session(
    settings: DeviceSettings,
    store: DeviceStore,
    program: Program,
    sink: AudioSink,
    *,
    stop: threading.Event | None = None,
    on_block: Callable[[NDArray[np.float32], ProgramRenderer], None] | None = None,
    notify: Callable[[str], None] = lambda _message: None,
    wall_clock: Callable[[], float] = time.time,
) -> SessionRecord:
    """Play ``program`` to ``sink`` with the MCU's consent, through the safety chain, then store
    the session and queue it.

    Before anything plays: the calibration must be there, and the session's expected dose is told
    (``notify``) and, if the profile says so, a session that would pass 100 % of the weekly
    allowance is refused (``SessionRefused``). ``on_block`` sees every block played (a progress
    display). A sound device lost mid-session ends the session as a ``fault`` whose reason says so;
    the record is stored all the same.
    """
    stop = stop or threading.Event()
    calibration = load_session_calibration(settings.calibration_file)
    profile = settings.profile
    ledger = DoseLedger(settings.dose_ledger_path)
    check = preflight(
        program,
        sample_rate=settings.sample_rate,
        calibration=calibration,
        profile=profile,
        week=ledger.status(wall_clock(), profile.dose_mode),
    )
    notify(check.message)
    if check.refused:
        ledger.close()
        raise SessionRefused(check.message)
    dose_events: list[DoseEvent] = []

    def on_dose_event(event: DoseEvent) -> None:
        dose_events.append(event)
        notify(event.message)

    with ExitStack() as stack:
        stack.callback(ledger.close)
        monitor: HardwareMonitor | None = None
        hard: HardLimits | None = None
        board = ""
        if not settings.simulation:
            if settings.serial_url is None:
                raise NoSafetyMonitor(
                    "no safety MCU configured (serial_url), so nothing will play; "
                    "use --simulation for a bench run without hardware (marked on every record)"
                )
            monitor = stack.enter_context(HardwareMonitor(settings.serial_url))
            hello = monitor.arm(settings.arm_timeout_s)
            hard = hello.limits
            board = f"{hello.board_id} fw {hello.firmware_version}"
            log.info("safety MCU %s armed; playing with its consent", board)
        else:
            log.warning("SIMULATION MODE: playing without the safety MCU's consent")

        renderer = ProgramRenderer(program, settings.sample_rate)
        chain = build_chain(
            sample_rate=settings.sample_rate,
            calibration=calibration,
            profile=profile,
            hard=hard,
            ledger=ledger,
            wall_clock=wall_clock,
            on_dose_event=on_dose_event,
        )
        started_at = datetime.now(UTC)
        result = play(
            renderer,
            sink,
            block_frames=settings.block_frames,
            gate=(lambda: monitor.consent) if monitor is not None else None,
            reason=(lambda: monitor.reason) if monitor is not None else (lambda: ""),
            should_stop=lambda: stop.is_set() or chain.stop_requested,
            processors=[chain],
            on_block=on_block,
        )
        ended_at = datetime.now(UTC)

    record = SessionRecord(
        session_id=new_id(),
        program_name=program.name,
        program_digest=program.digest(),
        started_at=started_at,
        ended_at=ended_at,
        planned_s=program.duration_s,
        played_s=result.played_s,
        outcome=result.outcome,
        reason=result.reason or (dose_events[-1].message if chain.stop_requested else ""),
        sink=sink.kind,
        sample_rate=settings.sample_rate,
        peak_dbfs=result.peak_dbfs,
        rms_dbfs=result.rms_dbfs,
        simulation=settings.simulation,
        hardware_board=board,
    )
    store.record_session(settings.device_id, record)
    return record
