"""``resonera-server`` as a person runs it (subprocess), and ``run_server_in_thread``."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import inspect
from support import Mosquitto, free_port, wait_until

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.common.mqtt_client import build_client, connect, stop_loop
from resonera.common.settings import MqttSettings
from resonera.server.bootstrap import demo_setup
from resonera.server.crypto import new_key_line, write_signing_key
from resonera.server.db import make_engine
from resonera.server.runner import PortInUseError, run_server_in_thread
from resonera.server.settings import ServerSettings

BIN = Path(sys.executable).parent / "resonera-server"
JWT = "cli-jwt-secret-0123456789-abcdefghijklmnop"
PASSWORD = "cli password 0123456789"
KEYS = new_key_line("c1")


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RESONERA_SERVER_") and k != "RESONERA_PASSWORD"
    }
    return {**env, **extra}


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(text)
    return path


def _good_config(
    tmp_path: Path, *, http_port: int, mqtt_port: int, extra: str = "", migrated: bool = True
) -> Path:
    signing = tmp_path / "signing.pem"
    if not signing.exists():
        write_signing_key(signing)
    path = _config(
        tmp_path,
        f'database_url = "sqlite:///{tmp_path / "server.db"}"\n'
        f'jwt_secret = "{JWT}"\npatient_keys = "{KEYS}"\n'
        f'desired_signing_key_file = "{signing}"\nhttp_port = {http_port}\n{extra}'
        f"[mqtt]\nport = {mqtt_port}\n",
    )
    if migrated:
        result = _run(tmp_path, "migrate", "--config", str(path))
        assert result.returncode == 0, result.stderr
    return path


def _run(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args],
        check=False,
        cwd=tmp_path,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("resonera-server: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http_port = [", "is not valid TOML"),
        ("http_prot = 9000\n", "http_prot"),
        ("http_port = 70000\n", "http_port"),
    ],
    ids=["not-toml", "unknown-key", "out-of-range"],
)
def test_bad_config_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    line = _one_error_line(_run(tmp_path, "run", "--config", str(_config(tmp_path, text))))
    assert expected in line
    assert str(tmp_path / "server.toml") in line


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    line = _one_error_line(_run(tmp_path, "run", "--config", str(tmp_path / "nope.toml")))
    assert "does not exist" in line


def test_missing_jwt_secret_is_one_line(tmp_path: Path) -> None:
    config = _config(tmp_path, "http_port = 0\n")
    line = _one_error_line(_run(tmp_path, "run", "--config", str(config)))
    assert "jwt_secret must be set" in line
    assert "secrets.token_urlsafe(32)" in line


def test_short_jwt_secret_is_one_line(tmp_path: Path) -> None:
    config = _config(tmp_path, 'jwt_secret = "short"\n')
    assert "at least 32" in _one_error_line(_run(tmp_path, "api", "--config", str(config)))


def test_missing_patient_key_is_one_line(tmp_path: Path) -> None:
    config = _good_config(tmp_path, http_port=0, mqtt_port=free_port())
    config.write_text(config.read_text().replace(f'patient_keys = "{KEYS}"\n', ""))
    line = _one_error_line(_run(tmp_path, "api", "--config", str(config)))
    assert "patient data needs a key" in line


def test_unmigrated_database_is_refused_with_the_command(tmp_path: Path) -> None:
    config = _good_config(tmp_path, http_port=0, mqtt_port=free_port(), migrated=False)
    line = _one_error_line(_run(tmp_path, "run", "--config", str(config)))
    assert "is empty (no schema yet)" in line
    assert line.endswith("run: resonera-server migrate --config <your config file>")


def test_migrate_then_nothing_to_do(tmp_path: Path) -> None:
    config = _good_config(tmp_path, http_port=0, mqtt_port=free_port(), migrated=False)
    first = _run(tmp_path, "migrate", "--config", str(config))
    assert first.returncode == 0, first.stderr
    assert "from empty to revision" in first.stdout
    again = _run(tmp_path, "migrate", "--config", str(config))
    assert "nothing to do" in again.stdout
    engine = make_engine(f"sqlite:///{tmp_path / 'server.db'}")
    try:
        assert {"session_record", "app_user", "audit_log"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_create_user_from_the_environment(tmp_path: Path) -> None:
    config = _good_config(tmp_path, http_port=0, mqtt_port=free_port())
    args = ("create-user", "--config", str(config), "--role", "admin", "--email", "Root@x.org")
    created = _run(tmp_path, *args, env=_env(RESONERA_PASSWORD=PASSWORD))
    assert created.returncode == 0, created.stderr
    assert "created admin root@x.org" in created.stdout
    again = _run(tmp_path, *args, env=_env(RESONERA_PASSWORD=PASSWORD))
    assert "exists" in _one_error_line(again)
    short = _run(tmp_path, *args, env=_env(RESONERA_PASSWORD="short"))
    assert "at least 12 characters" in _one_error_line(short)
    no_password = _run(tmp_path, *args)
    assert "set RESONERA_PASSWORD" in _one_error_line(no_password)


def test_new_keys(tmp_path: Path) -> None:
    key = _run(tmp_path, "new-key", "--key-id", "k9")
    assert key.returncode == 0 and key.stdout.startswith("k9 ")
    signing = _run(tmp_path, "new-signing-key", str(tmp_path / "s.pem"))
    assert signing.returncode == 0 and "public key" in signing.stdout
    assert "not overwriting" in _one_error_line(
        _run(tmp_path, "new-signing-key", str(tmp_path / "s.pem"))
    )


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = _good_config(tmp_path, http_port=port, mqtt_port=free_port())
        line = _one_error_line(_run(tmp_path, "run", "--config", str(config)))
    assert line.endswith(f"port {port} on 127.0.0.1 is already in use")


def test_broker_down_is_one_line(tmp_path: Path) -> None:
    mqtt_port = free_port()
    config = _good_config(tmp_path, http_port=0, mqtt_port=mqtt_port)
    line = _one_error_line(_run(tmp_path, "run", "--config", str(config)))
    assert f"no MQTT broker at 127.0.0.1:{mqtt_port}" in line


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    result = _run(tmp_path)
    assert result.returncode == 2
    assert "usage: resonera-server" in result.stderr


@pytest.fixture
def running(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``resonera-server run`` as a child process, and the API URL it announced."""
    config = _good_config(tmp_path, http_port=0, mqtt_port=mosquitto.port)
    setup = _run(
        tmp_path,
        "demo-setup",
        "--config",
        str(config),
        "--device",
        "dev-cli",
        "--email",
        "doc@x.org",
        env=_env(RESONERA_PASSWORD=PASSWORD),
    )
    assert setup.returncode == 0, setup.stderr
    process = subprocess.Popen(
        [str(BIN), "run", "--config", str(config)],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    announced: list[str] = []

    def announced_api() -> bool:
        while not lines.empty():
            announced.append(lines.get())
        return any("API at" in line for line in announced) or process.poll() is not None

    try:
        wait_until(announced_api, timeout=30, what="resonera-server to announce its API")
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        url = next(line for line in announced if "API at" in line).split("API at ")[1].split()[0]
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_run_serves_and_stops_cleanly_on_sigterm(
    running: tuple[subprocess.Popen[str], str],
) -> None:
    process, api_url = running
    assert api_url.startswith("http://127.0.0.1:") and api_url.endswith("/api/v1")
    base = api_url.removesuffix("/api/v1")
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok", "database": "ok"}
    login = httpx.post(f"{api_url}/auth/login", json={"email": "doc@x.org", "password": PASSWORD})
    assert login.status_code == 200, login.text
    token = login.json()["access_token"]
    response = httpx.get(f"{api_url}/sessions", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json() == []
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_in_thread_server_ingests_and_serves(
    tmp_path: Path, mosquitto: Mosquitto, make_envelope: Callable[..., Envelope]
) -> None:
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp_path / 'server.db'}",
        http_port=0,
        demo=True,
        patient_keys=KEYS,
        mqtt=MqttSettings(host=mosquitto.host, port=mosquitto.port),
    )
    device = build_client(settings.mqtt, "test-device-in-thread")
    with run_server_in_thread(settings) as server:  # demo mode: migrates by itself
        demo_setup(
            server.engine, settings, device_id="dev-thread", email="doc@x.org", password=PASSWORD
        )
        login = httpx.post(
            f"{server.api_url}/auth/login", json={"email": "doc@x.org", "password": PASSWORD}
        )
        token = login.json()["access_token"]
        connect(device, settings.mqtt, clean_start=True, session_expiry_s=0)
        device.loop_start()
        try:
            envelope = make_envelope("dev-thread")
            info = device.publish(topics.up("dev-thread", "session"), envelope.to_bytes(), qos=1)
            info.wait_for_publish(timeout=10)
            headers = {"Authorization": f"Bearer {token}"}

            def listed() -> bool:
                response = httpx.get(f"{server.api_url}/sessions", headers=headers)
                return [s["message_id"] for s in response.json()] == [envelope.id]

            wait_until(listed, what="the session to appear in the API")
            assert server.url + "/api/v1" == server.api_url
        finally:
            device.disconnect()
            stop_loop(device)
    assert not server.alive()


def test_in_thread_server_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = ServerSettings(
            database_url=f"sqlite:///{tmp_path / 'server.db'}",
            http_port=taken.getsockname()[1],
            demo=True,
        )
        with pytest.raises(PortInUseError, match="is already in use"):
            run_server_in_thread(settings, ingest=False)
