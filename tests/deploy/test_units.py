"""The server's systemd units (``server/deploy/``): ``systemd-analyze verify`` accepts them without a
warning, with the real paths of this machine's venv in place of ``/opt/resonera/.venv`` (so every
ExecStart names a program that is there), and ``systemd-analyze security`` rates each long-running
one as hardened as the device's unit asks for (or better)."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from support import require_tool

UNITS = resources.files("resonera.server.deploy")
INSTALLED_VENV = "/opt/resonera/.venv/bin/"
#: The units that run for good (the path unit's oneshot service only asks systemd for a reload).
SERVICES = ("resonera-api.service", "resonera-ingest@1.service", "resonera-mosquitto.service")
#: ``systemd-analyze security`` exposure, 0 (locked down) to 10 (nothing restricted), times ten.
MAX_EXPOSURE = 20
HARDENING = (
    "NoNewPrivileges=true",
    "ProtectSystem=strict",
    "ProtectHome=true",
    "PrivateTmp=true",
    "CapabilityBoundingSet=\n",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "SystemCallFilter=@system-service",
)


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """The shipped units as this machine would install them: the venv's real path."""
    venv_bin = f"{Path(sys.executable).parent}/"
    for unit in UNITS.iterdir():
        if unit.name.endswith((".service", ".path")):
            text = unit.read_text().replace(INSTALLED_VENV, venv_bin)
            (tmp_path / unit.name).write_text(text)
    return tmp_path


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("systemd-analyze"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_the_units_verify_without_a_warning(units: Path) -> None:
    names = [*SERVICES, "resonera-broker-reload.path", "resonera-broker-reload.service"]
    verified = analyze("verify", "--man=no", *names, cwd=units)
    assert verified.returncode == 0, verified.stderr
    assert verified.stderr == "", verified.stderr  # an unknown key is only a warning: none either


def test_verify_catches_a_misspelt_key_and_a_missing_program(units: Path) -> None:
    """What the test above relies on: the check does look into the files."""
    api = units / "resonera-api.service"
    text = api.read_text()
    api.write_text(text.replace("NoNewPrivileges=true", "NoNewPrivilege=true"))
    assert (
        "Unknown key 'NoNewPrivilege'" in analyze("verify", "--man=no", api.name, cwd=units).stderr
    )
    api.write_text(text.replace(f"{Path(sys.executable).parent}/", INSTALLED_VENV))
    missing = analyze("verify", "--man=no", api.name, cwd=units)
    assert missing.returncode != 0 and "is not executable" in missing.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_is_hardened(units: Path, name: str) -> None:
    template = units / name.replace("@1.", "@.")
    text = template.read_text()
    assert [line for line in HARDENING if line not in text] == []
    rated = analyze("security", "--offline=yes", f"--threshold={MAX_EXPOSURE}", name, cwd=units)
    overall = rated.stdout.strip().splitlines()[-1]
    assert rated.returncode == 0, overall
    assert "Overall exposure level" in overall and "OK" in overall, overall
