"""Test helpers shared by every suite: real services on loopback, started and stopped by the tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from resonera.provisioning.broker import BrokerConfig

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str) -> str:
    """Path of executable ``name``. Missing: skip locally, fail in CI (CI never skips)."""
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    if path is None:
        message = f"{name} is not installed (run `make test`, which installs test dependencies)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true; fail the test with ``what`` when ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


@dataclass
class Mosquitto:
    host: str
    port: int
    config: BrokerConfig
    config_path: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def start(self) -> None:
        """(Re)start on the same port and persistence, as after a broker restart."""
        self.process = _spawn_mosquitto(self.config_path, self.port)


def _spawn_mosquitto(config_path: Path, port: int) -> subprocess.Popen[bytes]:
    binary = require_tool("mosquitto")
    process = subprocess.Popen([binary, "-c", str(config_path)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            pytest.fail(f"mosquitto exited at start: {err.strip()}")
        if port_open(port):
            return process
        time.sleep(0.02)
    process.kill()
    pytest.fail("mosquitto did not open its port within 10 s")


@contextmanager
def run_mosquitto(workdir: Path, *, persistent: bool = False) -> Iterator[Mosquitto]:
    """A mosquitto on a random loopback port with the configuration we ship."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = BrokerConfig(port=port, persistence_dir=workdir if persistent else None)
    config_path = config.write(workdir / "mosquitto.conf")
    broker = Mosquitto("127.0.0.1", port, config, config_path, _spawn_mosquitto(config_path, port))
    try:
        yield broker
    finally:
        broker.stop()
