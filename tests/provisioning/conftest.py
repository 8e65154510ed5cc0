from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from enrolled_fleet import Fleet, run_fleet
from fleet import TlsBroker, run_tls_broker


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    with run_tls_broker(tmp_path) as broker:
        yield broker


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with run_fleet(tmp_path) as running:
        yield running
