"""Every package of the tree is in the distribution: a subpackage left out of ``pyproject.toml``'s
list installs nowhere, and the agent built into an update bundle fails at its first import."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_folder_with_an_init_is_a_listed_package() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    missing = []
    for name, folder in setuptools["package-dir"].items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            relative = init.parent.relative_to(ROOT / folder)
            package = ".".join((name, *relative.parts))
            if package not in listed:
                missing.append(package)
    assert not missing, (
        f"packages missing from pyproject.toml's [tool.setuptools] packages: {missing}"
    )
