from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Mosquitto, run_mosquitto


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One broker for the whole test session (tests use distinct device ids to stay apart)."""
    with run_mosquitto(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture
def private_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of the test's own, for tests that stop or restart it."""
    with run_mosquitto(tmp_path / "broker", persistent=True) as broker:
        yield broker
