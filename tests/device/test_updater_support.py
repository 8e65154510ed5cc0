"""Wheels for the updater's tests, until ``tests/updates_support.py`` (helper B's ``build_bundle``)
lands: the agent's wheel built from a copy of this tree at another version, and a small wheel that
stands for the locked dependencies (a path file naming the test venv's site-packages, as
tests/packaging does), so a slot installs in seconds with ``pip install --no-index --no-deps``.
No tests here."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def copy_tree(dest: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        src = ROOT / name
        if src.is_file() and not name.startswith(("tests/", "benchmarks/", "docs/")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())
    return dest


def agent_wheel(workdir: Path, version: str, *, patch: str | None = None) -> Path:
    """The agent's wheel built from a copy of the tree at ``version``; ``patch`` (a Python
    statement) is put at the top of ``device/cli.py``'s ``main`` (a deliberately broken agent)."""
    src = copy_tree(workdir / f"src-{version}")
    pyproject = src / "pyproject.toml"
    text = re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', pyproject.read_text())
    if '"resonera.device.updater"' not in text:  # until pyproject.toml lists the package
        text = text.replace(
            '"resonera.device.safety",', '"resonera.device.safety",\n    "resonera.device.updater",'
        )
    pyproject.write_text(text)
    if patch is not None:
        cli = src / "device" / "cli.py"
        cli.write_text(
            cli.read_text().replace(
                "    try:\n        return run_cli(",
                f"    {patch}\n    try:\n        return run_cli(",
                1,
            )
        )
    out = workdir / f"dist-{version}"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    [wheel] = out.glob("resonera-*.whl")
    return wheel


def deps_wheel(workdir: Path) -> Path:
    """A wheel whose one file is a path file to the test venv's site-packages (the dependencies)."""
    name = "resonera_test_deps-1.0-py3-none-any.whl"
    path = workdir / name
    info = "resonera_test_deps-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("resonera-test-deps.pth", sysconfig.get_paths()["purelib"] + "\n")
        whl.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: resonera-test-deps\nVersion: 1.0\n"
        )
        whl.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        whl.writestr(f"{info}/RECORD", "")
    return path
