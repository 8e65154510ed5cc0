"""Audio synthesis and sinks."""
