"""The fleet's alert conditions and their thresholds, defined once: ``resonera.rules.yml`` (what
Prometheus evaluates) is generated from them, and the admin's devices page (``fleet_alerts``)
evaluates the same conditions on the database.

To change a threshold, change it here and regenerate the file:

    .venv/bin/python -m resonera.server.alerts.rules > server/alerts/resonera.rules.yml

``tests/deploy/test_alert_thresholds.py`` fails while the shipped file differs from what this
module renders, and ``tests/deploy/test_alerts.py`` runs the file through ``promtool``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Final

#: A device (not revoked, heard at least once) unheard for this long is offline.
OFFLINE_AFTER: Final = timedelta(days=2)
#: The median time from a device stamping a message to its storing, over ``INGEST_WINDOW``,
#: above this is ingest lag.
INGEST_LAG_MEDIAN: Final = timedelta(minutes=5)
INGEST_WINDOW: Final = timedelta(minutes=15)
#: More than this share of the messages received over ``QUARANTINE_WINDOW`` quarantined.
QUARANTINE_SHARE: Final = 0.05
QUARANTINE_WINDOW: Final = timedelta(minutes=15)
#: A device's current certificate ending within this is not being renewed.
CERTIFICATE_WITHIN: Final = timedelta(days=30)
#: Any update reported failed within this window.
UPDATE_FAILURE_WINDOW: Final = timedelta(hours=1)
#: More than this many safety faults across the fleet within ``SAFETY_FAULT_WINDOW``.
SAFETY_FAULTS_MAX: Final = 5
SAFETY_FAULT_WINDOW: Final = timedelta(hours=1)
#: The safety event types that are faults: each one muted a device.
FAULT_TYPES: Final = (
    "fault",
    "link_down",
    "mcu_restarted",
    "incompatible",
    "no_monitor",
    "dose_ledger_corrupted",
)


def prometheus_duration(span: timedelta) -> str:
    """``span`` as Prometheus writes a duration (``15m``, ``1h``, ``2d``): its largest whole unit."""
    seconds = int(span.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _seconds(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    return f"{seconds // 86400} * 86400" if seconds % 86400 == 0 else str(seconds)


def _percent(share: float) -> str:
    return f"{share * 100:g} %"


@dataclass(frozen=True)
class AlertRule:
    """One rule of the generated file; ``why`` becomes its comment."""

    name: str
    why: str
    expr: str
    severity: str
    summary: str
    description: str
    hold: timedelta | None = None


def alert_rules() -> tuple[AlertRule, ...]:
    lag_window = prometheus_duration(INGEST_WINDOW)
    quarantine_window = prometheus_duration(QUARANTINE_WINDOW)
    faults = "|".join(FAULT_TYPES)
    lag_minutes = int(INGEST_LAG_MEDIAN.total_seconds() // 60)
    return (
        AlertRule(
            "ResoneraDeviceOffline",
            f"A device the server has not heard from for {OFFLINE_AFTER.days} days: switched off, "
            "broken, or cut off\nfrom the broker. Revoked devices and boards never seen are left "
            "out.",
            "time() - max by (device_id) (resonera_device_last_seen_timestamp_seconds) > "
            + _seconds(OFFLINE_AFTER),
            "ticket",
            f"device {{{{ $labels.device_id }}}} has not been heard from for {OFFLINE_AFTER.days} "
            "days",
            "last message or online status {{ $value | humanizeDuration }} ago",
            hold=timedelta(minutes=30),
        ),
        AlertRule(
            "ResoneraIngestLagHigh",
            "Ingest commits messages late: the median time from a device stamping a message to "
            "its\ncommit. A device that syncs a night's backlog raises the tail, not the median.",
            "histogram_quantile(0.5, sum by (le) "
            f"(rate(resonera_ingest_lag_seconds_bucket[{lag_window}]))) > "
            + str(int(INGEST_LAG_MEDIAN.total_seconds())),
            "page",
            f"ingest lag: half the messages take more than {lag_minutes} minutes to be stored",
            "median lag {{ $value | humanizeDuration }}",
            hold=INGEST_WINDOW,
        ),
        AlertRule(
            "ResoneraQuarantineRateHigh",
            f"More than {_percent(QUARANTINE_SHARE)} of what devices send is refused into "
            "quarantine (bad signatures, revoked or\nunknown devices, malformed messages): a "
            "broken release or an attack.",
            f"sum(rate(resonera_ingest_quarantined_total[{quarantine_window}])) / "
            f"sum(rate(resonera_ingest_received_total[{quarantine_window}])) > "
            f"{QUARANTINE_SHARE:g}",
            "page",
            f"more than {_percent(QUARANTINE_SHARE)} of device messages go to quarantine",
            "{{ $value | humanizePercentage }} of received messages quarantined",
            hold=QUARANTINE_WINDOW,
        ),
        AlertRule(
            "ResoneraCertificateExpiring",
            "Devices renew their certificate well before it ends; one within "
            f"{CERTIFICATE_WITHIN.days} days of its end is not\nrenewing, and will be shut out "
            "of the broker when it expires.",
            "min by (device_id) (resonera_device_certificate_expiry_timestamp_seconds) - time() "
            "< " + _seconds(CERTIFICATE_WITHIN),
            "ticket",
            f"certificate of device {{{{ $labels.device_id }}}} expires within "
            f"{CERTIFICATE_WITHIN.days} days",
            "it expires in {{ $value | humanizeDuration }}; is its renewal failing?",
            hold=timedelta(hours=1),
        ),
        AlertRule(
            "ResoneraUpdateFailures",
            "Over-the-air updates that devices reported failed or rolled back (a rolled-back "
            "device runs its previous, working slot); the Updates page names them and why.",
            "max(increase(resonera_update_failures_total"
            f"[{prometheus_duration(UPDATE_FAILURE_WINDOW)}])) > 0",
            "ticket",
            "devices reported failed updates in the last hour",
            "{{ $value }} failed updates",
        ),
        AlertRule(
            "ResoneraSafetyFaultsHigh",
            "Safety faults across the fleet: MCU faults, links lost mid-session, restarts, "
            "firmware\nmismatches, a missing monitor or a corrupt dose ledger. Each one muted a "
            "device; many in an\nhour point at a bad release or a bad batch of boards.",
            f'sum(max by (type) (increase(resonera_safety_events_total{{type=~"{faults}"}}'
            f"[{prometheus_duration(SAFETY_FAULT_WINDOW)}]))) > {SAFETY_FAULTS_MAX}",
            "page",
            f"more than {SAFETY_FAULTS_MAX} safety faults in the last hour across the fleet",
            "{{ $value }} safety faults in the last hour",
        ),
    )


_HEADER = """\
# Prometheus alerting rules for a Resonera server (server/README.md, "Alerts").
#
# GENERATED from server/alerts/rules.py, where the thresholds live (the admin's devices page
# evaluates the same conditions on the database): change them there and run
#   .venv/bin/python -m resonera.server.alerts.rules > server/alerts/resonera.rules.yml
#
# Load with `rule_files: [/etc/prometheus/resonera.rules.yml]` and scrape every API process's
# /metrics (metric names: server/metrics.py). Every API process reports the same fleet-wide
# figures read from the database, so the rules take the max across instances, never the sum.
# `severity: page` wakes someone; `severity: ticket` is for the next working day.
groups:
  - name: resonera
    rules:
"""


#: Longer expressions go on a line of their own (the file stays within 110 columns, mostly).
_ONE_LINE: Final = 100


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rules_text() -> str:
    """The rules file as shipped (``resonera.rules.yml``)."""
    parts = [_HEADER]
    for i, rule in enumerate(alert_rules()):
        if i:
            parts.append("\n")
        parts.extend(f"      # {line}\n" for line in rule.why.split("\n"))
        parts.append(f"      - alert: {rule.name}\n")
        if len(rule.expr) <= _ONE_LINE:
            parts.append(f"        expr: {rule.expr}\n")
        else:  # folded: the text goes on as one line
            parts.append(f"        expr: >\n          {rule.expr}\n")
        if rule.hold is not None:
            parts.append(f"        for: {prometheus_duration(rule.hold)}\n")
        parts.append(f"        labels:\n          severity: {rule.severity}\n")
        parts.append("        annotations:\n")
        parts.append(f"          summary: {_quoted(rule.summary)}\n")
        parts.append(f"          description: {_quoted(rule.description)}\n")
    return "".join(parts)


if __name__ == "__main__":
    print(rules_text(), end="")
