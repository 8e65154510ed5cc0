"""The distribution installs under the ``resonera`` namespace, as a wheel and as an editable install,
in fresh virtual environments. Third-party dependencies come from the test venv (made visible by a path
file) so the check needs no downloads beyond the build backend."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMPORT_CHECK = (
    "import resonera.common.envelope, resonera.engine.safety.aweighting, resonera.device.session, "
    "resonera.server.app, "
    "resonera.hardware.sim, resonera.provisioning.broker, resonera.stack.demo, sys; "
    "import resonera.device; print(resonera.device.__file__)"
)

pytestmark = pytest.mark.slow


def copy_source(dest: Path) -> Path:
    """The tracked and new files of the checkout, without build products or the venv."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def fresh_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True).create(path)
    python = path / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # Dependencies from the test venv; a path file does not run that venv's own .pth hooks, so the
    # test venv's editable install of resonera stays invisible here.
    Path(site, "deps-from-test-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def run(argv: list[object], cwd: Path) -> str:
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_built_wheel_imports_in_a_fresh_venv(tmp_path: Path) -> None:
    src = copy_source(tmp_path / "src")
    run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", tmp_path / "dist", src], cwd=tmp_path
    )
    [wheel] = list((tmp_path / "dist").glob("resonera-*.whl"))
    python = fresh_venv(tmp_path / "venv")
    run([python, "-m", "pip", "install", "-q", "--no-deps", wheel], cwd=tmp_path)
    where = run([python, "-c", IMPORT_CHECK], cwd=tmp_path)
    assert str(tmp_path / "venv") in where
    # the console scripts are installed too
    for script in (
        "resonera",
        "resonera-device",
        "resonera-server",
        "resonera-hwsim",
        "resonera-provision",
    ):
        assert (tmp_path / "venv" / "bin" / script).exists(), script
    # no bare top-level packages that would collide in site-packages
    site = Path(
        run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=tmp_path,
        ).strip()
    )
    for bare in ("common", "engine", "device", "server", "hardware", "provisioning", "stack"):
        assert not (site / bare).exists(), f"bare package {bare} installed"


def test_editable_install_imports_in_a_fresh_venv(tmp_path: Path) -> None:
    src = copy_source(tmp_path / "src")
    python = fresh_venv(tmp_path / "venv")
    run([python, "-m", "pip", "install", "-q", "--no-deps", "-e", src], cwd=tmp_path)
    where = run([python, "-c", IMPORT_CHECK], cwd=tmp_path)
    assert str(src / "device") in where
