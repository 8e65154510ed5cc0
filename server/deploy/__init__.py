"""The systemd units that run the server (API, ingest consumers, broker; server/README.md)."""
