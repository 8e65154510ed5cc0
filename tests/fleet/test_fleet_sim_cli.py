"""``resonera fleet-sim`` as a user runs it: a small fleet end to end, and bad input refused in one
line."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from support import require_tool

from resonera.stack.cli import main
from resonera.stack.fleet_sim import (
    PASSPHRASE_ENV,
    RUN_PASSPHRASE,
    FleetSimOptions,
    local_stack,
    run_fleet_sim,
)


def _resonera() -> str:
    return str(Path(sys.executable).parent / "resonera")


@pytest.mark.slow
def test_fleet_sim_reports_throughput_latency_and_no_duplicates(tmp_path: Path) -> None:
    require_tool("mosquitto")
    result = subprocess.run(
        [
            _resonera(),
            "fleet-sim",
            "--devices",
            "20",
            "--sessions",
            "5",
            "--workdir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "20/20 devices connected" in out
    # 100 sessions and a safety event per device (every 5th session): all stored, none twice
    assert "stored       120 records, 0 duplicates" in out
    assert "ack latency  p50" in out and "msg/s acknowledged" in out
    assert "outboxes     0 left in all" in out
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--devices", "0"], "--devices, --sessions and --consumers must be at least 1"),
        (["--sessions", "-1"], "--devices, --sessions and --consumers must be at least 1"),
    ],
)
def test_bad_sizes_are_one_line_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fleet-sim", *args]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"resonera: error: {message}"


def test_a_used_work_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "something").write_text("kept")
    assert main(["fleet-sim", "--workdir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "is not empty; give a new or empty one" in err
    assert (tmp_path / "something").read_text() == "kept"


@pytest.mark.slow
def test_fleet_sim_against_a_running_deployment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--broker``: devices get certificates from the deployment's CA and are registered in its
    database; its own ingest stores them."""
    require_tool("mosquitto")
    with local_stack(tmp_path / "deployment", consumers=1) as deployment:
        monkeypatch.setenv(PASSPHRASE_ENV, RUN_PASSPHRASE.decode())
        out = io.StringIO()
        result = run_fleet_sim(
            FleetSimOptions(
                devices=10,
                sessions=3,
                broker=f"127.0.0.1:{deployment.port}",
                ca=deployment.ca.directory,
                database_url=deployment.database_url,
                workdir=tmp_path / "sim",
            ),
            out=out,
        )
    assert result.produced == result.stored == 30
    assert result.duplicates == 0
    assert f"broker 127.0.0.1:{deployment.port}" in out.getvalue()


def test_broker_without_ca_or_database_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet-sim", "--broker", "127.0.0.1:8883"]) == 1
    assert "--broker needs --ca" in capsys.readouterr().err
    assert main(["fleet-sim", "--broker", "nowhere"]) == 1
    assert "'nowhere' is not host:port" in capsys.readouterr().err
