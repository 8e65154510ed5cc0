"""What the local stacks (the demo, the fleet simulator, the embedded broker) need to run their
child processes: a free loopback port, waiting for one to answer, this installation's console
scripts, and stopping a child (or its process group) politely before firmly."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from resonera.common.errors import ConfigError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float, alive: Callable[[], bool] | None = None) -> bool:
    """True once 127.0.0.1:``port`` accepts a connection; False after ``timeout_s`` or as soon as
    ``alive`` (the process that should listen) says it is gone."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            return False
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def console_script(name: str, hint: str = "install the resonera package") -> str:
    """A console script of this installation (the same venv as the running interpreter)."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found is None:
        raise ConfigError(f"{name} is not installed ({hint})")
    return found


def stop_process(
    process: subprocess.Popen[bytes], timeout_s: float = 10.0, *, group: bool = False
) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``timeout_s``; reaped either way.

    ``group``: the child leads a process group of its own (started with ``process_group=0``),
    and the signals go to the whole group, so whatever it started goes too. (The group is the
    child's as long as the child is not reaped, which is only done here, after the signals.)"""
    if process.poll() is not None:
        return
    _signal(process, signal.SIGTERM, group)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _signal(process, signal.SIGKILL, group)
        process.wait()


def _signal(process: subprocess.Popen[bytes], signum: int, group: bool) -> None:
    if group:
        try:
            os.killpg(process.pid, signum)
            return
        except ProcessLookupError:  # it left its group: signal it alone
            pass
    process.send_signal(signum)
