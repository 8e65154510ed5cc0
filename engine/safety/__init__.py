"""The software safety chain: A-weighting, level ceiling, look-ahead limiter, exposure meter."""
