"""``resonera fleet-sim``: many simulated devices in one process, each with the real device store,
outbox scheduler, signing and sync code, its own certificate and its own MQTT/TLS connection.

Why the devices are not run with ``DeviceSync.start()``: that starts paho's network thread, which
waits in ``select()``, and ``select()`` cannot watch a descriptor numbered 1024 or more. A process
holding a few hundred device stores and sockets passes that (seen: at 300 devices all but the first
two dozen connections dropped, mosquitto logging "protocol error"), and 2,000 threads for 1,000
devices cost more than the devices. So each device is a driven ``DeviceSync`` (its callbacks,
outbox scheduler, resend and cursor logic, untouched): its paho client, made by the client
factory the simulator gives it, is driven through paho's external-loop API by one epoll thread
(``MqttLoop``); its publishing step (``DeviceSync.pump``, what its own worker thread would run
when it wakes) and its ack handling run on a small worker pool.

Without ``--broker`` the simulator brings its own stack: a fleet CA made for the run, a mutual-TLS
mosquitto configured by ``provision_broker``, a migrated SQLite database with the devices
registered (their public keys: signatures are verified) and ``resonera-server ingest`` processes
(``--consumers``) on the shared subscription.

The parts: ``fleet_identity`` (keys, certificates, registration), ``fleet_loop`` (``MqttLoop``),
``fleet_devices`` (``SimDevice``, ``Fleet``), ``fleet_target`` (``FleetTarget``, ``LocalStack``,
``build_fleet``), ``fleet_slow`` (the slow-consumer scenario); this module is the command (run,
progress, report) and names them all.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

from sqlalchemy.engine import make_url

from resonera.common.errors import ConfigError, ResoneraError
from resonera.common.ids import new_id
from resonera.server.fleet_ca import FleetCA
from resonera.stack.fleet_devices import SIM_SYNC, Fleet, SimDevice, Stats
from resonera.stack.fleet_identity import DeviceIdentity, issue_device, register_devices
from resonera.stack.fleet_loop import MqttLoop
from resonera.stack.fleet_slow import (
    BrokerMonitor,
    SlowConsumerResult,
    SlowDatabase,
    run_slow_consumer,
)
from resonera.stack.fleet_target import (
    MONITOR_IDENTITY,
    RUN_PASSPHRASE,
    FleetTarget,
    LocalStack,
    build_fleet,
    local_stack,
)

__all__ = [
    "MONITOR_IDENTITY",
    "PASSPHRASE_ENV",
    "RUN_PASSPHRASE",
    "SIM_SYNC",
    "BrokerMonitor",
    "DeviceIdentity",
    "Fleet",
    "FleetSimOptions",
    "FleetSimResult",
    "FleetTarget",
    "LocalStack",
    "MqttLoop",
    "ProgressLine",
    "SimDevice",
    "SlowConsumerResult",
    "SlowDatabase",
    "Stats",
    "build_fleet",
    "issue_device",
    "local_stack",
    "register_devices",
    "run_fleet_sim",
    "run_slow_consumer",
]


PASSPHRASE_ENV: Final = "RESONERA_CA_PASSPHRASE"


@dataclass(frozen=True)
class FleetSimOptions:
    devices: int = 100
    sessions: int = 5
    consumers: int = 1
    interval_s: float = 0.0
    events_every: int = 5
    metrics_every: int = 10
    workdir: Path | None = None
    timeout_s: float = 600.0
    #: A running deployment instead of the local stack: broker host:port, its fleet CA folder
    #: (passphrase in $RESONERA_CA_PASSPHRASE) and the server database to register devices in.
    broker: str | None = None
    ca: Path | None = None
    database_url: str | None = None


@dataclass(frozen=True)
class FleetSimResult:
    devices: int
    connected: int
    produced: int
    acked: int
    stored: int
    duplicates: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    outbox_total: int
    outbox_max: int

    @property
    def rate(self) -> float:
        return self.acked / self.seconds if self.seconds > 0 else 0.0


class ProgressLine:
    """A redrawn line on a terminal, a plain line every few seconds otherwise (logs, CI)."""

    def __init__(self, out: TextIO, every_s: float = 5.0) -> None:
        self.out = out
        self.tty = out.isatty()
        self.every_s = 0.2 if self.tty else every_s
        self._last = 0.0

    def show(self, text: str, fraction: float) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        if self.tty:
            filled = round(max(0.0, min(1.0, fraction)) * 24)
            self.out.write(f"\r{'█' * filled}{'░' * (24 - filled)} {fraction:4.0%}  {text}\033[K")
        else:
            self.out.write(f"fleet-sim: {fraction:4.0%}  {text}\n")
        self.out.flush()

    def end(self) -> None:
        if self.tty:
            self.out.write("\n")


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def run_fleet_sim(options: FleetSimOptions, out: TextIO = sys.stdout) -> FleetSimResult:
    """Bring up the local stack and the fleet, produce, wait for every ack, report."""
    if options.devices < 1 or options.sessions < 1 or options.consumers < 1:
        raise ConfigError("--devices, --sessions and --consumers must be at least 1")
    _raise_fd_limit(options.devices)
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # a thousand devices each saying "connected" drown the figures; warnings still show
        logging.getLogger("resonera.device").setLevel(logging.WARNING)
    with ExitStack() as exits:
        if options.workdir is None:
            workdir = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="fleet-sim-")))
        else:
            workdir = options.workdir
            if workdir.exists() and any(workdir.iterdir()):
                raise ConfigError(f"work folder {workdir} is not empty; give a new or empty one")
        started = time.monotonic()
        stack: FleetTarget
        if options.broker is None:
            stack = exits.enter_context(local_stack(workdir, options.consumers))
            prefix = "sim"
            out.write(
                f"fleet-sim: mosquitto (mutual TLS) on 127.0.0.1:{stack.port}, "
                f"{options.consumers} ingest consumer(s), SQLite in {workdir}\n"
            )
        else:
            stack = _external_target(options, workdir)
            exits.callback(stack.close)
            # a fresh prefix per run: ids registered by an earlier run carry other keys
            prefix = f"sim-{new_id()[-8:].lower()}"
            out.write(
                f"fleet-sim: broker {stack.host}:{stack.port}, devices {prefix}-*, "
                f"registered in {_where(stack.database_url)}\n"
            )
        fleet = build_fleet(stack, options.devices, prefix=prefix)
        exits.callback(fleet.close)
        out.write(
            f"fleet-sim: {options.devices} devices provisioned in "
            f"{time.monotonic() - started:.1f} s; connecting\n"
        )
        connected = fleet.connect_all()
        out.write(f"fleet-sim: {connected}/{options.devices} devices connected\n")
        expected = options.devices * sum(
            1
            + int(
                bool(options.events_every) and i % options.events_every == options.events_every - 1
            )
            + int(
                bool(options.metrics_every)
                and i % options.metrics_every == options.metrics_every - 1
            )
            for i in range(options.sessions)
        )
        progress = ProgressLine(out)
        begin = time.monotonic()

        def tick() -> None:
            acked = fleet.stats.acked_count
            elapsed = max(time.monotonic() - begin, 1e-9)
            progress.show(
                f"{acked} acked  {acked / elapsed:7.0f} msg/s  in outboxes {fleet.pending}  "
                f"connected {fleet.connected}",
                acked / expected,
            )

        producer = threading.Thread(
            target=fleet.produce,
            args=(options.sessions,),
            kwargs={
                "events_every": options.events_every,
                "metrics_every": options.metrics_every,
                "interval_s": options.interval_s,
            },
            daemon=True,
        )
        producer.start()
        while producer.is_alive():
            tick()
            producer.join(timeout=0.2)
        drained = fleet.drain(options.timeout_s, tick)
        seconds = time.monotonic() - begin
        progress.end()
        produced = sum(len(d.produced) for d in fleet.devices)
        ids = stack.stored_ids(f"{prefix}-")
        outbox_total, outbox_max = fleet.outbox_depths()
        result = FleetSimResult(
            devices=options.devices,
            connected=fleet.connected,
            produced=produced,
            acked=fleet.stats.acked_count,
            stored=len(set(ids)),
            duplicates=len(ids) - len(set(ids)),
            seconds=seconds,
            p50_ms=_ms(fleet.stats.percentile(50)),
            p95_ms=_ms(fleet.stats.percentile(95)),
            p99_ms=_ms(fleet.stats.percentile(99)),
            outbox_total=outbox_total,
            outbox_max=outbox_max,
        )
        _report(result, options.devices * options.sessions, out)
        if not drained:
            raise ResoneraError(
                f"{fleet.pending} message(s) still unacknowledged after {options.timeout_s:.0f} s"
            )
        return result


def _where(database_url: str) -> str:
    """The database URL without its password."""
    return make_url(database_url).render_as_string(hide_password=True)


def _external_target(options: FleetSimOptions, workdir: Path) -> FleetTarget:
    """The broker, CA and database of a running deployment (``--broker``)."""
    assert options.broker is not None
    host, _, port_text = options.broker.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"--broker {options.broker!r} is not host:port")
    if options.ca is None or options.database_url is None:
        raise ConfigError(
            "--broker needs --ca (the fleet CA folder the broker trusts) and --database-url "
            "(the server database the devices are registered in)"
        )
    passphrase = os.environ.get(PASSPHRASE_ENV)
    if not passphrase:
        raise ConfigError(f"--broker needs the CA passphrase in ${PASSPHRASE_ENV}")
    if not (options.ca / "ca.crt").is_file():
        raise ConfigError(f"--ca {options.ca}: no fleet CA there (ca.crt missing)")
    return FleetTarget(
        workdir,
        FleetCA(options.ca),
        passphrase.encode(),
        host=host,
        port=int(port_text),
        database_url=options.database_url,
    )


def _report(result: FleetSimResult, sessions: int, out: TextIO) -> None:
    out.write(
        f"fleet-sim: {result.devices} devices ({result.connected} connected), {sessions} sessions, "
        f"{result.produced} messages (sessions, safety events, metrics)\n"
        f"  throughput   {result.rate:8.0f} msg/s acknowledged ({result.acked} in "
        f"{result.seconds:.1f} s)\n"
        f"  ack latency  p50 {result.p50_ms:.0f} ms  p95 {result.p95_ms:.0f} ms  "
        f"p99 {result.p99_ms:.0f} ms (queued in the outbox → server's ack back)\n"
        f"  stored       {result.stored} records, {result.duplicates} duplicates\n"
        f"  outboxes     {result.outbox_total} left in all, largest {result.outbox_max}\n"
    )
    out.flush()


def _raise_fd_limit(devices: int) -> None:
    """Each device holds a socket, a socket pair and its store's files: lift the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, devices * 12 + 256))
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if devices * 12 > wanted:
        raise ConfigError(
            f"{devices} devices need about {devices * 12} open files; the limit is {wanted} "
            "(raise it with ulimit -n)"
        )
