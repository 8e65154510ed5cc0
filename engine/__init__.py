"""The sound engine the device and the server share: synthesis (``audio``), the safety chain
(``safety``), sinks, calibration, and the pipeline that joins them (``pipeline``). It imports
nothing of the device, the server or provisioning; see ``engine/audio/README.md`` and
``engine/safety/README.md``."""
