"""The clinical server: MQTT ingest, store, API."""
