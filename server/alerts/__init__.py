"""The Prometheus alerting rules the server ships (``resonera.rules.yml``; server/README.md)."""
