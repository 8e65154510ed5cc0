"""``resonera demo``: the whole path on one machine, on embedded defaults, all on 127.0.0.1.

A broker (mosquitto if installed, else amqtt in-process), the server on SQLite, the safety MCU
simulator on a pty, and a device agent that plays a short built-in program with the simulator's consent,
records the session and syncs it. Then it asks the server's API what it received and prints it.
Each part runs as its own process, exactly as it would be deployed, started by its own console script;
their logs go to files in the workdir (with ``-v``, which the demo passes on, libraries' too), so
the terminal shows only the demo's own lines. The API's address and a login are printed only with
``keep_running``: without it the stack is gone by then.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from resonera.common.errors import ResoneraError
from resonera.device.audio.calibration import packaged_calibration
from resonera.stack.broker import RunningBroker, start_broker
from resonera.stack.processes import console_script, free_port, stop_process

DEMO_DEVICE_ID = "demo-device-1"
DEMO_CLINICIAN = "clinician@demo.resonera"
#: The demo's last line unless --keep-running: the stack stops with the demo.
KEEP_RUNNING_HINT = (
    "The stack stops now; to keep it up and try its API: make demo DEMO_ARGS=--keep-running"
)


class DemoError(ResoneraError):
    """A part of the demo stack failed to start or answer."""


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path
    program: str = "demo-alpha"
    broker: str = "auto"
    keep_running: bool = False
    sink: str = "auto"
    verbose: bool = False  # -v for every child: debug logs, libraries' included


def _write_toml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(data))
    return path


class _Processes:
    """Child processes, stopped in reverse order; their output goes to log files in the workdir."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.children.append((name, process))
        return process

    def failed(self, name: str, process: subprocess.Popen[bytes]) -> DemoError:
        lines = (self.workdir / f"{name}.log").read_text(errors="replace").strip().splitlines()
        detail = lines[-1] if lines else f"exit code {process.returncode}"
        return DemoError(f"{name} stopped: {detail} (log: {self.workdir / (name + '.log')})")

    def wait_ready(
        self,
        name: str,
        process: subprocess.Popen[bytes],
        *,
        what: str,
        ready: Callable[[], bool],
        timeout_s: float = 30.0,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise self.failed(name, process)
            if ready():
                return
            time.sleep(0.05)
        raise DemoError(f"{what} did not become ready within {timeout_s:.0f} s")

    def stop_all(self) -> None:
        for _name, process in reversed(self.children):
            stop_process(process)


def _script(name: str) -> str:
    try:
        return console_script(name, "run `make demo`: it installs the project")
    except ResoneraError as exc:
        raise DemoError(str(exc)) from None


def _get_json(url: str, token: str | None = None) -> Any:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def _login(api: str, email: str, password: str) -> str:
    """An access token for the clinician (``POST /api/v1/auth/login``)."""
    body = json.dumps({"email": email, "password": password}).encode()
    request = urllib.request.Request(
        f"{api}/api/v1/auth/login", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.load(response)["access_token"])


def _server_command(
    args: list[str], env: dict[str, str] | None = None, *, verbose: bool = False
) -> str:
    """Run a ``resonera-server`` command to completion; its stdout, or ``DemoError``."""
    done = subprocess.run(
        [_script("resonera-server"), args[0], *(["-v"] if verbose else []), *args[1:]],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DemoError(f"resonera-server {args[0]} failed: {detail}")
    return done.stdout


def _healthy(url: str) -> bool:
    try:
        return bool(_get_json(url).get("status") == "ok")
    except (urllib.error.URLError, OSError, ValueError):
        return False


def run_demo(options: DemoOptions, out: Any = sys.stdout) -> list[dict[str, Any]]:
    """Run the demo; return the sessions the server's API lists at the end."""
    workdir = options.workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    verbose = ["-v"] if options.verbose else []
    password = secrets.token_urlsafe(18)
    http_port = free_port()
    api = f"http://127.0.0.1:{http_port}"
    with ExitStack() as stack:
        broker: RunningBroker = start_broker(free_port(), workdir / "broker", options.broker)  # type: ignore[arg-type]
        stack.callback(broker.stop)
        say(f"[broker]   {broker.name} on 127.0.0.1:{broker.port} (MQTT {broker.protocol})")
        mqtt = {"host": broker.host, "port": broker.port, "protocol": broker.protocol}

        procs = _Processes(workdir)
        stack.callback(procs.stop_all)

        # Patient data is encrypted at rest: the demo's key lives in its workdir (never the DB).
        key_file = workdir / "patient-keys.txt"
        key_file.write_text(
            _server_command(["new-key", "--key-id", "demo"], verbose=options.verbose)
        )
        key_file.chmod(0o600)
        server_config = _write_toml(
            workdir / "server.toml",
            {
                "database_url": f"sqlite:///{workdir / 'server.db'}",
                "http_host": "127.0.0.1",
                "http_port": http_port,
                "demo": True,
                "patient_key_file": str(key_file),
                "shared_subscription": broker.shared_subscriptions,
                "mqtt": mqtt,
            },
        )
        config_args = ["--config", str(server_config)]
        _server_command(["migrate", *config_args], verbose=options.verbose)
        # A clinician, their patient, and the demo device registered and assigned to the patient.
        _server_command(
            ["demo-setup", *config_args, "--device", DEMO_DEVICE_ID, "--email", DEMO_CLINICIAN],
            env={"RESONERA_PASSWORD": password},
            verbose=options.verbose,
        )
        server = procs.start(
            "server", [_script("resonera-server"), "run", *verbose, "--config", str(server_config)]
        )
        procs.wait_ready(
            "server", server, what="the server", ready=lambda: _healthy(f"{api}/healthz")
        )
        say(f"[server]   API on {api}/api/v1, database {workdir / 'server.db'}")

        link_file = workdir / "hwsim.link"
        hwsim = procs.start(
            "hwsim", [_script("resonera-hwsim"), *verbose, "--link-file", str(link_file)]
        )
        procs.wait_ready("hwsim", hwsim, what="the hardware simulator", ready=link_file.exists)
        port_path = link_file.read_text().strip()
        say(f"[hardware] safety MCU simulator on {port_path}")

        wav_path = workdir / "session.wav"
        device_config = _write_toml(
            workdir / "device.toml",
            {
                "device_id": DEMO_DEVICE_ID,
                "data_dir": str(workdir / "device"),
                "serial_url": port_path,
                "sink": options.sink,
                "wav_path": str(wav_path),
                "calibration_file": str(packaged_calibration()),
                "mqtt": mqtt,
            },
        )
        say(f"[device]   {DEMO_DEVICE_ID} plays {options.program!r} with the MCU's consent:")
        played = subprocess.run(
            [
                _script("resonera-device"),
                *verbose,
                "play",
                "--config",
                str(device_config),
                "--program",
                options.program,
                "--sync-timeout",
                "30",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        device_log = workdir / "device.log"
        device_log.write_text(played.stderr)
        for line in played.stdout.strip().splitlines():
            say(f"           {line}")
        if played.returncode != 0:
            detail = (played.stderr.strip().splitlines() or ["no output"])[-1]
            raise DemoError(
                f"the device agent failed (exit {played.returncode}): {detail} (log: {device_log})"
            )

        token = _login(api, DEMO_CLINICIAN, password)
        sessions: list[dict[str, Any]] = _get_json(f"{api}/api/v1/sessions", token)
        say(f"\nThe server holds {len(sessions)} session(s):")
        for s in sessions:
            say(
                f"  {s['device_id']}  {s['program_name']}  {s['played_s']:.1f} s  {s['outcome']}"
                f"  peak {s['peak_dbfs']:.1f} dBFS  (message {s['message_id']})"
            )
        if not options.keep_running:
            say(f"\n{KEEP_RUNNING_HINT}")
            return sessions
        say(f"\nAPI: {api}/api/v1/sessions  (OpenAPI: {api}/docs)")
        say(f"     clinician {DEMO_CLINICIAN}, password {password}")
        say(
            f"     TOKEN=$(curl -s -H 'Content-Type: application/json' -d "
            f'\'{{"email": "{DEMO_CLINICIAN}", "password": "{password}"}}\' '
            f"{api}/api/v1/auth/login | python3 -c 'import json,sys; "
            f'print(json.load(sys.stdin)["access_token"])\')'
        )
        say(f'     curl -H "Authorization: Bearer $TOKEN" {api}/api/v1/sessions')
        say("The stack stays up; press Ctrl-C to stop it.")
        try:
            while all(p.poll() is None for _n, p in procs.children):
                time.sleep(0.5)
        except KeyboardInterrupt:
            say("stopping")
        return sessions
