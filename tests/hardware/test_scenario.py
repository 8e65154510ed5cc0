"""Scripting the simulator: control commands, scenarios (with a clock the test owns), and the
``resonera-hwsim`` control interfaces (UNIX socket, stdin, --scenario)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import wait_until

from resonera.common import serial_link as sl
from resonera.hardware.scenario import (
    CommandError,
    Scenario,
    ScenarioError,
    ScenarioRunner,
    execute,
)
from resonera.hardware.sim import Simulator

HWSIM = str(Path(sys.executable).with_name("resonera-hwsim"))

TOML = """
[[step]]
at = 2.0
ramp = { reading = "amp_temp_c", from = 40.0, to = 95.0, over = 5.0 }

[[step]]
at = 10.0
set = { headphones = false }

[[step]]
at = 12.0
command = "garbage 2"
"""


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator() as simulator:
        yield simulator
    assert simulator.error is None


def test_scenario_from_toml_runs_on_a_clock_the_test_owns(tmp_path: Path, sim: Simulator) -> None:
    path = tmp_path / "heat.toml"
    path.write_text(TOML)
    scenario = Scenario.load(path)
    assert [s.at_s for s in scenario.steps] == [2.0, 10.0, 12.0]
    runner = ScenarioRunner(scenario, sim, started=100.0)
    runner.advance(101.0)
    assert sim.board.amp_temp_c == 40.0  # nominal, nothing yet
    runner.advance(102.0)
    assert sim.board.amp_temp_c == 40.0
    runner.advance(104.5)
    assert sim.board.amp_temp_c == pytest.approx(67.5)  # halfway through the ramp
    runner.advance(107.0)
    assert sim.board.amp_temp_c == pytest.approx(95.0)
    assert sim.board.headphones
    runner.advance(110.0)
    assert not sim.board.headphones
    runner.advance(112.5)
    assert runner.done
    assert runner.errors == []


def test_scenario_from_json_and_its_errors(tmp_path: Path) -> None:
    good = {"step": [{"at": 1, "set": {"dc_offset_mv": 80}}, {"at": 0.5, "command": "reboot"}]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(good))
    assert [s.at_s for s in Scenario.load(path).steps] == [0.5, 1.0]  # sorted by time
    bad = [
        ({"steps": []}, 'expected {"step"'),
        ({"step": [{"at": -1}]}, "'at' must be a number"),
        ({"step": [{"at": 1, "set": {"temp": 3}}]}, "no such reading 'temp'"),
        ({"step": [{"at": 1, "set": {"headphones": 1}}]}, "headphones must be true/false"),
        ({"step": [{"at": 1, "ramp": {"reading": "clip", "to": 1, "over": 1}}]}, "numeric"),
        ({"step": [{"at": 1, "ramp": {"reading": "amp_temp_c", "to": 1, "over": 0}}]}, "> 0"),
        ({"step": [{"at": 1, "command": "explode"}]}, "unknown command 'explode'"),
        ({"step": [{"at": 1, "when": 2}]}, "unknown key(s) when"),
    ]
    for data, message in bad:
        path.write_text(json.dumps(data))
        with pytest.raises(ScenarioError, match=f"scenario {path}: .*{_re(message)}"):
            Scenario.load(path)
    path.write_text("{not json")
    with pytest.raises(ScenarioError, match="is not valid"):
        Scenario.load(path)


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_commands_inject_faults(sim: Simulator) -> None:
    assert execute(sim, "set amp_temp_c 70.5") == "ok amp_temp_c = 70.5"
    assert sim.board.amp_temp_c == 70.5
    execute(sim, "over-current")
    assert sim.board.supply_current_a > sim.config.max_supply_current_a
    execute(sim, "headphones-out")
    assert not sim.board.headphones
    execute(sim, "set headphones on")
    assert sim.board.headphones
    assert execute(sim, "stall 5").startswith("ok link stalled for 5 s")
    assert sim.board.stalled
    execute(sim, "unstall")
    assert not sim.board.stalled
    execute(sim, "reboot 0")
    wait_until(lambda: sim.reboots == 1, 5, "the reboot")
    assert execute(sim, "status").startswith("ok muted=True armed=False")
    assert "over-temperature" in execute(sim, "help")
    for line, message in [
        ("", "empty command"),
        ("explode", "unknown command"),
        ("garbage 0", "count from 1"),
        ("set volume 3", "no such reading"),
        ("set clip maybe", "true or false"),
        ("over-temperature now", "no arguments"),
    ]:
        with pytest.raises(CommandError, match=message):
            execute(sim, line)


def test_running_scenario_on_the_simulator_thread_mutes_the_mcu(sim: Simulator) -> None:
    sim.board.set_temperature(40.0)
    runner = sim.run_scenario(
        Scenario.from_data({"step": [{"at": 0.0, "set": {"headphones": False}}]})
    )
    wait_until(lambda: runner.done, 5, "the scenario")
    assert not sim.board.headphones


@pytest.fixture
def hwsim(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, Path]]:
    link, control = tmp_path / "link", tmp_path / "control.sock"
    scenario = tmp_path / "s.json"
    scenario.write_text(json.dumps({"step": [{"at": 0.0, "set": {"amp_temp_c": 55.5}}]}))
    process = subprocess.Popen(
        [HWSIM, "--link-file", str(link), "--control", str(control), "--scenario", str(scenario),
         "--symlink", str(tmp_path / "ttyMCU")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_until(link.exists, 10, "the link file")
        yield process, control, tmp_path / "ttyMCU"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_hwsim_control_socket_and_scenario(
    hwsim: tuple[subprocess.Popen[str], Path, Path],
) -> None:
    process, control, symlink = hwsim
    assert symlink.is_symlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(control))
        stream = conn.makefile("rw", encoding="utf-8")

        def ask(line: str) -> str:
            stream.write(line + "\n")
            stream.flush()
            return stream.readline().strip()

        wait_until(lambda: "temp=55.5" in ask("status"), 5, "the scenario to run")
        assert ask("over-temperature") == "ok"
        assert "temp=95.0" in ask("status")
        assert ask("bogus") == "error: unknown command 'bogus' (try 'help')"
        assert ask("crc 3") == "ok 3 frame(s) with a bad CRC queued"
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert not control.exists()
    assert not symlink.exists()


def test_hwsim_stdin_commands() -> None:
    result = subprocess.run(
        [HWSIM, "--stdin"],
        input="status\nheadphones-out\nnonsense\nquit\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("resonera-hwsim: serving on /dev/")
    assert lines[1].startswith("ok muted=True")
    assert lines[2] == "ok"
    assert lines[3].startswith("error: unknown command 'nonsense'")


def test_hwsim_bad_scenario_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("[[step]]\nat = 1\ncommand = 'explode'\n")
    result = subprocess.run(
        [HWSIM, "--scenario", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"resonera-hwsim: error: scenario {path}: step 1: unknown command 'explode'"
    ]


def test_mcu_reboot_through_the_api_restarts_muted(sim: Simulator) -> None:
    before = sim.controller
    sim.reboot(boot_ms=10)
    wait_until(lambda: sim.controller is not before, 5, "a fresh controller")
    assert sim.muted
    assert sim.controller.reason == sl.FAULT_POWER_UP
