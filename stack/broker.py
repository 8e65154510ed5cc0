"""The broker the demo runs on: mosquitto when installed, else the in-process ``amqtt`` broker.

mosquitto speaks MQTT 5 and shared subscriptions; amqtt speaks MQTT 3.1.1 without ``$share``, so the
clients are told which protocol to use and ingest subscribes to the plain wildcard there.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from resonera.common.errors import ResoneraError
from resonera.provisioning.broker import BrokerConfig
from resonera.stack.processes import stop_process, wait_for_port

log = logging.getLogger(__name__)


class BrokerStartError(ResoneraError):
    """The broker could not be started."""


class RunningBroker(Protocol):
    name: str
    host: str
    port: int
    protocol: Literal["5", "3.1.1"]
    shared_subscriptions: bool

    def stop(self) -> None: ...


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )


@dataclass
class MosquittoBroker:
    port: int
    process: subprocess.Popen[bytes]
    host: str = "127.0.0.1"
    name: str = "mosquitto"
    protocol: Literal["5", "3.1.1"] = "5"
    shared_subscriptions: bool = True

    @classmethod
    def start(cls, binary: str, port: int, workdir: Path) -> MosquittoBroker:
        workdir.mkdir(parents=True, exist_ok=True)
        log_file = workdir / "mosquitto.log"
        config = BrokerConfig(port=port, persistence_dir=workdir, log_file=log_file)
        config_path = config.write(workdir / "mosquitto.conf")
        process = subprocess.Popen(
            [binary, "-c", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # its own process group: a terminal's Ctrl-C (or hangup) reaches the demo, which stops
            # the broker last, after the parts that still talk to it
            process_group=0,
        )
        if not wait_for_port(port, 10.0, alive=lambda: process.poll() is None):
            err = process.stderr.read().decode().strip() if process.stderr is not None else ""
            process.kill()
            detail = err.splitlines()[-1] if err else f"see {log_file}"
            raise BrokerStartError(f"mosquitto did not start on 127.0.0.1:{port}: {detail}")
        return cls(port=port, process=process)

    def stop(self) -> None:
        stop_process(self.process, group=True)


class AmqttBroker:
    """amqtt's broker on an asyncio loop of its own thread."""

    name = "amqtt"
    host = "127.0.0.1"
    protocol: Literal["5", "3.1.1"] = "3.1.1"
    shared_subscriptions = False

    def __init__(self, port: int) -> None:
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="amqtt", daemon=True)
        self._broker: Any = None

    @classmethod
    def start(cls, port: int) -> AmqttBroker:
        try:
            # Here, not at the top: amqtt is optional (the broker extra), the fallback when there is
            # no mosquitto; its absence is this error, not a failed import of the whole stack.
            from amqtt.broker import Broker
        except ImportError:
            raise BrokerStartError(
                "neither mosquitto nor the amqtt package is installed "
                "(apt-get install mosquitto, or pip install 'resonera[broker]')"
            ) from None
        self = cls(port)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        self._thread.start()

        async def _start() -> Any:
            broker = Broker(config)
            await broker.start()
            return broker

        try:
            self._broker = asyncio.run_coroutine_threadsafe(_start(), self._loop).result(timeout=15)
        except Exception as exc:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise BrokerStartError(
                f"amqtt broker did not start on 127.0.0.1:{port}: {exc}"
            ) from None
        return self

    def stop(self) -> None:
        if self._broker is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(
                    timeout=10
                )
            except Exception as exc:  # shutting down: report, never mask the caller's outcome
                log.warning("amqtt shutdown: %s", exc)
            self._broker = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def start_broker(
    port: int, workdir: Path, prefer: Literal["auto", "mosquitto", "amqtt"] = "auto"
) -> RunningBroker:
    """Start mosquitto if installed (or asked for), else amqtt in-process."""
    binary = find_mosquitto()
    if prefer == "mosquitto" and binary is None:
        raise BrokerStartError("mosquitto is not installed (apt-get install mosquitto)")
    if binary is not None and prefer != "amqtt":
        return MosquittoBroker.start(binary, port, workdir)
    return AmqttBroker.start(port)
