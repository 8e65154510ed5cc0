"""Where a fleet connects and registers (``FleetTarget``), and the local stack the simulator brings
without ``--broker`` (``LocalStack``: a fleet CA made for the run, mutual-TLS mosquitto, a migrated
SQLite database, ``resonera-server ingest`` processes); ``build_fleet`` provisions devices on one.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Final

from sqlalchemy import func, select

from resonera.common import topics
from resonera.common.errors import ConfigError, ResoneraError
from resonera.common.settings import MqttSettings
from resonera.device.settings import OutboxLimits
from resonera.provisioning.broker import SERVER_IDENTITY, provision_broker
from resonera.server.db import make_engine, migrate
from resonera.server.fleet_ca import FleetCA
from resonera.server.models import MessageRow, SafetyEventRow, SessionRow, table_of
from resonera.stack.broker import find_mosquitto
from resonera.stack.fleet_devices import Fleet, SimDevice
from resonera.stack.fleet_identity import DeviceIdentity, issue_device, register_devices
from resonera.stack.processes import console_script, free_port, stop_process, wait_for_port

#: The CA made for a self-contained run lives and dies with its work folder.
RUN_PASSPHRASE: Final = b"fleet-sim throwaway CA passphrase"
#: The local stack's identity that may read the broker's ``$SYS`` counters (and nothing else).
MONITOR_IDENTITY: Final = topics.service_identity("fleet-monitor")


class FleetTarget:
    """Where a fleet connects and registers: a broker address, the fleet CA that issues the
    devices' certificates (the one the broker trusts), and the server's database."""

    def __init__(
        self,
        workdir: Path,
        ca: FleetCA,
        passphrase: bytes,
        *,
        host: str,
        port: int,
        database_url: str,
        migrate_db: bool = False,
    ) -> None:
        self.workdir = workdir
        self.ca = ca
        self.passphrase = passphrase
        self.host = host
        self.port = port
        self.database_url = database_url
        self.engine = make_engine(database_url)
        if migrate_db:
            migrate(self.engine)

    def mqtt(self, key: Path, cert: Path) -> MqttSettings:
        return MqttSettings(
            host=self.host, port=self.port, ca_file=self.ca.chain_path, cert_file=cert, key_file=key
        )

    def close(self) -> None:
        self.engine.dispose()

    def stored(self, device_prefix: str = "") -> dict[str, int]:
        """Rows per table (session_record, safety_event, device_message) of matching devices."""
        counts: dict[str, int] = {}
        with self.engine.connect() as conn:
            for model in (SessionRow, SafetyEventRow, MessageRow):
                table = table_of(model)
                query = select(func.count()).select_from(table)
                if device_prefix:
                    query = query.where(table.c.device_id.startswith(device_prefix))
                counts[table.name] = int(conn.execute(query).scalar_one())
        return counts

    def stored_ids(self, device_prefix: str = "") -> list[tuple[str, str]]:
        """(device id, message id) of every stored record of matching devices (with repeats,
        if there were any)."""
        rows: list[tuple[str, str]] = []
        with self.engine.connect() as conn:
            for model in (SessionRow, SafetyEventRow, MessageRow):
                table = table_of(model)
                query = select(table.c.device_id, table.c.message_id)
                if device_prefix:
                    query = query.where(table.c.device_id.startswith(device_prefix))
                rows.extend((r.device_id, r.message_id) for r in conn.execute(query))
        return rows


class LocalStack(FleetTarget):
    """What a fleet talks to on one machine: a fleet CA made for the run, mosquitto with mutual
    TLS (``provision_broker``), a migrated SQLite database, ``resonera-server ingest`` processes."""

    def __init__(self, workdir: Path, *, database_url: str | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        ca = FleetCA.init(workdir / "ca", RUN_PASSPHRASE)
        super().__init__(
            workdir,
            ca,
            RUN_PASSPHRASE,
            host="127.0.0.1",
            port=free_port(),
            database_url=database_url or f"sqlite:///{workdir / 'server.db'}",
            migrate_db=True,
        )
        self.broker_config = provision_broker(
            self.ca, workdir / "broker", self.passphrase, port=self.port
        )
        self.broker: subprocess.Popen[bytes] | None = None
        server = workdir / "server"
        server.mkdir(exist_ok=True)
        self.ca.issue_service(
            SERVER_IDENTITY, server / "server.key", server / "server.crt", self.passphrase
        )
        self.server_key, self.server_cert = server / "server.key", server / "server.crt"
        # A read-only identity for the broker's own counters ($SYS), published every second:
        # what the slow-consumer scenario reads to show the broker's queue stays bounded.
        self.monitor_key, self.monitor_cert = server / "monitor.key", server / "monitor.crt"
        self.ca.issue_service(
            MONITOR_IDENTITY, self.monitor_key, self.monitor_cert, self.passphrase
        )
        with (self.broker_config.parent / "acl").open("a") as acl:
            acl.write(f"user {MONITOR_IDENTITY}\ntopic read $SYS/#\n")
        with self.broker_config.open("a") as config:
            config.write("sys_interval 1\n")
        self.consumers: list[subprocess.Popen[bytes]] = []
        self._consumer_ids = itertools.count(1)

    def start_broker(self) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise ConfigError("mosquitto is not installed (apt-get install mosquitto)")
        log_file = (self.workdir / "mosquitto.log").open("ab")
        self.broker = subprocess.Popen(
            [binary, "-c", str(self.broker_config)], stdout=log_file, stderr=log_file
        )
        broker = self.broker
        if not wait_for_port(self.port, 10.0, lambda: broker.poll() is None):
            raise ResoneraError(
                f"mosquitto did not start on 127.0.0.1:{self.port} "
                f"(log: {self.workdir / 'mosquitto.log'})"
            )

    def stop_broker(self) -> None:
        if self.broker is not None:
            stop_process(self.broker)

    def restart_broker(self) -> None:
        self.stop_broker()
        self.start_broker()

    def broker_rss(self) -> int:
        """The broker's resident memory in bytes (0 when it is not running)."""
        if self.broker is None or self.broker.poll() is not None:
            return 0
        with suppress(OSError):
            for line in Path(f"/proc/{self.broker.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def use_database(self, database_url: str, devices: Iterable[DeviceIdentity]) -> None:
        """Point the stack at another server database (migrated here, ``devices`` registered):
        the consumers are stopped; start the ones wanted. The broker and the fleet stay up."""
        self.stop_consumers()
        self.engine.dispose()
        self.database_url = database_url
        self.engine = make_engine(database_url)
        migrate(self.engine)
        register_devices(self.engine, devices)

    def start_consumer(self) -> subprocess.Popen[bytes]:
        """One more ``resonera-server ingest`` on the shared subscription; returns once it is
        subscribed (it prints its topic then)."""
        number = next(self._consumer_ids)
        env = {
            **os.environ,
            "RESONERA_SERVER_DATABASE_URL": self.database_url,
            "RESONERA_SERVER_INGEST_CLIENT_ID": f"fleet-sim-ingest-{os.getpid()}-{number}",
            "RESONERA_SERVER_MQTT__HOST": "127.0.0.1",
            "RESONERA_SERVER_MQTT__PORT": str(self.port),
            "RESONERA_SERVER_MQTT__CA_FILE": str(self.ca.cert_path),
            "RESONERA_SERVER_MQTT__CERT_FILE": str(self.server_cert),
            "RESONERA_SERVER_MQTT__KEY_FILE": str(self.server_key),
        }
        log_path = self.workdir / f"ingest-{number}.log"
        process = subprocess.Popen(
            [console_script("resonera-server"), "ingest"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log_path.open("ab"),
        )
        assert process.stdout is not None
        line = process.stdout.readline()  # "resonera-server: ingest from ..." once subscribed
        if process.poll() is not None or b"ingest from" not in line:
            process.kill()
            raise ResoneraError(f"the ingest consumer did not start (log: {log_path})")
        self.consumers.append(process)
        return process

    def kill_consumers(self) -> None:
        """SIGKILL every consumer: a crash, nothing flushed."""
        for process in self.consumers:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
        self.consumers.clear()

    def stop_consumers(self) -> None:
        for process in self.consumers:
            stop_process(process, timeout_s=15)
        self.consumers.clear()

    def close(self) -> None:
        self.stop_consumers()
        self.stop_broker()
        super().close()


def build_fleet(
    stack: FleetTarget,
    count: int,
    *,
    prefix: str = "sim",
    workers: int = 16,
    outbox: OutboxLimits | None = None,
) -> Fleet:
    """``count`` devices with certificates from the stack's CA, registered on its server;
    ``outbox``: their outbox bounds (the device default otherwise)."""
    fleet = Fleet(workers=workers)
    identities = [
        issue_device(
            stack.ca,
            stack.passphrase,
            f"{prefix}-{n:05d}",
            stack.workdir / "devices" / f"{prefix}-{n:05d}" / "identity",
        )
        for n in range(count)
    ]
    register_devices(stack.engine, identities)
    for identity in identities:
        folder = stack.workdir / "devices" / identity.device_id
        mqtt = stack.mqtt(identity.key_file, identity.cert_file)
        fleet.add(SimDevice(identity, mqtt, folder, fleet, outbox=outbox))
    return fleet


@contextmanager
def local_stack(workdir: Path, consumers: int = 1) -> Iterator[LocalStack]:
    stack = LocalStack(workdir)
    try:
        stack.start_broker()
        for _ in range(consumers):
            stack.start_consumer()
        yield stack
    finally:
        stack.close()
