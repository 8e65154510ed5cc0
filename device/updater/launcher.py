"""What systemd starts: the agent of the slot ``state.json`` names, or back to the last good one.

Standard library only: this file is copied to ``data_dir/agent/launch.py`` (``resonera-device
slots install-launcher``, or ``slots adopt``) and run by the system's Python, so no bundle ever
changes it and a broken slot cannot break it. ``slots.py`` builds on the same functions, so the
layout and the state are read and written in one place::

    data_dir/agent/
      slots/a/  slots/b/   two virtual environments (``a`` may be a symlink to an adopted one)
      current -> slots/a   follows state.json: the launcher repairs it at every start
      state.json           the truth: the good slot, the slot on trial, the last failure
      launch.py            this file

``state.json`` (format 1; every write is temp + fsync + rename + fsync of the folder)::

    {"format": 1,
     "good": {"slot": "a", "version": "0.1.0"},
     "trial": {"slot": "b", "version": "0.2.0", "from_version": "0.1.0", "rollout": "r1",
               "sha256": "...", "timeout_s": 120, "update_keys": [...] | null,
               "launches": 0, "launched_at": null},
     "failure": {"version", "from_version", "rollout", "sha256", "reason", "at", "reported"},
     "update_keys": null | ["<base64 raw Ed25519>", ...]}

Start (``main``): with a trial pending and never launched, ``launches`` becomes 1 (durably) and the
trial's agent runs as this process's child, watched: if it exits before it confirmed its health
(the agent turns its trial into ``good`` itself), or has not confirmed within its ``timeout_s`` plus
``GRACE_S``, the failure is recorded, ``current`` goes back to the good slot and the launcher exits
75 (EX_TEMPFAIL), which the unit restarts. A trial already launched once (the device lost power or
the launcher was killed during it) is not tried again: it is rolled back at once. Otherwise the
launcher execs ``current/bin/resonera-device run ARGS...``. A kill at any moment leaves a state.json
that is either the old or the new one, and ``current`` is made to agree with it at the next start.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FORMAT = 1
SLOTS = ("a", "b")
STATE_NAME = "state.json"
#: The unit restarts on this code (``RestartForceExitStatus=75``): "try again" (sysexits.h).
EX_TEMPFAIL = 75
#: How long past its own health timeout a trial agent may run before the launcher stops it (the
#: agent's own check says why more precisely; this is the backstop for one that hangs).
GRACE_S = 30.0
#: After SIGTERM, how long a trial agent that overran has to shut down before SIGKILL.
STOP_WAIT_S = 30.0
POLL_S = 0.2


class LaunchError(Exception):
    """Nothing can be started; the message says what is wrong and what to do."""


def empty_state() -> dict[str, Any]:
    return {"format": FORMAT, "good": None, "trial": None, "failure": None, "update_keys": None}


def state_path(agent: Path) -> Path:
    return agent / STATE_NAME


def slot_path(agent: Path, slot: str) -> Path:
    if slot not in SLOTS:
        raise LaunchError(f"slot {slot!r} is not one of {', '.join(SLOTS)}")
    return agent / "slots" / slot


def read_state(agent: Path) -> dict[str, Any]:
    """``state.json`` (an empty state when there is none); ``LaunchError`` when it is unreadable."""
    path = state_path(agent)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return empty_state()
    except OSError as exc:
        raise LaunchError(f"cannot read {path}: {exc}") from None
    try:
        state = json.loads(text)
    except ValueError as exc:
        raise LaunchError(f"{path} is not JSON ({exc}); it is only ever replaced whole") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise LaunchError(f"{path} is not a slot state of format {FORMAT}")
    return {**empty_state(), **state}


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """``path`` holds ``data`` or what it held before, whatever moment a crash comes at."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(name, mode)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_state(agent: Path, state: dict[str, Any]) -> None:
    text = json.dumps(state, indent=2, sort_keys=True) + "\n"
    write_atomic(state_path(agent), text.encode())


def current_slot(agent: Path) -> str | None:
    """The slot ``current`` points at (None: no link, or one to somewhere else)."""
    try:
        target = os.readlink(agent / "current")
    except OSError:
        return None
    name = Path(target).name
    return name if name in SLOTS and Path(target).parent.name == "slots" else None


def point_current(agent: Path, slot: str) -> None:
    """``current`` -> ``slots/<slot>`` atomically: a new link renamed over the old one."""
    slot_path(agent, slot)  # a known slot name
    if current_slot(agent) == slot:
        return
    new = agent / "current.new"
    new.unlink(missing_ok=True)
    os.symlink(f"slots/{slot}", new)
    os.replace(new, agent / "current")
    fsync_dir(agent)


def wanted_slot(state: dict[str, Any]) -> str | None:
    """The slot ``current`` must point at: the trial's while one is pending, else the good one."""
    chosen = state.get("trial") or state.get("good")
    return str(chosen["slot"]) if chosen else None


def roll_back(agent: Path, state: dict[str, Any], reason: str) -> dict[str, Any]:
    """Give up the trial: its failure recorded (to be reported by the good agent), ``current``
    back to the good slot. Returns the state written."""
    trial = state.get("trial")
    if not trial:
        return state
    state = dict(state)
    state["trial"] = None
    state["failure"] = {
        "version": trial.get("version"),
        "from_version": trial.get("from_version"),
        "rollout": trial.get("rollout"),
        "sha256": trial.get("sha256"),
        "reason": reason[:500],
        "at": time.time(),
        "reported": False,
    }
    write_state(agent, state)
    good = state.get("good")
    if good:
        point_current(agent, str(good["slot"]))
    return state


def _agent_command(agent: Path, slot: str, args: list[str]) -> list[str]:
    # the resolved folder: a later switch of ``current`` does not change what this process runs
    program = slot_path(agent, slot).resolve() / "bin" / "resonera-device"
    if not program.exists():
        raise LaunchError(f"slot {slot} has no agent ({program} is missing)")
    return [str(program), "run", *args]


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _still_on_trial(agent: Path, slot: str) -> bool:
    trial = read_state(agent).get("trial")
    return isinstance(trial, dict) and trial.get("slot") == slot


def _watch_trial(agent: Path, trial: dict[str, Any], command: list[str]) -> int:
    """Run the trial's agent as a child, signals passed on to it, until it exits; roll back if it
    ends (or overruns) before confirming its health. The exit code for systemd."""
    slot = str(trial["slot"])
    timeout_s = float(trial.get("timeout_s") or 120.0)
    pid = os.fork()
    if pid == 0:  # the child: the agent
        try:
            os.execv(command[0], command)
        finally:
            os._exit(127)

    def pass_on(signum: int, _frame: object) -> None:
        os.kill(pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, pass_on)
    deadline = time.monotonic() + timeout_s + GRACE_S
    overran = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if not overran and time.monotonic() > deadline and _still_on_trial(agent, slot):
            overran = True
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_WAIT_S
        elif overran and time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
        time.sleep(POLL_S)
    code = _exit_code(status)
    state = read_state(agent)
    still = state.get("trial")
    if not still or still.get("slot") != slot:
        return code  # confirmed (good now) or given up by the agent itself, which said why
    if overran:
        reason = f"did not confirm its health within {timeout_s:.0f} s"
    else:
        reason = f"exited before confirming its health: code {code}"
    roll_back(agent, state, f"{trial.get('version')}: {reason}")
    return EX_TEMPFAIL


def launch(agent: Path, args: list[str]) -> int:
    """Start the agent the state names (see the module); returns only for a watched trial."""
    state = read_state(agent)
    trial = state.get("trial")
    if trial and int(trial.get("launches") or 0) >= 1:
        state = roll_back(
            agent,
            state,
            f"{trial.get('version')}: stopped before confirming its health "
            "(the device or the agent was stopped during its trial)",
        )
        trial = None
    slot = wanted_slot(state)
    if slot is None:
        slot = current_slot(agent)
        if slot is None:
            raise LaunchError(
                f"no agent is installed in {agent} (no state.json and no current link): "
                "run resonera-device slots adopt PATH"
            )
    else:
        point_current(agent, slot)
    command = _agent_command(agent, slot, args)
    if trial:
        trial = {**trial, "launches": 1, "launched_at": time.time()}
        write_state(agent, {**state, "trial": trial})
        return _watch_trial(agent, trial, command)
    os.execv(command[0], command)
    raise AssertionError("unreachable")  # pragma: no cover


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    agent = Path(__file__).resolve().parent
    try:
        return launch(agent, args)
    except LaunchError as exc:
        print(f"resonera launcher: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
