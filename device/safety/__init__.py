"""The software safety chain: state machine, limiter, level ceiling, exposure meter and dose ledger."""
