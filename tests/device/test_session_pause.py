"""A pause is not played time (issue 23: ``history`` and the dashboard counted paused time as
played): a session paused for two seconds in the middle of a four-second program records four
seconds played, while its WAV holds the pause's silence too."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile
from numpy.typing import NDArray

from resonera.common.program import load_program_toml
from resonera.device.audio.prompt_mixer import PromptMixer
from resonera.device.session import Session, SessionWatch, standalone_parts
from resonera.device.settings import DeviceSettings
from resonera.device.store import DeviceStore
from resonera.engine.audio.calibration import packaged_calibration
from resonera.engine.audio.sinks import WavSink
from resonera.engine.pipeline import Playhead

RATE = 48_000
PROGRAM = """
name = "steady tone"
fade_in_s = 0.2
fade_out_s = 0.2
[[steps]]
duration_s = 4.0
[[steps.layers]]
type = "tone"
frequency_hz = 440
gain = 0.1
"""


def test_a_pause_is_not_counted_as_played(tmp_path: Path) -> None:
    settings = DeviceSettings.model_validate(
        {
            "device_id": "pausing",
            "data_dir": tmp_path,
            "simulation": True,
            "calibration_file": packaged_calibration(),
            "sample_rate": RATE,
        }
    )
    mixer = PromptMixer(RATE)
    written = [0]

    def person(block: NDArray[np.float32], _playhead: Playhead) -> None:
        """Pauses one second in, resumes after two seconds of the pause's output."""
        written[0] += len(block)
        if written[0] >= RATE and not mixer.paused and written[0] < 2 * RATE:
            mixer.pause()
        elif mixer.paused and written[0] >= 3 * RATE:
            mixer.resume()

    wav = tmp_path / "session.wav"
    with standalone_parts(settings, DeviceStore(settings.store_path)) as parts:
        session = Session(replace(parts, mixer=mixer), watch=SessionWatch(on_block=person))
        record = session.run(load_program_toml(PROGRAM), WavSink(wav))
    heard, rate = soundfile.read(wav)
    paused_s = mixer.frames_paused / RATE
    assert record.outcome == "completed"
    assert 1.5 < paused_s < 2.5  # the pause, once faded out (the fade is program, not silence)
    assert abs(record.played_s - 4.0) < 0.1  # the program, every second of it, and no more
    assert len(heard) / rate > record.played_s + 1.5  # the pause is in what the sink received
