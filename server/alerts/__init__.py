"""The fleet's alert conditions: their thresholds, defined once (``rules.py``), and the Prometheus
alerting rules generated from them (``resonera.rules.yml``, package data; server/README.md,
"Alerts"). The admin's devices page evaluates the same conditions on the database
(``resonera.server.fleet_alerts``)."""
