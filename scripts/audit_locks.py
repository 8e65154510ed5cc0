"""Audit the locked sets (requirements/*.txt) for known vulnerabilities with pip-audit.

pip-audit asks PyPI's JSON API about each pinned version. Where that database cannot be reached (an
index mirror without the JSON API, no network) pip-audit skips every package and still says "No
known vulnerabilities found"; this script says in one line that nothing was audited instead, and
passes. A vulnerability that has a fixed version fails the audit (`make lock` with
`UV_ARGS="--upgrade-package NAME"` takes the fix); one without a fix yet is printed as a warning.

Usage: python scripts/audit_locks.py requirements/device.txt requirements/server.txt
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    vulnerability: str
    fixed_in: tuple[str, ...]


@dataclass(frozen=True)
class Audit:
    lock: Path
    packages: int
    audited: int
    findings: tuple[Finding, ...]


def parse_report(lock: Path, report: dict[str, Any]) -> Audit:
    """pip-audit's JSON report as counts and findings."""
    dependencies: list[dict[str, Any]] = report.get("dependencies", [])
    findings = []
    audited = 0
    for dependency in dependencies:
        if "skip_reason" in dependency:
            continue
        audited += 1
        for vulnerability in dependency.get("vulns", []):
            findings.append(
                Finding(
                    dependency["name"],
                    dependency["version"],
                    vulnerability["id"],
                    tuple(vulnerability.get("fix_versions", [])),
                )
            )
    return Audit(lock, len(dependencies), audited, tuple(findings))


def run_pip_audit(lock: Path) -> Audit:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "report.json"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip_audit",
                "--disable-pip",
                "--require-hashes",
                "--progress-spinner=off",
                "-r",
                str(lock),
                "-f",
                "json",
                "-o",
                str(out),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if not out.exists():
            detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise SystemExit(f"audit: pip-audit failed on {lock}: {detail}")
        return parse_report(lock, json.loads(out.read_text()))


def main(locks: list[str]) -> int:
    if not locks:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    failed = False
    for audit in (run_pip_audit(Path(lock)) for lock in locks):
        if audit.audited == 0:
            print(
                f"audit: {audit.lock}: the vulnerability database (PyPI's JSON API) is not "
                f"reachable from here; 0 of {audit.packages} locked packages audited"
            )
            continue
        for finding in audit.findings:
            fix = ", ".join(finding.fixed_in)
            what = f"{finding.package} {finding.version}: {finding.vulnerability}"
            if fix:
                failed = True
                print(f"audit: {audit.lock}: {what}, fixed in {fix}")
            else:
                print(f"audit: {audit.lock}: warning: {what}, no fixed version yet")
        unaudited = audit.packages - audit.audited
        note = f" ({unaudited} not on PyPI's JSON API)" if unaudited else ""
        print(
            f"audit: {audit.lock}: {audit.audited} packages audited{note}, "
            f"{len(audit.findings)} known vulnerabilities"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
