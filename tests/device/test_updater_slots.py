"""The two slots and the launcher (``device/updater/slots.py``, ``launcher.py``) with real virtual
environments: the test venv adopted as slot a, the agent of this tree at another version installed
in slot b from a real signed bundle (``tests/updates_support.py``'s key, this tree's wheels), the
launcher started as systemd starts it. One slot b is prepared for the module (pip installing the
locked wheels dominates); each test starts from the state "a good, no trial" over it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from updates_support import update_key

from resonera.common.agent_update import (
    AgentUpdateTarget,
    check_bundle,
    extract_wheels,
    file_digest,
)
from resonera.device.settings import DeviceSettings
from resonera.device.updater.launcher import empty_state, write_state
from resonera.device.updater.slots import AgentSlots, SlotError, Trial

pytestmark = pytest.mark.slow

NEXT = "0.1.1"


def load_support() -> Any:
    """``test_updater_support.py`` beside this file (``tests/device`` is no package on the path)."""
    if "test_updater_support" in sys.modules:
        return sys.modules["test_updater_support"]
    path = Path(__file__).with_name("test_updater_support.py")
    spec = importlib.util.spec_from_file_location("test_updater_support", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Prepared:
    slots: AgentSlots
    sha256: str


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """Slot a adopted, slot b prepared from the bundle of ``NEXT`` (over what a crash half made)."""
    work = tmp_path_factory.mktemp("slots")
    bundle = load_support().agent_bundle(work / "bundles", NEXT)
    size, sha256 = file_digest(bundle)
    target = AgentUpdateTarget(NEXT, sha256, size, "r1")
    verified = check_bundle(
        bundle, target=target, pinned=update_key().pinned(), running_version="0.1.0"
    )
    slots = AgentSlots(work / "agent")
    slots.adopt(Path(sys.prefix))
    half = slots.path("b")
    half.mkdir()
    (half / "left-by-a-crash").write_text("x")
    slot = slots.prepare(NEXT, sha256, lambda folder: extract_wheels(verified, folder), ("k-new",))
    assert slot == "b" and not (half / "left-by-a-crash").exists()
    return Prepared(slots, sha256)


@pytest.fixture
def slots(prepared: Prepared) -> AgentSlots:
    """The module's slots, back to "slot a good, no trial, no failure"."""
    slots = prepared.slots
    write_state(slots.directory, {**empty_state(), "good": {"slot": "a", "version": "0.1.0"}})
    (slots.directory / "current").unlink()
    os.symlink("slots/a", slots.directory / "current")
    return slots


def trial(prepared: Prepared, keys: tuple[str, ...] | None = None) -> Trial:
    return Trial("b", NEXT, "0.1.0", "r1", prepared.sha256, 60.0, keys)


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


def test_a_slot_is_prepared_from_a_bundle_checked_and_kept_with_its_keys(
    prepared: Prepared, slots: AgentSlots
) -> None:
    out = subprocess.run(
        [slots.path("b") / "bin" / "resonera-device", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"resonera-device {NEXT}"
    assert slots.prepared("b", prepared.sha256)
    assert slots.marker("b") == {
        "version": NEXT,
        "sha256": prepared.sha256,
        "update_keys": ["k-new"],
    }
    assert not (slots.directory / "work").exists()
    # the same bundle again: the slot is kept as it is, not made again
    assert slots.prepare(NEXT, prepared.sha256, lambda _f: []) == "b"
    # the adopted environment is never the inactive slot while it is the good one
    assert slots.inactive_slot() == "b"
    with pytest.raises(SlotError, match="is the good one"):
        slots.switch_to_trial(Trial("a", NEXT, "0.1.0", "r1", prepared.sha256, 60.0))
    with pytest.raises(SlotError, match="not prepared"):
        slots.switch_to_trial(Trial("b", NEXT, "0.1.0", "r1", "e" * 64, 60.0))


def test_the_launcher_runs_the_trial_watched_and_rolls_back_when_it_exits_unconfirmed(
    prepared: Prepared, slots: AgentSlots, tmp_path: Path
) -> None:
    slots.switch_to_trial(trial(prepared, ("k1",)))
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
    prepared: Prepared, slots: AgentSlots, tmp_path: Path
) -> None:
    slots.switch_to_trial(trial(prepared))
    state = slots.state()
    state["trial"]["launches"] = 1  # as a power loss during the trial leaves it
    write_state(slots.directory, state)
    launch(slots, "--config", str(tmp_path / "missing.toml"))
    state = slots.state()
    assert state["trial"] is None and slots.current() == "a"
    assert "stopped before confirming its health" in state["failure"]["reason"]


def test_a_confirmed_trial_becomes_good_pins_its_keys_and_current_follows_the_state(
    prepared: Prepared, slots: AgentSlots, tmp_path: Path
) -> None:
    slots.switch_to_trial(trial(prepared, ("k2",)))
    assert slots.trial_of("b") is not None and slots.trial_of("a") is None
    slots.confirm("b")
    assert slots.state()["good"] == {"slot": "b", "version": NEXT}
    assert slots.update_keys() == ("k2",)
    assert slots.inactive_slot() == "a"  # the old one is the fallback, prepared over next time
    # current pointing elsewhere (a kill between the state's write and the link's) is repaired
    (slots.directory / "current").unlink()
    os.symlink("slots/a", slots.directory / "current")
    launch(slots, "--config", str(tmp_path / "missing.toml"))
    assert slots.current() == "b"


def test_the_commands_adopt_a_venv_and_show_the_slots_a_trial_and_the_last_failure(
    prepared: Prepared, tmp_path: Path
) -> None:
    config = tmp_path / "device.toml"
    config.write_text(f'device_id = "cli-upd"\ndata_dir = "{tmp_path / "data"}"\n')
    device = Path(sys.prefix) / "bin" / "resonera-device"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [device, *args, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert "not set up" in cli("update", "status").stdout
    adopted = cli("slots", "adopt", str(sys.prefix))
    assert adopted.returncode == 0 and "agent 0.1.0" in adopted.stdout
    again = cli("slots", "adopt", str(tmp_path))
    assert again.returncode == 1 and "set up already" in again.stderr
    slots = AgentSlots.of(tmp_path / "data")
    state = slots.state()
    state["failure"] = {
        "version": NEXT,
        "from_version": "0.1.0",
        "rollout": "r1",
        "sha256": prepared.sha256,
        "reason": f"{NEXT}: exited before confirming its health: code 1",
        "at": 1_800_000_000.0,
        "reported": True,
    }
    write_state(slots.directory, state)
    shown = cli("update", "status").stdout
    assert "good        slot a, agent 0.1.0" in shown
    assert "trial       none" in shown
    assert "exited before confirming its health: code 1" in shown and "(reported)" in shown
    as_json = json.loads(cli("update", "status", "--json").stdout)
    assert as_json["good"] == {"slot": "a", "version": "0.1.0"} and as_json["current"] == "a"
    DeviceSettings(device_id="cli-upd", data_dir=tmp_path / "data").open_store().close()
    status = cli("status").stdout  # the device's own status says it in one line
    [line] = [line for line in status.splitlines() if line.strip().startswith("agent update")]
    assert line.split(maxsplit=2)[2] == (
        f"runs 0.1.0 (its good slot); last failed: {NEXT}: exited before confirming its health: "
        "code 1"
    )
    summary = json.loads(cli("status", "--json").stdout)["agent_update"]
    assert summary == {
        "good_version": "0.1.0",
        "trial_version": None,
        "last_failure": {
            "version": NEXT,
            "reason": f"{NEXT}: exited before confirming its health: code 1",
        },
    }
    (slots.directory / "launch.py").unlink()
    assert cli("slots", "install-launcher").returncode == 0
    assert (slots.directory / "launch.py").read_bytes() == (
        Path(__file__).parents[2] / "device" / "updater" / "launcher.py"
    ).read_bytes()
