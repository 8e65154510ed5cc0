"""The two slots and the launcher (``device/updater/slots.py``, ``launcher.py``) with real virtual
environments: the test venv adopted as slot a, the agent of this tree at another version installed
in slot b from wheels, the launcher started as systemd starts it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from resonera.device.updater.slots import AgentSlots, SlotError, Trial

NEXT = "0.1.1"
SHA = "c" * 64


def load_support() -> Any:
    """``test_updater_support.py`` beside this file (``tests/device`` is no package on the path)."""
    path = Path(__file__).with_name("test_updater_support.py")
    spec = importlib.util.spec_from_file_location("test_updater_support", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    support = load_support()
    work = tmp_path_factory.mktemp("wheels")
    return [support.agent_wheel(work, NEXT), support.deps_wheel(work)]


def copy_into(wheels: Sequence[Path]):  # type: ignore[no-untyped-def]
    def into(folder: Path) -> list[Path]:
        folder.mkdir()
        out = []
        for wheel in wheels:
            (folder / wheel.name).write_bytes(wheel.read_bytes())
            out.append(folder / wheel.name)
        return out

    return into


def launch(slots: AgentSlots, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(slots.directory / "launch.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_test_venv_is_adopted_as_slot_a_without_a_copy(tmp_path: Path) -> None:
    slots = AgentSlots(tmp_path / "agent")
    version = slots.adopt(Path(sys.prefix))
    assert version == "0.1.0"
    assert (tmp_path / "agent" / "slots" / "a").resolve() == Path(sys.prefix).resolve()
    assert os.readlink(tmp_path / "agent" / "current") == "slots/a"
    assert (tmp_path / "agent" / "launch.py").is_file()
    state = json.loads((tmp_path / "agent" / "state.json").read_text())
    assert state["good"] == {"slot": "a", "version": "0.1.0"} and state["trial"] is None
    assert slots.running_slot() == "a"
    assert slots.adopt(Path(sys.prefix)) == "0.1.0"  # again: nothing changes
    with pytest.raises(SlotError, match="set up already"):
        slots.adopt(tmp_path)
    with pytest.raises(SlotError, match="not an agent's venv"):
        AgentSlots(tmp_path / "other").adopt(tmp_path)


def test_a_slot_is_prepared_from_wheels_checked_and_a_half_made_one_is_made_again(
    tmp_path: Path, wheels: list[Path]
) -> None:
    slots = AgentSlots(tmp_path / "agent")
    slots.adopt(Path(sys.prefix))
    half = tmp_path / "agent" / "slots" / "b"
    half.mkdir()
    (half / "left-by-a-crash").write_text("x")
    with pytest.raises(SlotError, match=r"says version 0\.1\.1, not 0\.9\.0"):
        slots.prepare("0.9.0", SHA, copy_into(wheels))
    assert not half.exists()  # nothing half made is left under the slot's name
    assert slots.prepare(NEXT, SHA, copy_into(wheels)) == "b"
    assert slots.prepared("b", SHA)
    out = subprocess.run(
        [half / "bin" / "resonera-device", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"resonera-device {NEXT}"
    assert not (tmp_path / "agent" / "work").exists()
    # the adopted environment is never the inactive slot while it is the good one
    assert slots.inactive_slot() == "b"
    assert Path(sys.prefix, "bin", "resonera-device").exists()


def test_the_launcher_runs_the_trial_watched_and_rolls_back_when_it_exits_unconfirmed(
    tmp_path: Path, wheels: list[Path]
) -> None:
    slots = AgentSlots(tmp_path / "agent")
    slots.adopt(Path(sys.prefix))
    slot = slots.prepare(NEXT, SHA, copy_into(wheels))
    slots.switch_to_trial(Trial(slot, NEXT, "0.1.0", "r1", SHA, 60.0, ("k1",)))
    assert slots.current() == "b"
    # the trial's agent cannot start (no such settings file): it exits before confirming
    missing = str(tmp_path / "missing.toml")
    first = launch(slots, "--config", missing)
    assert first.returncode == 75, first.stderr
    state = slots.state()
    assert state["trial"] is None and state["good"]["slot"] == "a"
    assert state["failure"]["reason"].startswith(f"{NEXT}: exited before confirming its health")
    assert state["failure"]["reported"] is False and state["update_keys"] is None
    assert slots.current() == "a"
    # restarted (systemd, code 75): the good slot's agent runs (exec'd), with the same arguments
    again = launch(slots, "--config", missing)
    assert again.returncode != 75 and "missing.toml" in again.stderr + again.stdout


def test_a_trial_launched_once_already_is_rolled_back_at_the_next_start(
    tmp_path: Path, wheels: list[Path]
) -> None:
    slots = AgentSlots(tmp_path / "agent")
    slots.adopt(Path(sys.prefix))
    slot = slots.prepare(NEXT, SHA, copy_into(wheels))
    slots.switch_to_trial(Trial(slot, NEXT, "0.1.0", "r1", SHA, 60.0))
    state = slots.state()
    state["trial"]["launches"] = 1  # as a power loss during the trial leaves it
    (tmp_path / "agent" / "state.json").write_text(json.dumps(state))
    launch(slots, "--config", str(tmp_path / "missing.toml"))
    state = slots.state()
    assert state["trial"] is None and slots.current() == "a"
    assert "stopped before confirming its health" in state["failure"]["reason"]


def test_a_confirmed_trial_becomes_good_pins_its_keys_and_current_follows_the_state(
    tmp_path: Path, wheels: list[Path]
) -> None:
    slots = AgentSlots(tmp_path / "agent")
    slots.adopt(Path(sys.prefix))
    slot = slots.prepare(NEXT, SHA, copy_into(wheels))
    slots.switch_to_trial(Trial(slot, NEXT, "0.1.0", "r1", SHA, 60.0, ("k2",)))
    assert slots.trial_of("b") is not None and slots.trial_of("a") is None
    slots.confirm("b")
    assert slots.state()["good"] == {"slot": "b", "version": NEXT}
    assert slots.update_keys() == ("k2",)
    assert slots.inactive_slot() == "a"  # the old one is the fallback, prepared over next time
    # current pointing elsewhere (a kill between the state's write and the link's) is repaired
    (tmp_path / "agent" / "current").unlink()
    os.symlink("slots/a", tmp_path / "agent" / "current")
    launch(slots, "--config", str(tmp_path / "missing.toml"))
    assert slots.current() == "b"
