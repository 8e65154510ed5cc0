"""``resonera demo``: the whole path on one machine, on embedded defaults, all on 127.0.0.1.

A broker (mosquitto if installed, else amqtt in-process), the server on SQLite, the safety MCU
simulator on a pty, and a device agent; then the prescription loop as a clinician and a wearer live
it: a program is added to the server's library through the API (``demo-program.toml``, not one of
the device's presets) and prescribed to the demo patient, the device agent (``resonera-device run``)
takes the signed desired state, checks the program and reports it applied, plays it on request with
the simulator's consent, records the session and syncs it. Then it asks the server's API what it
received and prints each session with its program's name and library version.
Each part runs as its own process, exactly as it would be deployed, started by its own console script;
their logs go to files in the workdir (with ``-v``, which the demo passes on, libraries' too), so
the terminal shows only the demo's own lines. The API's address and a login are printed only with
``keep_running``: without it the stack is gone by then.

Every child is stopped on every way out (the end, an error, Ctrl-C, SIGTERM, SIGHUP): in reverse
order of starting, each with SIGTERM to its process group, then SIGKILL after 10 s. The children
run in process groups of their own, so a terminal's Ctrl-C or hangup reaches the demo alone, which
then stops the device before the server and the server before the broker (``_StopSignals``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from types import FrameType
from typing import Any

import tomli_w

from resonera.common.errors import ResoneraError
from resonera.engine.audio.calibration import packaged_calibration
from resonera.stack.broker import RunningBroker, start_broker
from resonera.stack.processes import console_script, free_port, stop_process

DEMO_DEVICE_ID = "demo-device-1"
DEMO_CLINICIAN = "clinician@demo.resonera"
#: The program the demo adds to the library and prescribes (package data of resonera.stack).
DEMO_PROGRAM_FILE = "demo-program.toml"
#: The demo's last line unless --keep-running: the stack stops with the demo.
KEEP_RUNNING_HINT = (
    "The stack stops now; to keep it up and try its API: make demo DEMO_ARGS=--keep-running"
)


class DemoError(ResoneraError):
    """A part of the demo stack failed to start or answer."""


class DemoStopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP: the demo stops as on Ctrl-C (a ``KeyboardInterrupt``, so whatever
    handles that handles this too), naming the signal for the exit code (128 + its number)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: What stops the demo: Ctrl-C, ``kill``/``systemctl stop``/``docker stop``, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _StopSignals:
    """SIGINT, SIGTERM and SIGHUP all stop the demo the way Ctrl-C does: the first one raises in
    the main thread (``KeyboardInterrupt``, or ``DemoStopped`` for the other two), which unwinds
    the demo's ``ExitStack`` and so stops its children. One that arrives while a child is being
    started (``held``) is raised as soon as the child is tracked, so no child is started and
    forgotten; once stopping has begun (``stop``) the next ones are ignored, so nothing cuts the
    stopping short. Installed only in the main thread (the only one that receives them)."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._held = 0
        self._pending: int | None = None
        self.stopping = False

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *_exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping:
            return
        if self._held:
            self._pending = self._pending or signum
            return
        self._raise(signum)

    def _raise(self, signum: int) -> None:
        self.stopping = True
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise DemoStopped(signum)

    @contextmanager
    def held(self) -> Iterator[None]:
        """A signal waits until the block is over (a child started and tracked)."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            if not self._held and self._pending is not None and not self.stopping:
                self._raise(self._pending)

    def stop(self) -> None:
        """The stack is being stopped: from now on a signal changes nothing."""
        self.stopping = True


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path
    #: What the device is asked to play (a prescribed program's name or library id); None: the
    #: program the demo prescribes, the device's first.
    program: str | None = None
    broker: str = "auto"
    keep_running: bool = False
    sink: str = "auto"
    verbose: bool = False  # -v for every child: debug logs, libraries' included


def _write_toml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(data))
    return path


class _Processes:
    """Child processes, each in a process group of its own, tracked from the moment they start
    and stopped in reverse order; the output of the long-running ones goes to log files in the
    workdir."""

    def __init__(self, workdir: Path, signals: _StopSignals) -> None:
        self.workdir = workdir
        self.signals = signals
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def _popen(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        with self.signals.held():
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, process_group=0, **kwargs)
            self.children.append((name, process))
        return process

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start a part of the stack that keeps running; its output to ``name.log``."""
        with (self.workdir / f"{name}.log").open("wb") as log:
            return self._popen(name, argv, stdout=log, stderr=subprocess.STDOUT)

    def run(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        stderr_log: Path | None = None,
    ) -> tuple[int, str, str]:
        """Run a command to its end: exit code, stdout, stderr (or "" when it goes to
        ``stderr_log``). Stopped like the others if the demo is stopped meanwhile."""
        with contextlib.ExitStack() as files:
            err: Any = subprocess.PIPE
            if stderr_log is not None:
                err = files.enter_context(stderr_log.open("wb"))
            process = self._popen(name, argv, stdout=subprocess.PIPE, stderr=err, env=env)
            out, errors = process.communicate()
        self.children.remove((name, process))
        return (
            process.returncode,
            out.decode(errors="replace"),
            errors.decode(errors="replace") if errors is not None else "",
        )

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
            stop_process(process, group=True)


def _script(name: str) -> str:
    try:
        return console_script(name, "run `make demo`: it installs the project")
    except ResoneraError as exc:
        raise DemoError(str(exc)) from None


def _get_json(url: str, token: str | None = None) -> Any:
    return _call_json("GET", url, token)[0]


def _call_json(
    method: str,
    url: str,
    token: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[Any, str]:
    """The answer's JSON and its ETag; ``DemoError`` with the API's own words on a 4xx/5xx."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response), response.headers.get("ETag", "")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise DemoError(f"{method} {url} answered {exc.code}: {detail}") from None


def _login(api: str, email: str, password: str) -> str:
    """An access token for the clinician (``POST /api/v1/auth/login``)."""
    body = json.dumps({"email": email, "password": password}).encode()
    request = urllib.request.Request(
        f"{api}/api/v1/auth/login", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.load(response)["access_token"])


def _server_command(
    procs: _Processes,
    args: list[str],
    env: dict[str, str] | None = None,
    *,
    verbose: bool = False,
) -> str:
    """Run a ``resonera-server`` command to completion; its stdout, or ``DemoError``."""
    code, stdout, stderr = procs.run(
        f"resonera-server {args[0]}",
        [_script("resonera-server"), args[0], *(["-v"] if verbose else []), *args[1:]],
        env={**os.environ, **(env or {})},
    )
    if code != 0:
        detail = (stderr.strip().splitlines() or ["no output"])[-1]
        raise DemoError(f"resonera-server {args[0]} failed: {detail}")
    return stdout


def _add_and_prescribe(api: str, token: str, say: Callable[[str], None]) -> dict[str, Any]:
    """Add the demo's program to the library and prescribe it to the demo patient, as a clinician
    does through the API; the library program."""
    document = files("resonera.stack").joinpath(DEMO_PROGRAM_FILE).read_text()
    program, _ = _call_json(
        "POST", f"{api}/api/v1/programs", token, {"document": document, "format": "toml"}
    )
    say(
        f"[server]   library program {program['name']!r} v{program['version']} added through the "
        f"API ({program['duration_s']:.0f} s)"
    )
    [patient] = _get_json(f"{api}/api/v1/patients", token)
    desired_url = f"{api}/api/v1/patients/{patient['id']}/desired"
    current, etag = _call_json("GET", desired_url, token)
    change = {
        "profile": current["profile"],
        "limits": current["limits"],
        "programs": [{"library_id": program["id"], "version": program["version"]}],
        "sessions_per_week": 5,
    }
    desired, _ = _call_json("PUT", desired_url, token, change, {"If-Match": etag})
    say(
        f"[server]   prescribed to patient {patient['id']}: signed desired state "
        f"v{desired['version']}, the program pending on {DEMO_DEVICE_ID}"
    )
    return {"program": program, "desired_url": desired_url}


def _program_state(desired_url: str, token: str, library_id: str) -> tuple[str, str]:
    """The prescribed program's state on the patient's devices (pending, applied, refused) and why."""
    desired = _get_json(desired_url, token)
    for entry in desired["programs"]:
        if entry["library_id"] == library_id:
            return str(entry["state"]), str(entry.get("reason", ""))
    return "missing", "not in the patient's desired state"


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

    with _StopSignals() as signals, ExitStack() as stack:
        try:
            return _run_stack(options, workdir, stack, signals, say)
        finally:
            signals.stop()  # the stack is stopped now, in order: no signal may cut that short


def _run_stack(
    options: DemoOptions,
    workdir: Path,
    stack: ExitStack,
    signals: _StopSignals,
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Start the stack (each part's stop on ``stack``), play, sync, show; with ``keep_running``
    wait for a signal."""
    verbose = ["-v"] if options.verbose else []
    password = secrets.token_urlsafe(18)
    http_port = free_port()
    api = f"http://127.0.0.1:{http_port}"
    with signals.held():  # a signal meanwhile: raised once the broker's stop is on the stack
        broker: RunningBroker = start_broker(free_port(), workdir / "broker", options.broker)  # type: ignore[arg-type]
        stack.callback(broker.stop)
    say(f"[broker]   {broker.name} on 127.0.0.1:{broker.port} (MQTT {broker.protocol})")
    mqtt = {"host": broker.host, "port": broker.port, "protocol": broker.protocol}

    procs = _Processes(workdir, signals)
    stack.callback(procs.stop_all)
    # Patient data is encrypted at rest: the demo's key lives in its workdir (never the DB).
    key_file = workdir / "patient-keys.txt"
    key_file.write_text(
        _server_command(procs, ["new-key", "--key-id", "demo"], verbose=options.verbose)
    )
    key_file.chmod(0o600)
    # The key that signs the desired state, and its public half pinned on the device.
    signing_key = workdir / "desired-signing.pem"
    wrote = _server_command(procs, ["new-signing-key", str(signing_key)], verbose=options.verbose)
    server_key = wrote.strip().rsplit(" ", 1)[-1]
    server_config = _write_toml(
        workdir / "server.toml",
        {
            "database_url": f"sqlite:///{workdir / 'server.db'}",
            "http_host": "127.0.0.1",
            "http_port": http_port,
            "demo": True,
            "patient_key_file": str(key_file),
            "desired_signing_key_file": str(signing_key),
            "shared_subscription": broker.shared_subscriptions,
            "mqtt": mqtt,
        },
    )
    config_args = ["--config", str(server_config)]
    _server_command(procs, ["migrate", *config_args], verbose=options.verbose)
    # A clinician, their patient, and the demo device registered and assigned to the patient.
    _server_command(
        procs,
        ["demo-setup", *config_args, "--device", DEMO_DEVICE_ID, "--email", DEMO_CLINICIAN],
        env={"RESONERA_PASSWORD": password},
        verbose=options.verbose,
    )
    server = procs.start(
        "server", [_script("resonera-server"), "run", *verbose, "--config", str(server_config)]
    )
    procs.wait_ready("server", server, what="the server", ready=lambda: _healthy(f"{api}/healthz"))
    say(f"[server]   API on {api}/api/v1, database {workdir / 'server.db'}")

    token = _login(api, DEMO_CLINICIAN, password)
    prescribed = _add_and_prescribe(api, token, say)
    program: dict[str, Any] = prescribed["program"]

    link_file = workdir / "hwsim.link"
    hwsim = procs.start(
        "hwsim", [_script("resonera-hwsim"), *verbose, "--link-file", str(link_file)]
    )
    procs.wait_ready("hwsim", hwsim, what="the hardware simulator", ready=link_file.exists)
    port_path = link_file.read_text().strip()
    say(f"[hardware] safety MCU simulator on {port_path}")

    wav_path = workdir / "session.wav"
    device_data = workdir / "device"
    device_config = _write_toml(
        workdir / "device.toml",
        {
            "device_id": DEMO_DEVICE_ID,
            "data_dir": str(device_data),
            "serial_url": port_path,
            "sink": options.sink,
            "wav_path": str(wav_path),
            "calibration_file": str(packaged_calibration()),
            "server_public_key": server_key,
            "mqtt": mqtt,
        },
    )
    device_args = ["--config", str(device_config)]
    device = procs.start("device", [_script("resonera-device"), *verbose, "run", *device_args])
    procs.wait_ready(
        "device",
        device,
        what="the device agent",
        ready=(device_data / "run.sock").exists,
    )
    say(
        f"[device]   {DEMO_DEVICE_ID} runs, holding the MCU simulator's port; it takes the signed state"
    )

    def program_settled() -> bool:
        return _program_state(prescribed["desired_url"], token, program["id"])[0] != "pending"

    procs.wait_ready("device", device, what="the device's report", ready=program_settled)
    state, reason = _program_state(prescribed["desired_url"], token, program["id"])
    if state != "applied":
        raise DemoError(f"the device did not apply {program['name']!r}: {state} ({reason})")
    say(
        f"[device]   checked {program['name']!r} v{program['version']} "
        f"(sha256 {program['content_hash'][:12]}…) under the patient's limits, kept it sealed "
        "and reported it applied"
    )
    code, played, _ = procs.run(
        "device play",
        [
            _script("resonera-device"),
            "play",
            "--via-service",
            *device_args,
            *([options.program] if options.program else []),
        ],
    )
    for line in played.strip().splitlines():
        say(f"[device]   {line}")
    if code != 0:
        raise DemoError(f"the device agent refused to play (exit {code}): {played.strip()}")

    def session_stored() -> bool:
        if any(
            s.get("program_library_id") == program["id"]
            for s in _get_json(f"{api}/api/v1/sessions", token)
        ):
            return True
        # a session that could not play stores nothing: say why instead of waiting it out.
        # The agent's modules cost every `resonera` command 0.8 s at the top (importtime).
        from resonera.device.service import send_command

        status = json.loads(send_command(device_data / "run.sock", "status"))
        if status.get("playing") is None and status.get("last_error"):
            raise DemoError(f"the device did not play {program['name']!r}: {status['last_error']}")
        return False

    procs.wait_ready(
        "device",
        device,
        what="the session to reach the server",
        ready=session_stored,
        timeout_s=program["duration_s"] + 60.0,
    )
    sessions: list[dict[str, Any]] = _get_json(f"{api}/api/v1/sessions", token)
    say(f"\nThe server holds {len(sessions)} session(s):")
    for s in sessions:
        version = f" v{s['program_version']}" if s.get("program_version") else ""
        say(
            f"  {s['device_id']}  {s['program_name']}{version}  {s['played_s']:.1f} s  "
            f"{s['outcome']}  peak {s['peak_dbfs']:.1f} dBFS  (message {s['message_id']})"
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
    try:  # before the line that says so: a signal may come the moment it is read
        say("The stack stays up; press Ctrl-C to stop it.")
        while all(p.poll() is None for _n, p in procs.children):
            time.sleep(0.5)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: how a kept-up stack is stopped
        with contextlib.suppress(OSError):  # a terminal that hung up takes no more lines
            say("stopping")
    return sessions
