"""What ``resonera-provision`` and ``resonera-server migrate`` print: their own lines only, no
Alembic INFO lines (its plugins at import, each migration), unless -v asks for the libraries' logs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomli_w

BIN = Path(sys.executable).parent


def cli(name: str, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / name), *map(str, args)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
        timeout=120,
    )


def test_device_add_and_migrate_print_no_alembic_lines_unless_verbose(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text(
        tomli_w.dumps({"database_url": f"sqlite:///{tmp_path / 's.db'}", "demo": True})
    )
    # before the migration: one line saying what to run, not alembic's plugins at INFO
    early = cli("resonera-provision", "device", "add", "SN-12", "--server-config", config)
    assert early.returncode == 1
    [line] = early.stderr.splitlines()
    assert line.startswith("resonera-provision: error: ") and "resonera-server migrate" in line

    migrated = cli("resonera-server", "migrate", "--config", config)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stderr == ""
    assert migrated.stdout.startswith("resonera-server: migrated ")

    added = cli("resonera-provision", "device", "add", "SN-12", "--server-config", config)
    assert added.returncode == 0, added.stderr
    assert added.stderr == ""
    assert added.stdout.startswith("registered serial 'SN-12'")

    # -v shows the libraries' lines: the logging setup hides them, they are not just absent
    verbose = cli("resonera-provision", "-v", "device", "add", "SN-13", "--server-config", config)
    assert verbose.returncode == 0, verbose.stderr
    assert " alembic." in verbose.stderr
