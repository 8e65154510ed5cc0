"""The device's safety pieces around the engine's chain: the safety state machine and its supervisor,
the persisted dose ledger, the session's calibration and pre-flight, the ear-cup check."""
