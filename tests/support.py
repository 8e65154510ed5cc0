"""Test helpers shared by every suite: real services on loopback, started and stopped by the tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from resonera.provisioning.broker import BrokerConfig

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
#: What moves a process's wall clock (scripts/faketime-run sets them for a run on another day): a
#: child started with a bare environment keeps them, so it reads the same clock as its test.
CLOCK_VARIABLES = ("LD_PRELOAD", "FAKETIME", "FAKETIME_DONT_FAKE_MONOTONIC")


def real_clock_env() -> dict[str, str]:
    """This process's environment without the clock's variables: for the sound server and its
    recorder, which date nothing, and whose timers libfaketime breaks (it fakes monotonic timerfds
    even when told not to fake the monotonic clock: audio stalls)."""
    return {k: v for k, v in os.environ.items() if k not in CLOCK_VARIABLES}


def bare_env(**values: str) -> dict[str, str]:
    """An environment with nothing of this process's but the system PATH and the clock's variables,
    plus ``values``: a child that must not see the test's settings still lives on the test's day."""
    clock = {name: os.environ[name] for name in CLOCK_VARIABLES if name in os.environ}
    return {"PATH": "/usr/bin:/bin", **clock, **values}


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
    config: BrokerConfig | None
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

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads its configuration, ACL and CRL without dropping clients."""
        self.process.send_signal(signal.SIGHUP)

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
def run_mosquitto_config(config_path: Path, port: int) -> Iterator[Mosquitto]:
    """mosquitto with a configuration file written elsewhere (e.g. by ``provision_broker``)."""
    broker = Mosquitto("127.0.0.1", port, None, config_path, _spawn_mosquitto(config_path, port))
    try:
        yield broker
    finally:
        broker.stop()


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


@dataclass
class Postgres:
    """A throwaway PostgreSQL server on a loopback port (trust auth, user ``postgres``)."""

    host: str
    port: int
    datadir: Path
    pg_ctl: str
    as_postgres: list[str]
    #: The server options (``pg_ctl -o``) and its log: ``start`` brings it back as it was.
    options: str = ""
    log_file: Path | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{database}"

    def execute(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE)."""
        import psycopg

        with psycopg.connect(
            host=self.host, port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql.encode())

    def stop(self) -> None:
        subprocess.run(
            [*self.as_postgres, self.pg_ctl, "stop", "-D", str(self.datadir), "-m", "fast", "-w"],
            check=False,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        """Start the stopped server again on the same port and data. Its output goes to the log
        file and ours to /dev/null: ``pg_ctl`` leaves the postmaster holding any pipe it was
        given, and reading that pipe would never end."""
        log_file = self.log_file or self.datadir.parent / "postgres.log"
        subprocess.run(
            [
                *self.as_postgres,
                self.pg_ctl,
                "start",
                "-D",
                str(self.datadir),
                "-w",
                "-t",
                "60",
                "-o",
                self.options,
                "-l",
                str(log_file),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=90,
        )

    def restart(self) -> None:
        """Fast shutdown (every connection cut) and start again, as an operator's restart."""
        self.stop()
        self.start()


def _postgres_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    path = str(found[-1]) if found else shutil.which(name)
    if path is None:
        message = f"PostgreSQL ({name}) is not installed (run `make test`, which installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@contextmanager
def run_postgres() -> Iterator[Postgres]:
    """initdb + pg_ctl start in a temporary folder on a free port; as root, as user ``postgres``
    (PostgreSQL refuses to run as root). Stopped and removed at the end."""
    import tempfile

    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    as_postgres: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="resonera-pg-"))
    if os.geteuid() == 0:
        as_postgres = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
    datadir = folder / "data"
    port = free_port()
    try:
        result = subprocess.run(
            [
                *as_postgres,
                initdb,
                "-D",
                str(datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"initdb failed: {result.stderr.strip()}")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        options += " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        result = subprocess.run(
            [
                *as_postgres,
                pg_ctl,
                "start",
                "-D",
                str(datadir),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "-l",
                str(folder / "postgres.log"),
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        if result.returncode != 0:
            log = (
                (folder / "postgres.log").read_text(errors="replace")
                if (folder / "postgres.log").exists()
                else ""
            )
            pytest.fail(f"PostgreSQL did not start: {result.stderr.strip()} {log[-500:]}")
        server = Postgres(
            "127.0.0.1", port, datadir, pg_ctl, as_postgres, options, folder / "postgres.log"
        )
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def bench_postgres(stack: ExitStack, database: str, label: str = "  PostgreSQL") -> str | None:
    """For a benchmark: the URL of a new ``database`` on a throwaway server that ``stack`` stops;
    None, said after ``label`` on stdout, where PostgreSQL is not installed."""
    postgres = bench_postgres_server(stack, label)
    if postgres is None:
        return None
    postgres.execute(f"CREATE DATABASE {database}")
    return postgres.url(database)


def bench_postgres_server(stack: ExitStack, label: str = "  PostgreSQL") -> Postgres | None:
    """For a benchmark that restarts it: a throwaway server that ``stack`` stops; None, said
    after ``label`` on stdout, where PostgreSQL is not installed."""
    try:
        return stack.enter_context(run_postgres())
    except BaseException as exc:  # pytest's skip/fail outcomes when PostgreSQL is missing
        print(f"{label} skipped: {exc}")
        return None
