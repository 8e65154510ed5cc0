from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet import TlsBroker, run_tls_broker


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    with run_tls_broker(tmp_path) as broker:
        yield broker
