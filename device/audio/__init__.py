"""Audio synthesis and sinks: program → blocks (``synth``) → player loop (``player``) → sink
(``sinks``).

The public names are re-exported here; see ``device/audio/README.md``.
"""

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
    "GainRamp",
    "LevelMeter",
    "NullSink",
    "Outcome",
    "PlaybackResult",
    "ProgramRenderer",
    "PyAudioSink",
    "SinkKind",
    "Voice",
    "WavSink",
    "find_output_device",
    "open_default_sink",
    "play",
    "voice_for",
]
