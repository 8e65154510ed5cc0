"""The deployment server/README.md walks an admin through, run here without systemd: the fleet's
certificates made with ``resonera-provision`` as the README says, PostgreSQL, and each unit's own
``ExecStart`` and ``Environment`` (mosquitto with the generated mutual-TLS configuration, the API
over HTTPS, two ingest consumers) as processes of their own. A device from a factory batch sends
signed safety events over mutual TLS: each is stored once, the two consumers' counters add up on the
API's ``/metrics``, and SIGTERM stops every part with status 0."""

from __future__ import annotations

import json
import shlex
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from importlib import resources
from pathlib import Path

import httpx
import tomli_w
from factories import event_body
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from support import bare_env, free_port, require_tool, run_postgres, wait_until

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.common.identity import load_private_key
from resonera.common.mqtt_client import build_client, connect, stop_loop
from resonera.common.settings import MqttSettings
from resonera.common.signing import sign_envelope
from resonera.server.db import make_engine
from resonera.server.models import SafetyEventRow, table_of

BIN = Path(sys.executable).parent
UNITS = resources.files("resonera.server.deploy")
PASSPHRASES = {
    "RESONERA_CA_PASSPHRASE": "root passphrase for the test",
    "RESONERA_ISSUING_PASSPHRASE": "issuing passphrase for the test",
}
EVENTS = 20


def unit_command(name: str, paths: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """A unit's ExecStart and Environment, with the installed paths replaced by this test's."""
    command: list[str] = []
    env: dict[str, str] = {}
    text = (UNITS / name).read_text()
    for installed, here in paths.items():
        text = text.replace(installed, here)
    for line in text.splitlines():
        if line.startswith("ExecStart="):
            command = shlex.split(line.removeprefix("ExecStart="))
        elif line.startswith("Environment="):
            key, value = line.removeprefix("Environment=").split("=", 1)
            env[key] = value
    assert command, f"{name} has no ExecStart"
    return command, env


def provision(*args: object, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(BIN / "resonera-provision"), *map(str, args)],
        capture_output=True,
        text=True,
        env=bare_env(**{**PASSPHRASES, **(env or {})}),
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def server_cli(*args: object, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(BIN / "resonera-server"), *map(str, args)],
        capture_output=True,
        text=True,
        env=bare_env(**(env or {})),
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@contextmanager
def running(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A unit's process; on leaving, SIGTERM as ``systemctl stop`` sends, and it must exit 0."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=bare_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, f"{command[0]} exited {process.returncode}: {log.read_text()}"


def test_the_readme_s_deployment_serves_https_and_two_consumers_share_the_ingest(
    tmp_path: Path,
) -> None:
    require_tool("mosquitto")
    with run_postgres() as postgres:
        postgres.execute("CREATE DATABASE resonera")
        database_url = postgres.url("resonera")
        deploy(tmp_path, database_url)


def deploy(tmp: Path, database_url: str) -> None:
    etc, mqtt_port, https_port = tmp / "etc", free_port(), free_port()
    root, issuing = tmp / "fleet-root", etc / "issuing"
    # step 3: the certificates
    provision("ca", "init", "--ca", root)
    provision("ca", "issuing", "--ca", root, "--out", issuing)
    provision(
        "broker-config", "--tls", "--ca", root, "--issuing", issuing,
        "--out-dir", etc / "mosquitto", "--port", mqtt_port,
        "--server-name", "127.0.0.1", "--persistence-dir", tmp / "mosquitto-state",
    )  # fmt: skip
    (tmp / "mosquitto-state").mkdir()
    issuing_passphrase = PASSPHRASES["RESONERA_ISSUING_PASSPHRASE"]
    provision(
        "service-cert", "--ca", issuing, "--out-dir", etc / "mqtt",
        env={"RESONERA_CA_PASSPHRASE": issuing_passphrase},
    )  # fmt: skip
    https = provision(
        "service-cert", "--ca", root, "--name", "resonera-https",
        "--server-name", "127.0.0.1", "--out-dir", etc / "https",
    )  # fmt: skip
    assert "a TLS server for 127.0.0.1" in https
    # step 4: keys and settings
    (etc / "patient-keys").write_text(server_cli("new-key", "--key-id", "k1"))
    server_cli("new-signing-key", etc / "desired.pem")
    config = etc / "server.toml"
    config.write_text(
        tomli_w.dumps(
            {
                "database_url": database_url,
                "http_host": "127.0.0.1",
                "http_port": https_port,
                "tls_cert_file": str(etc / "https" / "resonera-https.crt"),
                "tls_key_file": str(etc / "https" / "resonera-https.key"),
                "jwt_secret": "a-test-secret-of-more-than-32-characters",
                "patient_key_file": str(etc / "patient-keys"),
                "desired_signing_key_file": str(etc / "desired.pem"),
                "data_dir": str(tmp / "server-state"),
                "mqtt": {
                    "host": "127.0.0.1",
                    "port": mqtt_port,
                    "ca_file": str(issuing / "chain.pem"),
                    "cert_file": str(etc / "mqtt" / "resonera-server.crt"),
                    "key_file": str(etc / "mqtt" / "resonera-server.key"),
                },
                "enrollment": {
                    "issuing_ca_dir": str(issuing),
                    "issuing_passphrase": issuing_passphrase,
                    "broker_host": "127.0.0.1",
                    "broker_port": mqtt_port,
                },
            }
        )
    )
    # step 5: the schema; a factory batch of one board (provisioning by the hundred)
    server_cli("migrate", "--config", config)
    (tmp / "serials.csv").write_text("SN-7001,dev-7001\n")
    provision(
        "devices", "import", tmp / "serials.csv", "--bundles", "--ca", issuing,
        "--out", tmp / "batch", "--server-config", config,
        env={"RESONERA_CA_PASSPHRASE": issuing_passphrase},
    )  # fmt: skip
    # step 6: the units' own command lines
    metrics_dir = tmp / "metrics"
    metrics_dir.mkdir()
    paths = {
        "/opt/resonera/.venv/bin/": f"{BIN}/",
        "/etc/resonera/server.toml": str(config),
        "/etc/mosquitto/resonera/mosquitto.conf": str(etc / "mosquitto" / "mosquitto.conf"),
        "/usr/sbin/mosquitto": require_tool("mosquitto"),
        "/run/resonera/metrics": str(metrics_dir),
    }
    with ExitStack() as stack:
        broker, broker_env = unit_command("resonera-mosquitto.service", paths)
        stack.enter_context(running(broker, broker_env, tmp / "mosquitto.log"))
        api, api_env = unit_command("resonera-api.service", paths)
        assert api_env["PROMETHEUS_MULTIPROC_DIR"] == str(metrics_dir)
        api_process = stack.enter_context(running(api, api_env, tmp / "api.log"))
        ingest, ingest_env = unit_command("resonera-ingest@.service", paths)
        assert ingest[-3:] == ["ingest", "--config", str(config)]
        consumers = [
            stack.enter_context(running(ingest, ingest_env, tmp / f"ingest-{n}.log"))
            for n in (1, 2)
        ]
        # step 7: the API answers over HTTPS, verified with the fleet root, database and broker up
        url = f"https://127.0.0.1:{https_port}"
        with httpx.Client(
            base_url=url, verify=ssl.create_default_context(cafile=root / "ca.crt"), timeout=10
        ) as client:

            def ready() -> bool:
                assert api_process.poll() is None, (tmp / "api.log").read_text()
                try:
                    return bool(client.get("/readyz").json().get("status") == "ok")
                except httpx.TransportError:
                    return False

            wait_until(ready, timeout=60, what="the API ready over HTTPS")
            send_signed_events(tmp / "batch" / "bundles" / "dev-7001", issuing, mqtt_port)
            engine = make_engine(database_url)
            try:
                events = table_of(SafetyEventRow)

                def stored() -> int:
                    with engine.connect() as conn:
                        return int(
                            conn.execute(select(func.count()).select_from(events)).scalar_one()
                        )

                wait_until(lambda: stored() == EVENTS, timeout=60, what="every event stored")
            finally:
                engine.dispose()

            def counted() -> float:
                text = client.get("/metrics").text
                return sum(
                    sample.value
                    for family in text_string_to_metric_families(text)
                    for sample in family.samples
                    if sample.name == "resonera_ingest_received_total"
                )

            # two consumers, one sum: the API's /metrics adds up every process of the host
            wait_until(lambda: counted() == EVENTS, timeout=30, what="the consumers' counts")
            assert all(c.poll() is None for c in consumers)
            # the API and both consumers write their counters there
            assert len(list(metrics_dir.glob("counter_*.db"))) == 3


def send_signed_events(bundle: Path, issuing: Path, port: int) -> None:
    """What the board would send: safety events signed with its key, at QoS 1, over mutual TLS."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    device_id = manifest["device_id"]
    settings = MqttSettings(
        host="127.0.0.1",
        port=port,
        ca_file=issuing / "chain.pem",
        cert_file=bundle / "device.crt",
        key_file=bundle / "device.key",
    )
    key = load_private_key(bundle / "device.key")
    client = build_client(settings, device_id)
    connect(client, settings, clean_start=True, session_expiry_s=0)
    client.loop_start()
    try:
        for seq in range(EVENTS):
            envelope = sign_envelope(
                Envelope.create(device=device_id, seq=seq, kind="event", body=event_body()), key
            )
            info = client.publish(topics.up(device_id, "event"), envelope.to_bytes(), qos=1)
            info.wait_for_publish(timeout=10)
            assert info.is_published()
    finally:
        stop_loop(client)
        client.disconnect()
