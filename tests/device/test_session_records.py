"""What a session leaves behind: its underruns in the record (stored sealed and queued for the server),
and a damaged dose ledger told as a safety event, so the clinician learns it needs a reset."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from device_peer import device_settings
from numpy.typing import NDArray

from resonera.common.program import builtin_program
from resonera.device.safety.dose_ledger import DoseLedger
from resonera.device.session import SessionRefused, play_standalone
from resonera.engine.audio.sinks import NullSink


class DryNullSink(NullSink):
    """A null sink whose sound device ran dry once every 50 blocks: the count a PyAudio sink keeps
    (``underruns``), without needing a sound card to starve."""

    def __init__(self) -> None:
        super().__init__()
        self.underruns = 0
        self._blocks = 0

    def write(self, block: NDArray[np.float32]) -> None:
        super().write(block)
        self._blocks += 1
        if self._blocks % 50 == 0:
            self.underruns += 1


def test_a_sessions_underruns_are_recorded_stored_and_queued(tmp_path: Path) -> None:
    settings = device_settings(None, tmp_path, "underrun-dev")
    store = settings.open_store()
    sink = DryNullSink()
    record = play_standalone(settings, store, builtin_program("demo-alpha"), sink)
    assert sink.underruns > 0
    assert record.underruns == sink.underruns
    assert store.sessions() == [record]
    [queued] = [m for m in store.pending() if m.kind == "session"]
    assert json.loads(queued.payload)["body"]["underruns"] == sink.underruns


def test_a_damaged_ledger_is_told_as_a_safety_event(tmp_path: Path) -> None:
    settings = device_settings(None, tmp_path, "damaged-dev")
    store = settings.open_store()
    ledger = DoseLedger.for_settings(settings)
    ledger.add_energy(time.time() - 120, pa2s=1.0, seconds=60)
    ledger.close()
    with sqlite3.connect(settings.dose_ledger_path) as conn:
        conn.execute("UPDATE dose_minute SET seconds = seconds + 1")
    # counted as the whole week used: the default profile refuses the session
    with pytest.raises(SessionRefused):
        play_standalone(settings, store, builtin_program("demo-alpha"), NullSink())
    kinds = [e.type for e in store.events()]
    assert "dose_ledger_corrupted" in kinds
    assert "session_refused" in kinds
