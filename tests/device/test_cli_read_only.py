"""The commands that only look (``status``, ``history``, ``logs``, ``dose``) as a person runs them:
they create nothing, upgrade nothing, print one JSON document with ``--json``, end quietly when their
reader leaves, and ``status`` says what the running service says (or idle without it)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from device_peer import config_file, device_settings
from support import wait_until

from resonera.device import migrations
from resonera.device.crypto_store import create_key_file
from resonera.device.service import ServiceUnavailable, send_command
from resonera.device.settings import DeviceSettings

BIN = Path(sys.executable).parent / "resonera-device"
READ_ONLY = ("status", "history", "logs", "dose")
#: The keys device/README.md ("Running") documents for each ``--json`` document.
DOCUMENTED = {
    "status": {
        "device", "data_dir", "agent_version", "service_running", "link", "link_error",
        "playing", "safety_link", "safety_state", "ready", "shut_out", "routine", "dose",
        "outbox", "sessions_waiting", "last_sync", "desired", "max_level_dba", "output",
        "agent_update", "recent_sessions",
    },
    "history": {"sessions", "checkins"},
    "logs": {"events"},
    "dose": {"mode", "week_fraction", "seconds", "corrupted", "days"},
    "programs": {"programs"},
}  # fmt: skip
SESSION_KEYS = {
    "session_id", "program", "program_library_id", "started_at", "ended_at", "planned_s",
    "played_s", "laeq_dba", "dose_fraction", "outcome", "reason", "simulation",
}  # fmt: skip


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def offline(
    tmp_path: Path, device_id: str = "cli-ro", **changes: Any
) -> tuple[Path, DeviceSettings]:
    """A device's settings and their file, its broker nowhere (offline is not an error)."""
    settings = device_settings(None, tmp_path, device_id, **changes)
    return config_file(settings, tmp_path / "device.toml"), settings


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_without_a_store_each_read_only_command_says_so_and_creates_nothing(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "secrets" / "data.key"
    cfg, settings = offline(tmp_path, data_key_file=key_file)
    for command in READ_ONLY:
        for extra in ([], ["--json"]):
            result = run(command, "--config", cfg, *extra)
            assert result.returncode == 1, (command, result.stdout)
            assert result.stdout == ""
            assert result.stderr.splitlines() == [
                f"resonera-device: error: no store at {settings.store_path}: "
                "nothing recorded on this device yet"
            ]
    assert not settings.data_dir.exists()
    assert not key_file.parent.exists()


def test_a_store_of_an_older_layout_is_read_by_no_one_and_left_as_it_is(tmp_path: Path) -> None:
    cfg, settings = offline(tmp_path)
    settings.data_dir.mkdir(mode=0o700)
    key = create_key_file(settings.data_key_path)
    older = migrations.LATEST - 1
    with sqlite3.connect(settings.store_path, isolation_level=None) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "CREATE TABLE schema_version (version INTEGER NOT NULL PRIMARY KEY, "
            "applied_at DATETIME NOT NULL)"
        )
        for version, migration in enumerate(migrations.MIGRATIONS[:older], start=1):
            migration(db, key)
            db.execute("INSERT INTO schema_version VALUES (?, '2026-11-01')", (version,))
        db.execute("INSERT INTO meta VALUES ('data_key_id', ?)", (key.key_id,))
        db.execute("COMMIT")
    db.close()
    before = digest(settings.store_path)
    for command in ("status", "history", "logs"):
        result = run(command, "--config", cfg)
        assert result.returncode == 1
        [line] = result.stderr.splitlines()
        assert f"is at schema version {older}, older than this software's" in line
        assert "start the service (resonera-device run) once to upgrade it" in line
    assert digest(settings.store_path) == before
    with sqlite3.connect(settings.store_path) as db:
        assert db.execute("SELECT MAX(version) FROM schema_version").fetchone() == (older,)
    db.close()


def test_json_documents_hold_the_documented_keys_and_change_nothing(tmp_path: Path) -> None:
    cfg, settings = offline(tmp_path)
    played = run("play", "demo-alpha", "--config", cfg, "--sync-timeout", "0.2")
    assert played.returncode == 0, played.stderr
    files = {path: digest(path) for path in (settings.store_path, settings.dose_ledger_path)}
    documents = {
        command: json.loads(run(command, "--config", cfg, "--json").stdout) for command in READ_ONLY
    }
    documents["programs"] = json.loads(run("programs", "--json").stdout)
    for command, keys in DOCUMENTED.items():
        assert set(documents[command]) == keys, command

    status = documents["status"]
    assert status["service_running"] is False
    assert status["safety_state"] == "idle"
    assert status["sessions_waiting"] == 1  # offline: kept, to sync later
    assert status["outbox"]["by_kind"]["session"] == 1
    [session] = status["recent_sessions"]
    assert set(session) == SESSION_KEYS
    assert session["program"] == "demo-alpha" and session["outcome"] == "completed"
    started = datetime.fromisoformat(session["started_at"])
    assert started.utcoffset() == timedelta(0)  # ISO 8601, UTC
    assert abs(datetime.now(UTC) - started) < timedelta(hours=1)
    assert status["dose"]["seconds"] >= 1 and status["dose"]["corrupted"] is False
    assert documents["history"]["sessions"] == [session]
    events = documents["logs"]["events"]
    assert events and all(
        datetime.fromisoformat(e["at"]).utcoffset() == timedelta(0) for e in events
    )
    dose = documents["dose"]
    assert len(dose["days"]) == 7 and dose["week_fraction"] > 0
    assert dose["days"][-1]["date"] == datetime.now(UTC).date().isoformat()
    names = [p["name"] for p in documents["programs"]["programs"]]
    assert "demo-alpha" in names

    text = run("status", "--config", cfg)
    assert text.returncode == 0, text.stderr
    assert "safety state    idle (service not running)" in text.stdout
    assert "fault" not in text.stdout
    assert "1 session waiting to sync" in text.stdout
    assert {path: digest(path) for path in files} == files  # looked at, not written


def test_output_cut_short_by_its_reader_ends_quietly(tmp_path: Path) -> None:
    cfg, _settings = offline(tmp_path)
    assert run("play", "--config", cfg, "--sync-timeout", "0.2").returncode == 0
    # `status | head -1`, a real pipe
    ours = subprocess.Popen(
        [str(BIN), "status", "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert ours.stdout is not None and ours.stderr is not None
    head = subprocess.run(["head", "-1"], stdin=ours.stdout, capture_output=True, check=False)
    ours.stdout.close()
    errors = ours.stderr.read()
    assert ours.wait(timeout=60) in (0, 141)
    assert head.stdout.decode().startswith("device cli-ro, data in ")
    assert errors == b""
    # a reader that has gone before the first line: the write fails for certain
    for argv in (["status"], ["history"], ["logs"], ["dose", "--json"], ["programs"]):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            gone = subprocess.run(
                [str(BIN), *argv, *(["--config", str(cfg)] if argv[0] != "programs" else [])],
                stdout=write_end,
                stderr=subprocess.PIPE,
                timeout=60,
                check=False,
            )
        finally:
            os.close(write_end)
        assert (gone.returncode, gone.stderr) == (141, b""), argv


@contextmanager
def service_answering(path: Path, status: dict[str, Any]) -> Iterator[None]:
    """A control socket at ``path`` that answers ``status`` with ``status``, as the service's does
    (one line of JSON per command): the words the service is being taught to say (issue 21), so
    that their rendering is checked whatever service is running."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    server.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(1024)
                conn.sendall(json.dumps(status).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        server.close()
        path.unlink()


def test_status_renders_ready_shut_out_routine_and_the_services_safety_state(
    tmp_path: Path,
) -> None:
    cfg, settings = offline(tmp_path)
    assert run("play", "--config", cfg, "--sync-timeout", "0.2").returncode == 0
    since = datetime.now(UTC) - timedelta(minutes=5)
    said: dict[str, Any] = {
        "link": "disconnected",
        "link_error": "certificate revoked",
        "playing": None,
        "safety_link": None,
        "safety_state": "blocked",
        "ready": {"code": "shut_out", "message": "the server no longer accepts this device"},
        "shut_out": {
            "kind": "revoked",
            "reason": "certificate revoked",
            "since": since.timestamp(),  # Unix time, as the service keeps it
        },
        "sessions_waiting": 3,
        "routine": {"link_down": 4, "consent_withdrawn": 2},
    }
    with service_answering(settings.control_socket_path, said):
        text = run("status", "--config", cfg)
        document = json.loads(run("status", "--config", cfg, "--json").stdout)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert "  safety state    blocked" in lines
    assert "  play            refused now: the server no longer accepts this device" in lines
    assert any(
        line.startswith("  shut out        revoked: certificate revoked, since ") for line in lines
    )
    assert "  to sync         3 sessions waiting to sync" in lines
    assert any(
        line.startswith("  routine         2 consent_withdrawn, 4 link_down") for line in lines
    )
    assert document["service_running"] is True
    assert document["shut_out"] == {**said["shut_out"], "since": since.isoformat()}  # ISO, UTC
    assert {k: document[k] for k in said if k not in ("playing", "shut_out")} == {
        k: v for k, v in said.items() if k not in ("playing", "shut_out")
    }


# The service's SIGTERM must wake its main loop's timed wait, which libfaketime's timed waits do not
# hand back (test_agent_service's runs are left out of the faketime pass too); it dates nothing.
@pytest.mark.real_clock
def test_status_of_an_idle_service_says_idle_and_ready(tmp_path: Path) -> None:
    """The real service (``resonera-device run``, offline, simulation): an idle, healthy device is
    never shown in a fault."""
    cfg, settings = offline(tmp_path, "cli-svc")
    service = subprocess.Popen(
        [str(BIN), "run", "--config", str(cfg)],
        stdout=(tmp_path / "run.log").open("wb"),
        stderr=subprocess.STDOUT,
    )

    def answers() -> bool:
        try:
            return bool(send_command(settings.control_socket_path, "status"))
        except (ServiceUnavailable, OSError):
            return False

    try:
        wait_until(answers, timeout=30, what="the service's control socket")
        text = run("status", "--config", cfg)
        document = json.loads(run("status", "--config", cfg, "--json").stdout)
        live = json.loads(send_command(settings.control_socket_path, "status"))
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=30)
    assert text.returncode == 0, text.stderr
    assert document["service_running"] is True
    assert document["safety_state"] == "idle"
    assert "service not running" not in text.stdout
    assert "  safety state    idle" in text.stdout.splitlines()
    assert "fault" not in text.stdout
    if "ready" in live:  # the service says whether a play would start (issue 21)
        assert live["ready"] is None  # idle and healthy
        assert "  play            ready" in text.stdout.splitlines()
