"""Audio synthesis and sinks: program → blocks (``synth``, ``voices``) → player loop (``player``,
with the ``chain`` of processors) → sink (``sinks``); calibration and metering beside them.

The public names are re-exported here; see ``device/audio/README.md``.
"""

from resonera.device.audio.calibration import Calibration, load_calibration_toml
from resonera.device.audio.chain import session_processors
from resonera.device.audio.levels import SILENCE_DBFS, LevelMeter
from resonera.device.audio.player import (
    BlockProcessor,
    GainRamp,
    Outcome,
    PlaybackResult,
    play,
)
from resonera.device.audio.sinks import (
    AudioDeviceError,
    AudioSink,
    NullSink,
    PyAudioSink,
    SinkKind,
    WavFormat,
    WavSink,
    find_output_device,
    open_default_sink,
)
from resonera.device.audio.synth import ProgramRenderer, Voice, voice_for

__all__ = [
    "SILENCE_DBFS",
    "AudioDeviceError",
    "AudioSink",
    "BlockProcessor",
    "Calibration",
    "GainRamp",
    "LevelMeter",
    "NullSink",
    "Outcome",
    "PlaybackResult",
    "ProgramRenderer",
    "PyAudioSink",
    "SinkKind",
    "Voice",
    "WavFormat",
    "WavSink",
    "find_output_device",
    "load_calibration_toml",
    "open_default_sink",
    "play",
    "session_processors",
    "voice_for",
]
