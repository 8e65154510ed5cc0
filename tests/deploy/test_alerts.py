"""The alert rules the server ships (``server/alerts/resonera.rules.yml``): each fires on the series
it watches and stays quiet on healthy ones (``promtool test rules``, the Debian package
``prometheus``), and every metric they name is one the real server's ``/metrics`` exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from support import require_tool

RULES = resources.files("resonera.server.alerts") / "resonera.rules.yml"
DAY = 86400
LAST_SEEN = "resonera_device_last_seen_timestamp_seconds"


def alert(name: str, severity: str, summary: str, description: str, **labels: str) -> Any:
    return {
        "exp_labels": {"severity": severity, **labels},
        "exp_annotations": {"summary": summary, "description": description},
    }


def rules_test(alerts: list[dict[str, Any]], series: list[dict[str, str]]) -> dict[str, Any]:
    return {"interval": "1m", "input_series": series, "alert_rule_test": alerts}


TESTS: list[dict[str, Any]] = [
    # a device not heard from for 2 days; another heard from each minute; two API instances
    # report the same fleet figures (one alert, not two)
    rules_test(
        [
            {"eval_time": "1d", "alertname": "ResoneraDeviceOffline", "exp_alerts": []},
            {
                "eval_time": "3d",
                "alertname": "ResoneraDeviceOffline",
                "exp_alerts": [
                    alert(
                        "ResoneraDeviceOffline",
                        "ticket",
                        "device dev-quiet has not been heard from for 2 days",
                        "last message or online status 3d 0h 0m 0s ago",
                        device_id="dev-quiet",
                    )
                ],
            },
        ],
        [
            {
                "series": LAST_SEEN + '{device_id="dev-quiet",instance="api-1"}',
                "values": "0x4400",
            },
            {
                "series": LAST_SEEN + '{device_id="dev-quiet",instance="api-2"}',
                "values": "0x4400",
            },
            {
                "series": LAST_SEEN + '{device_id="dev-busy",instance="api-1"}',
                "values": "0+60x4400",
            },
        ],
    ),
    # messages stored within a second for an hour, then every one 5 to 60 minutes late
    rules_test(
        [
            {"eval_time": "60m", "alertname": "ResoneraIngestLagHigh", "exp_alerts": []},
            {
                "eval_time": "110m",
                "alertname": "ResoneraIngestLagHigh",
                "exp_alerts": [
                    alert(
                        "ResoneraIngestLagHigh",
                        "page",
                        "ingest lag: half the messages take more than 5 minutes to be stored",
                        "median lag 32m 30s",  # 300 s + half the (300, 3600] bucket
                    )
                ],
            },
        ],
        [
            {"series": 'resonera_ingest_lag_seconds_bucket{le="1"}', "values": "0+10x60 600+0x60"},
            {
                "series": 'resonera_ingest_lag_seconds_bucket{le="300"}',
                "values": "0+10x60 600+0x60",
            },
            {"series": 'resonera_ingest_lag_seconds_bucket{le="3600"}', "values": "0+10x120"},
            {"series": 'resonera_ingest_lag_seconds_bucket{le="+Inf"}', "values": "0+10x120"},
        ],
    ),
    # 1 % of the messages quarantined for half an hour, then 20 %
    rules_test(
        [
            {"eval_time": "30m", "alertname": "ResoneraQuarantineRateHigh", "exp_alerts": []},
            {
                "eval_time": "70m",
                "alertname": "ResoneraQuarantineRateHigh",
                "exp_alerts": [
                    alert(
                        "ResoneraQuarantineRateHigh",
                        "page",
                        "more than 5 % of device messages go to quarantine",
                        "20% of received messages quarantined",
                    )
                ],
            },
        ],
        [
            {"series": "resonera_ingest_received_total", "values": "0+100x80"},
            {"series": "resonera_ingest_quarantined_total", "values": "0+1x30 30+20x50"},
        ],
    ),
    # one certificate ends in 20 days, another in 90
    rules_test(
        [
            {"eval_time": "30m", "alertname": "ResoneraCertificateExpiring", "exp_alerts": []},
            {
                "eval_time": "2h",
                "alertname": "ResoneraCertificateExpiring",
                "exp_alerts": [
                    alert(
                        "ResoneraCertificateExpiring",
                        "ticket",
                        "certificate of device dev-old expires within 30 days",
                        "it expires in 19d 22h 0m 0s; is its renewal failing?",
                        device_id="dev-old",
                    )
                ],
            },
        ],
        [
            {
                "series": 'resonera_device_certificate_expiry_timestamp_seconds{device_id="dev-old"}',
                "values": f"{20 * DAY}x200",
            },
            {
                "series": 'resonera_device_certificate_expiry_timestamp_seconds{device_id="dev-new"}',
                "values": f"{90 * DAY}x200",
            },
        ],
    ),
    # the server exports 0 until updates exist: quiet; one failure: an alert
    rules_test(
        [{"eval_time": "50m", "alertname": "ResoneraUpdateFailures", "exp_alerts": []}],
        [{"series": "resonera_update_failures_total", "values": "0x60"}],
    ),
    rules_test(
        [
            {
                "eval_time": "50m",
                "alertname": "ResoneraUpdateFailures",
                "exp_alerts": [
                    alert(
                        "ResoneraUpdateFailures",
                        "ticket",
                        "devices reported failed updates in the last hour",
                        "1 failed updates",
                    )
                ],
            }
        ],
        [{"series": "resonera_update_failures_total", "values": "0x30 1x30"}],
    ),
    # one fault a minute, reported by two API instances (counted once); dose events are no fault
    rules_test(
        [
            {"eval_time": "3m", "alertname": "ResoneraSafetyFaultsHigh", "exp_alerts": []},
            {
                "eval_time": "60m",
                "alertname": "ResoneraSafetyFaultsHigh",
                "exp_alerts": [
                    alert(
                        "ResoneraSafetyFaultsHigh",
                        "page",
                        "more than 5 safety faults in the last hour across the fleet",
                        "60 safety faults in the last hour",
                    )
                ],
            },
        ],
        [
            {
                "series": 'resonera_safety_events_total{type="fault",instance="api-1"}',
                "values": "0+1x60",
            },
            {
                "series": 'resonera_safety_events_total{type="fault",instance="api-2"}',
                "values": "0+1x60",
            },
            {
                "series": 'resonera_safety_events_total{type="dose_reached",instance="api-1"}',
                "values": "0+100x60",
            },
        ],
    ),
]


def test_each_rule_fires_on_what_it_watches_and_not_on_a_healthy_fleet(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    shutil.copyfile(str(RULES), tmp_path / "resonera.rules.yml")
    spec = {"rule_files": ["resonera.rules.yml"], "evaluation_interval": "1m", "tests": TESTS}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    checked = subprocess.run(
        [promtool, "check", "rules", "resonera.rules.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    tested_alerts = {t["alertname"] for case in TESTS for t in case["alert_rule_test"]}
    assert tested_alerts == set(re.findall(r"- alert: (\w+)", RULES.read_text()))
