"""One source for the alert thresholds (``resonera.server.alerts.rules``): the rules file shipped
is the one the module renders, and each threshold the devices page evaluates reaches the file."""

from __future__ import annotations

from datetime import timedelta
from importlib import resources

import pytest
import yaml

from resonera.server.alerts import rules

SHIPPED = resources.files("resonera.server.alerts") / "resonera.rules.yml"


def test_the_shipped_rules_file_is_the_one_the_thresholds_render() -> None:
    assert SHIPPED.read_text() == rules.rules_text(), (
        "server/alerts/resonera.rules.yml differs from server/alerts/rules.py: run "
        ".venv/bin/python -m resonera.server.alerts.rules > server/alerts/resonera.rules.yml"
    )


def test_the_file_reads_as_the_thresholds_say() -> None:
    by_name = {r["alert"]: r for r in yaml.safe_load(SHIPPED.read_text())["groups"][0]["rules"]}
    assert by_name["ResoneraDeviceOffline"]["expr"].endswith("> 2 * 86400")
    assert by_name["ResoneraIngestLagHigh"]["expr"].strip().endswith("[15m]))) > 300")
    assert by_name["ResoneraQuarantineRateHigh"]["expr"].strip().endswith("> 0.05")
    assert by_name["ResoneraCertificateExpiring"]["expr"].endswith("< 30 * 86400")
    assert by_name["ResoneraSafetyFaultsHigh"]["expr"].strip().endswith("[1h]))) > 5")
    for kind in rules.FAULT_TYPES:
        assert kind in by_name["ResoneraSafetyFaultsHigh"]["expr"]


@pytest.mark.parametrize(
    ("name", "value", "seen"),
    [
        ("OFFLINE_AFTER", timedelta(days=3), "> 3 * 86400"),
        ("INGEST_LAG_MEDIAN", timedelta(minutes=10), "> 600"),
        ("QUARANTINE_SHARE", 0.1, "> 0.1"),
        ("CERTIFICATE_WITHIN", timedelta(days=14), "< 14 * 86400"),
        ("SAFETY_FAULTS_MAX", 9, "> 9"),
    ],
)
def test_a_changed_threshold_changes_the_file(
    monkeypatch: pytest.MonkeyPatch, name: str, value: object, seen: str
) -> None:
    monkeypatch.setattr(rules, name, value)
    assert seen in rules.rules_text()
    assert rules.rules_text() != SHIPPED.read_text()
