"""The two slots of ``docs/updates.md`` ("Two slots"), as the running agent uses them: adopt the
installation it runs from, prepare the other slot from a checked bundle, switch to it on trial,
confirm or give up the trial. The layout and ``state.json`` are the launcher's (``launcher.py``,
standard library only, whose functions this module uses): one reader and writer of both.

Adopting (``adopt``): a device installed before updates existed, or a test's ``.venv``, becomes
slot ``a`` without a copy: ``slots/a`` is a symlink to that environment. A later update that
prepares slot ``a`` again removes the symlink only, never the environment it pointed at (left on
disk for whoever installed it to remove).

Preparing (``prepare``): the inactive slot is removed and made again (``python -m venv``, then
``pip install --no-index --no-deps`` of the bundle's wheels), at ``nice`` 10 so the audio thread
is not starved; its ``resonera-device --version`` must say the target's version. A slot counts as
prepared only once its marker (``.resonera-slot.json``: version and bundle SHA-256) is written,
last: a slot half made by a crash has none and is made again at the next attempt. A bundle that
carries the safety MCU's firmware leaves it in the slot as ``mcu-firmware.signed`` (before the
marker); what came of flashing it is kept beside it (``mcu-firmware.failed.json``: not retried).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from resonera.common.errors import ResoneraError
from resonera.common.files import fsync_dir
from resonera.device.updater import launcher
from resonera.device.updater.launcher import (
    SLOTS,
    current_slot,
    point_current,
    read_state,
    roll_back,
    slot_path,
    write_atomic,
    write_state,
)

__all__ = ["AgentSlots", "SlotError", "Trial", "agent_dir"]

log = logging.getLogger(__name__)

MARKER: Final = ".resonera-slot.json"
#: The safety MCU's signed firmware a slot's bundle carried (``agent_update.extract_firmware``).
FIRMWARE_FILE: Final = "mcu-firmware.signed"
#: That firmware was refused or rolled back by the MCU: its SHA-256, version and the reason.
FIRMWARE_FAILED: Final = "mcu-firmware.failed.json"
LAUNCHER_NAME: Final = "launch.py"
#: The priority the slot is built at (venv, pip): below the agent's audio and safety threads.
PREPARE_NICE: Final = 10
#: How long making the venv, installing the wheels or asking the new agent its version may take.
STEP_TIMEOUT_S: Final = 900.0


class SlotError(ResoneraError):
    """A slot cannot be adopted, prepared or switched to; the message says why."""


def agent_dir(data_dir: Path) -> Path:
    return data_dir / "agent"


@dataclass(frozen=True)
class Trial:
    """What the old agent hands the new one through ``state.json`` (the launcher adds the rest)."""

    slot: str
    version: str
    from_version: str
    rollout: str
    sha256: str
    timeout_s: float
    update_keys: tuple[str, ...] | None = None


def _lowered() -> None:  # preexec_fn of the slot's build steps (in the child only)
    os.nice(PREPARE_NICE)


def _run(argv: Sequence[str | Path], what: str) -> str:
    try:
        done = subprocess.run(
            [str(a) for a in argv],
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
            check=False,
            preexec_fn=_lowered,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlotError(f"{what} failed: {exc}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise SlotError(f"{what} failed (code {done.returncode}): {' '.join(tail)[:300]}")
    return done.stdout


def agent_version_of(environment: Path) -> str:
    """What ``resonera-device --version`` of the environment says (``SlotError`` if it fails)."""
    out = _run([environment / "bin" / "resonera-device", "--version"], "resonera-device --version")
    words = out.split()
    if len(words) != 2 or words[0] != "resonera-device":
        raise SlotError(f"resonera-device --version said {out.strip()!r}")
    return words[1]


class AgentSlots:
    """``data_dir/agent``: see the module and ``launcher.py``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def of(cls, data_dir: Path) -> AgentSlots:
        return cls(agent_dir(data_dir))

    # --- reading ----------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """``state.json`` (empty when not set up); ``SlotError`` when it cannot be read."""
        try:
            return read_state(self.directory)
        except launcher.LaunchError as exc:
            raise SlotError(str(exc)) from None

    @property
    def set_up(self) -> bool:
        return self.state().get("good") is not None

    def path(self, slot: str) -> Path:
        return slot_path(self.directory, slot)

    def running_slot(self, prefix: Path | None = None) -> str | None:
        """The slot this process runs from (``sys.prefix`` by default), or None."""
        here = (prefix or Path(sys.prefix)).resolve()
        for slot in SLOTS:
            path = self.path(slot)
            if (path.exists() or path.is_symlink()) and path.resolve() == here:
                return slot
        return None

    def inactive_slot(self) -> str:
        """The slot an update is prepared in: the one that is neither good nor on trial."""
        state = self.state()
        used = {(state.get(k) or {}).get("slot") for k in ("good", "trial")}
        for slot in SLOTS:
            if slot not in used:
                return slot
        raise SlotError("both slots are in use (a trial is pending); nothing can be prepared")

    def prepared(self, slot: str, sha256: str) -> bool:
        """The slot was made completely from the bundle of ``sha256`` (its marker says so)."""
        marker = self.marker(slot)
        return marker is not None and marker.get("sha256") == sha256

    def update_keys(self) -> tuple[str, ...] | None:
        """The update keys a confirmed bundle pinned (None: the settings' ``update_public_keys``)."""
        keys = self.state().get("update_keys")
        return tuple(str(k) for k in keys) if keys else None

    # --- setting up -------------------------------------------------------------------------------

    def install_launcher(self) -> Path:
        """Copy the launcher (this package's ``launcher.py``) to ``launch.py``, atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / LAUNCHER_NAME
        write_atomic(target, Path(launcher.__file__).read_bytes(), mode=0o644)
        return target

    def adopt(self, environment: Path) -> str:
        """Make ``environment`` (a venv with the agent) slot ``a``, good, ``current``; install the
        launcher. Its version, as its ``resonera-device --version`` says. Adopting the same
        environment again changes nothing; another, once set up, is refused."""
        environment = environment.resolve()
        state = self.state()
        slot_a = self.path("a")
        if state.get("good") is not None:
            if slot_a.resolve() == environment and state["good"]["slot"] == "a":
                self.install_launcher()
                return str(state["good"]["version"])
            raise SlotError(
                f"{self.directory} is set up already (good slot {state['good']['slot']}); "
                "adopting is for a device without slots"
            )
        if not (environment / "bin" / "resonera-device").exists():
            raise SlotError(f"{environment} has no bin/resonera-device: not an agent's venv")
        version = agent_version_of(environment)
        (self.directory / "slots").mkdir(parents=True, exist_ok=True)
        if slot_a.is_symlink() or slot_a.exists():
            _remove(slot_a)
        os.symlink(environment, slot_a)
        fsync_dir(slot_a.parent)
        write_state(self.directory, {**state, "good": {"slot": "a", "version": version}})
        point_current(self.directory, "a")
        self.install_launcher()
        log.info("adopted %s as slot a (agent %s)", environment, version)
        return version

    def marker(self, slot: str) -> dict[str, Any] | None:
        """What the slot was prepared from (version, bundle SHA-256, update keys), or None."""
        try:
            marker = json.loads((self.path(slot) / MARKER).read_text())
        except (OSError, ValueError):
            return None
        return marker if isinstance(marker, dict) else None

    def prepare(
        self,
        version: str,
        sha256: str,
        wheels_into: Callable[[Path], Sequence[Path]],
        update_keys: Sequence[str] = (),
        *,
        firmware_into: Callable[[Path], object] | None = None,
        rollout: str | None = None,
    ) -> str:
        """The inactive slot made from the bundle's wheels (``wheels_into(folder)`` writes them
        into that new folder and returns their paths: ``agent_update.extract_wheels``); the slot's
        name. One already prepared from the same bundle is kept as it is. ``update_keys``: the
        manifest's, kept with the slot for the switch. ``firmware_into(file)`` writes the MCU's
        firmware the bundle carries, if any (``agent_update.extract_firmware``); ``rollout`` is
        kept in the marker, for what the firmware's reports name."""
        slot = self.inactive_slot()
        if self.prepared(slot, sha256):
            return slot
        path = self.path(slot)
        _remove(path)  # what a crash half made, or the fallback of two updates ago
        work = self.directory / "work"
        _remove(work)
        work.mkdir(parents=True)
        try:
            wheels = list(wheels_into(work / "wheels"))
            if not wheels:
                raise SlotError("the bundle has no wheels to install")
            # the running agent's interpreter: venv finds the base Python behind it
            _run([sys.executable, "-m", "venv", path], "making the slot's venv")
            _run(
                [
                    path / "bin" / "python", "-m", "pip", "install", "--quiet",
                    "--no-index", "--no-deps", "--disable-pip-version-check", *wheels,
                ],
                "installing the bundle's wheels",
            )  # fmt: skip
            said = agent_version_of(path)
            if said != version:
                raise SlotError(f"the installed agent says version {said}, not {version}")
            if firmware_into is not None:
                firmware_into(path / FIRMWARE_FILE)
            marker: dict[str, Any] = {
                "version": version,
                "sha256": sha256,
                "update_keys": list(update_keys),
            }
            if rollout is not None:
                marker["rollout"] = rollout
            write_atomic(path / MARKER, json.dumps(marker).encode())
        except BaseException:
            _remove(path)
            raise
        finally:
            _remove(work)
        log.info("slot %s prepared with agent %s", slot, version)
        return slot

    def drop_prepared(self, sha256: str) -> None:
        """A target withdrawn before the switch: the inactive slot's marker goes if it was made
        from ``sha256`` (so it is made again if asked again; its files stay until then)."""
        try:
            slot = self.inactive_slot()
        except SlotError:
            return
        if self.prepared(slot, sha256):
            (self.path(slot) / MARKER).unlink(missing_ok=True)
            fsync_dir(self.path(slot))

    # --- switching --------------------------------------------------------------------------------

    def switch_to_trial(self, trial: Trial) -> None:
        """The trial written, then ``current`` moved to it: the next launch runs it, watched.
        Only a prepared slot that is not the good one is switched to."""
        state = self.state()
        good = state.get("good")
        if good is None:
            raise SlotError("no good slot is recorded: adopt the running agent first")
        if trial.slot == good["slot"]:
            raise SlotError(f"slot {trial.slot} is the good one; it cannot go on trial")
        if not self.prepared(trial.slot, trial.sha256):
            raise SlotError(f"slot {trial.slot} is not prepared from {trial.sha256[:12]}…")
        state["trial"] = {
            "slot": trial.slot,
            "version": trial.version,
            "from_version": trial.from_version,
            "rollout": trial.rollout,
            "sha256": trial.sha256,
            "timeout_s": trial.timeout_s,
            "update_keys": list(trial.update_keys) if trial.update_keys is not None else None,
            "launches": 0,
            "launched_at": None,
        }
        write_state(self.directory, state)
        point_current(self.directory, trial.slot)

    def trial_of(self, slot: str | None) -> dict[str, Any] | None:
        """The pending trial when ``slot`` is the one on trial (the agent checks its health)."""
        trial = self.state().get("trial")
        return trial if trial and slot is not None and trial.get("slot") == slot else None

    def confirm(self, slot: str) -> None:
        """The trial of ``slot`` passed its health check: it becomes good (the old good slot stays
        as the fallback until the next update prepares over it); its update keys are pinned."""
        state = self.state()
        trial = state.get("trial")
        if not trial or trial.get("slot") != slot:
            raise SlotError(f"slot {slot} is not on trial")
        state["good"] = {"slot": slot, "version": trial["version"]}
        state["trial"] = None
        if trial.get("update_keys"):
            state["update_keys"] = list(trial["update_keys"])
        write_state(self.directory, state)
        point_current(self.directory, slot)

    def give_up(self, slot: str, reason: str) -> None:
        """The trial of ``slot`` failed its health check: recorded, ``current`` back to good."""
        state = self.state()
        trial = state.get("trial")
        if trial and trial.get("slot") == slot:
            roll_back(self.directory, state, reason)

    def unreported_failure(self) -> dict[str, Any] | None:
        failure = self.state().get("failure")
        return failure if failure and not failure.get("reported") else None

    def mark_reported(self) -> None:
        state = self.state()
        if state.get("failure"):
            state["failure"] = {**state["failure"], "reported": True}
            write_state(self.directory, state)

    def current(self) -> str | None:
        return current_slot(self.directory)

    # --- the safety MCU's firmware a slot carries ---------------------------------------------

    def firmware(self, slot: str) -> Path | None:
        """The MCU's signed firmware the slot's bundle carried (None: none, or not prepared)."""
        path = self.path(slot) / FIRMWARE_FILE
        return path if self.marker(slot) is not None and path.is_file() else None

    def firmware_failure(self, slot: str) -> dict[str, Any] | None:
        """What the MCU said of the slot's firmware when it refused or rolled it back."""
        try:
            failure = json.loads((self.path(slot) / FIRMWARE_FAILED).read_text())
        except (OSError, ValueError):
            return None
        return failure if isinstance(failure, dict) else None

    def record_firmware_failure(
        self, slot: str, sha256: str, version: str, state: str, reason: str
    ) -> None:
        """The slot's firmware file (``sha256``) is not flashed again: the MCU refused it
        (``state`` failed) or rolled it back (a new bundle makes the slot again, without this
        record)."""
        failure = {"sha256": sha256, "version": version, "state": state, "reason": reason}
        write_atomic(self.path(slot) / FIRMWARE_FAILED, json.dumps(failure).encode())


def _remove(path: Path) -> None:
    """A slot or work folder gone: a symlink (an adopted environment) is unlinked, never followed."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        # renamed first, so a crash mid-way never leaves a half-removed folder under the slot's name
        doomed = Path(tempfile.mkdtemp(prefix=f".{path.name}.gone.", dir=path.parent))
        os.replace(path, doomed / path.name)
        shutil.rmtree(doomed)
    for leftover in path.parent.glob(f".{path.name}.gone.*"):
        shutil.rmtree(leftover, ignore_errors=True)
