"""The supply-chain outputs: `make sbom` writes a valid CycloneDX SBOM per role listing exactly its
lock's pins, and the lock audit reads pip-audit's report right: a fixable vulnerability fails, one
without a fix warns, and a database it could not reach is said, never taken for a clean result."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from locks import read_lock
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def audit_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "audit_locks", ROOT / "scripts" / "audit_locks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["audit_locks"] = module
    spec.loader.exec_module(module)
    return module


def test_make_sbom_lists_each_roles_locked_set(tmp_path: Path) -> None:
    made = subprocess.run(
        ["make", "-s", "sbom", f"SBOM_DIR={tmp_path}", f"BIN={Path(sys.executable).parent}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    for role in ("device", "server"):
        bom = json.loads((tmp_path / f"resonera-{role}.cdx.json").read_text())
        assert bom["bomFormat"] == "CycloneDX"
        assert bom["metadata"]["component"]["name"] == "resonera"
        listed = {(canonicalize_name(c["name"]), c["version"]) for c in bom["components"]}
        locked = {(pin.name, str(pin.version)) for pin in read_lock(role)}
        assert listed == locked
        assert all(c["purl"].startswith("pkg:pypi/") for c in bom["components"])


def report(*dependencies: dict[str, object]) -> dict[str, object]:
    return {"dependencies": list(dependencies), "fixes": []}


def test_the_audit_fails_on_a_fixable_vulnerability_and_warns_on_the_rest(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = audit_module()
    reports = {
        "device.txt": report(
            {
                "name": "numpy",
                "version": "1.0",
                "vulns": [{"id": "PYSEC-1", "fix_versions": ["1.1"]}],
            },
            {"name": "scipy", "version": "2.0", "vulns": [{"id": "GHSA-x", "fix_versions": []}]},
            {"name": "lost", "skip_reason": "Dependency not found on PyPI"},
        ),
        "server.txt": report({"name": "fastapi", "version": "1", "vulns": []}),
    }
    monkeypatch.setattr(
        audit, "run_pip_audit", lambda lock: audit.parse_report(lock, reports[lock.name])
    )
    assert audit.main(["device.txt", "server.txt"]) == 1
    out = capsys.readouterr().out
    assert "numpy 1.0: PYSEC-1, fixed in 1.1" in out
    assert "warning: scipy 2.0: GHSA-x, no fixed version yet" in out
    assert "device.txt: 2 packages audited (1 not on PyPI's JSON API), 2 known" in out
    assert "server.txt: 1 packages audited, 0 known vulnerabilities" in out


def test_an_unreachable_database_is_said_in_one_line_not_taken_for_clean(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = audit_module()
    gone: list[dict[str, object]] = [{"name": n, "skip_reason": "not found"} for n in "abc"]
    skipped = report(*gone)
    monkeypatch.setattr(audit, "run_pip_audit", lambda lock: audit.parse_report(lock, skipped))
    assert audit.main(["device.txt"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert "not reachable from here; 0 of 3 locked packages audited" in line


def test_the_audit_runs_on_the_real_locks() -> None:
    """pip-audit itself on the locks: it audits them or says it could not, and never fails here
    for want of a database."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "audit_locks.py"), "requirements/device.txt"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    [line, *_] = done.stdout.splitlines()
    assert line.startswith("audit: requirements/device.txt: ")
