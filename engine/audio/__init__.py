"""Audio synthesis and sinks: program → blocks (``synth``, ``voices``, ``noise``, ``background``;
``readahead`` on a thread of its own) → player loop (``player``, with its processors: the safety
chain, ``resonera.engine.safety``) → sink (``sinks``); calibration (``calibration``) and metering
(``levels``, ``meter``) beside them. The pipeline that joins them is ``resonera.engine.pipeline``.

Nothing is imported here, so a module of this package costs only what it imports itself (the
server reads a calibration without loading numpy); see ``engine/audio/README.md``.
"""
