"""Audio synthesis and sinks: program → blocks (``synth``, ``voices``) → player loop (``player``,
with its processors: the safety chain, ``resonera.engine.safety``) → sink (``sinks``); calibration
and metering beside them.

The public names are re-exported here; see ``engine/audio/README.md``.
"""

from resonera.engine.audio.calibration import Calibration, load_calibration_toml
from resonera.engine.audio.levels import SILENCE_DBFS, LevelMeter
from resonera.engine.audio.player import (
    BlockProcessor,
    GainRamp,
    Outcome,
    PlaybackResult,
    play,
)
from resonera.engine.audio.sinks import (
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
from resonera.engine.audio.synth import ProgramRenderer, Voice, voice_for

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
    "voice_for",
]
