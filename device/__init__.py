"""The device agent: synthesis, safety chain, hardware monitor, local store, sync, CLI."""
