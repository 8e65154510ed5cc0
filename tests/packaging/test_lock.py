"""The locks in ``requirements/`` are what gets installed: the test venv holds exactly the dev lock's
versions, every pin carries hashes, the locks satisfy pyproject.toml's ranges (so an edited range
without ``make lock`` fails here), one package has one version across the locks, and the device's
lock pulls in none of the server's packages."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from locks import pins_here, read_lock
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def extras_requirements(*extras: str) -> list[Requirement]:
    """pyproject.toml's requirements for these extras, with the base set, the self-references
    (``resonera[...]``) followed."""
    found = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    wanted, seen = list(extras), set()
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in PYPROJECT["project"]["optional-dependencies"][extra]:
            requirement = Requirement(text)
            if requirement.name == "resonera":
                wanted.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


ROLE_EXTRAS = {"dev": ("dev",), "device": ("device", "hardware"), "server": ("server",)}


@pytest.mark.parametrize("lock", ["build", "dev", "device", "server"])
def test_every_pin_is_exact_and_hashed(lock: str) -> None:
    pins = read_lock(lock)
    assert pins, f"{lock}.txt pins nothing"
    assert [p.name for p in pins if p.hashes == 0] == []


@pytest.mark.parametrize("lock", sorted(ROLE_EXTRAS))
def test_the_lock_satisfies_pyproject_ranges(lock: str) -> None:
    pinned = pins_here(lock)
    unmet = []
    for requirement in extras_requirements(*ROLE_EXTRAS[lock]):
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            unmet.append(f"{requirement} (locked: {version})")
    assert unmet == [], "pyproject.toml changed without `make lock`"


@pytest.mark.parametrize("lock", ["device", "server"])
def test_a_package_has_one_version_in_every_lock(lock: str) -> None:
    dev: dict[str, set[Version]] = {}
    for pin in read_lock("dev"):
        dev.setdefault(pin.name, set()).add(pin.version)
    differing = [
        f"{pin.name}: {pin.version} here, {sorted(map(str, dev.get(pin.name, ())))} in dev"
        for pin in read_lock(lock)
        if pin.version not in dev.get(pin.name, set())
    ]
    assert differing == []


def test_the_device_lock_pulls_in_nothing_of_the_server() -> None:
    server_only = {"fastapi", "starlette", "uvicorn", "sqlmodel", "sqlalchemy", "alembic"}
    server_only |= {"psycopg", "argon2-cffi", "pyjwt", "jinja2", "prometheus-client", "amqtt"}
    device = {pin.name for pin in read_lock("device")}
    assert device & server_only == set()
    assert {"numpy", "pyaudio", "pyserial", "paho-mqtt"} <= device


def test_the_test_venv_holds_exactly_the_dev_lock() -> None:
    """What `pip freeze` would list, compared with the lock's pins for this platform and Python."""
    installed: dict[str, Version] = {
        canonicalize_name(dist.metadata["Name"]): Version(dist.version)
        for dist in importlib.metadata.distributions()
    }
    installed.pop("resonera")
    # pip, setuptools and wheel come from the build lock, installed before the dev lock
    expected = pins_here("dev") | {
        name: version
        for name, version in pins_here("build").items()
        if name in {"pip", "setuptools", "wheel"}
    }
    missing = {n: str(v) for n, v in expected.items() if installed.get(n) != v}
    extra = {n: str(v) for n, v in installed.items() if n not in expected}
    assert (missing, extra) == ({}, {})
