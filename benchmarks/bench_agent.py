"""The device agent's speed and footprint (issue 6), against a real mosquitto on loopback.

1. Sync of a 10,000-record backlog (a week offline) through mosquitto to an acking peer that acks in
   batches, as the server does: time and rate, against the raw paho publish rate (publisher →
   mosquitto → subscriber, same payload size, QoS 1) measured in the same run. The device runs with
   its rate bound raised to the maximum (10,000/s); at the default bound (50/s) the drain is paced on
   purpose.
2. ``resonera-device run`` as a subprocess: peak RSS while it plays a 20-minute program to a NullSink
   (unpaced, so the synthesis runs flat out: a worst case for CPU, a fair one for memory), then CPU
   while idle and connected, both from ``/proc`` of the process. Targets: RSS ≤ 100 MB, idle CPU
   ≤ 1 % of a core. The service runs as on a device: plain ``sqlite3`` store and ledger, glibc heap
   settings (``device/memory.py``). Measured twice: without spoken prompts, then with the catalogue built
   (``resonera-device prompts build``, as a device is provisioned: the product runs so).

Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1] / "tests")]

import paho.mqtt.client as paho  # noqa: E402
from factories import make_record  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from support import Mosquitto, run_mosquitto  # noqa: E402

from resonera.common import topics  # noqa: E402
from resonera.common.envelope import Ack, decode_envelope  # noqa: E402
from resonera.common.settings import MqttSettings  # noqa: E402
from resonera.device.service import send_command  # noqa: E402
from resonera.device.settings import DeviceSettings  # noqa: E402
from resonera.device.sync import DeviceSync  # noqa: E402

BACKLOG = 10_000
BIN = Path(sys.executable).parent / "resonera-device"
TICKS = os.sysconf("SC_CLK_TCK")


class BatchAckingPeer:
    """Acks what it received every 20 ms, up to 1,000 ids an ack (the server's batch commit)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.received: set[str] = set()
        self._todo: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(topics.UP_WILDCARD, qos=1)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._acker, daemon=True)
        self._thread.start()

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        envelope = decode_envelope(bytes(message.payload))
        with self._lock:
            self.received.add(envelope.id)
            self._todo.setdefault(envelope.device, []).append(envelope.id)

    def _acker(self) -> None:
        while not self._stop.wait(0.02):
            with self._lock:
                todo, self._todo = self._todo, {}
            for device, ids in todo.items():
                for i in range(0, len(ids), 1000):
                    ack = Ack.of(ids[i : i + 1000]).to_bytes()
                    self.client.publish(topics.ack(device), ack, qos=1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.client.loop_stop()
        self.client.disconnect()


def raw_paho_rate(broker: Mosquitto, payload: bytes) -> float:
    got = threading.Event()
    count = [0]

    def on_message(_c: paho.Client, _u: object, _m: paho.MQTTMessage) -> None:
        count[0] += 1
        if count[0] == BACKLOG:
            got.set()

    sub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    sub.on_message = on_message
    sub.connect(broker.host, broker.port)
    sub.subscribe("bench/raw", qos=1)
    sub.loop_start()
    pub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    pub.max_queued_messages_set(0)
    pub.max_inflight_messages_set(100)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    time.sleep(0.3)
    start = time.perf_counter()
    for _ in range(BACKLOG):
        pub.publish("bench/raw", payload, qos=1)
    got.wait(timeout=120)
    elapsed = time.perf_counter() - start
    for client in (pub, sub):
        client.loop_stop()
        client.disconnect()
    return count[0] / elapsed


def bench_backlog(broker: Mosquitto, folder: Path) -> None:
    settings = DeviceSettings(
        device_id="bench-backlog",
        data_dir=folder / "backlog",
        mqtt=MqttSettings(host=broker.host, port=broker.port),
        sync={"max_messages_per_s": 10_000.0, "batch_size": 500, "reconnect_jitter_s": 0.0},
    )
    store = settings.open_store()
    start = time.perf_counter()
    for _ in range(BACKLOG):
        store.record_session(settings.device_id, make_record())
    queued = time.perf_counter() - start
    payload = store.pending(limit=1)[0].payload
    raw = raw_paho_rate(broker, payload)
    peer = BatchAckingPeer(broker)
    try:
        start = time.perf_counter()
        with DeviceSync(settings, store) as sync:
            drained = sync.drain(timeout_s=300)
        elapsed = time.perf_counter() - start
    finally:
        peer.close()
    rate = BACKLOG / elapsed
    print(f"backlog of {BACKLOG} sealed records ({len(payload)}-byte envelopes)")
    print(f"  written to the store in {queued:.1f} s ({BACKLOG / queued:,.0f} records/s, each a")
    print("  synchronous=FULL transaction with its outbox message)")
    print(
        f"  synced in {elapsed:.1f} s: {rate:,.0f} records/s, every one acked and deleted"
        f"{'' if drained else ' (NOT fully drained)'}"
    )
    print(f"  raw paho publish → mosquitto → subscriber: {raw:,.0f} messages/s")
    print(f"  sync at {rate / raw * 100:.0f} % of the raw rate (open, publish, ack, delete)")
    print(
        f"  at the default bound of 50 messages/s the same backlog drains in {BACKLOG / 50:.0f} s"
    )


def _status(pid: int) -> dict[str, int]:
    """The kB figures of ``/proc/PID/status`` (VmRSS, VmHWM, RssAnon, RssFile, ...)."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {
        name: int(value.split()[0])
        for name, value in (line.split(":", 1) for line in lines)
        if value.strip().endswith("kB")
    }


def _proc(pid: int) -> tuple[int, int, int]:
    """(cpu ticks, current RSS kB, peak RSS kB) of ``pid``."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(stat[11]) + int(stat[12])
    status = _status(pid)
    return ticks, status["VmRSS"], status["VmHWM"]


def bench_service(broker: Mosquitto, folder: Path, *, prompts: bool) -> None:
    import tomli_w

    from resonera.engine.audio.calibration import packaged_calibration

    name = "service-prompts" if prompts else "service"
    data = folder / name
    config = {
        "device_id": f"bench-{name}",
        "data_dir": str(data),
        "simulation": True,
        "sink": "null",
        "calibration_file": str(packaged_calibration()),
        "mqtt": {"host": broker.host, "port": broker.port},
    }
    cfg = folder / f"{name}.toml"
    cfg.write_text(tomli_w.dumps(config))
    if prompts:
        subprocess.run(
            [str(BIN), "prompts", "build", "--config", str(cfg)],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=600,
        )
    socket_path = data / "run.sock"
    peer = BatchAckingPeer(broker)
    process = subprocess.Popen(
        [str(BIN), "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        _, rss_start, _ = _proc(process.pid)
        at_start = _status(process.pid)
        start = time.perf_counter()
        print(send_command(socket_path, "play alpha-relax").replace("ok ", "  service: "))
        peak_sampled = 0
        while json.loads(send_command(socket_path, "status"))["playing"] is not None:
            peak_sampled = max(peak_sampled, _proc(process.pid)[1])
            time.sleep(0.05)
        played_in = time.perf_counter() - start
        _, _, hwm = _proc(process.pid)
        # idle and connected: let the session drain, then measure 10 s of CPU
        time.sleep(2.0)
        ticks0, _, _ = _proc(process.pid)
        t0 = time.perf_counter()
        time.sleep(10.0)
        ticks1, rss_idle, _ = _proc(process.pid)
        idle = (ticks1 - ticks0) / TICKS / (time.perf_counter() - t0) * 100
        status = json.loads(send_command(socket_path, "status"))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        peer.close()
    with_prompts = "with spoken prompts built" if prompts else "without spoken prompts"
    print(f"resonera-device run (simulation, NullSink, {with_prompts}), pid {process.pid}")
    print(f"  RSS at start {rss_start / 1024:.1f} MB; 20-min program rendered in {played_in:.1f} s")
    # heap and Python objects vs the pages of mapped code (numpy, cryptography, pydantic-core, ...)
    print(
        f"  of which anonymous {at_start['RssAnon'] / 1024:.1f} MB, "
        f"mapped files {at_start['RssFile'] / 1024:.1f} MB"
    )
    peak = max(hwm, peak_sampled)
    print(
        f"  peak RSS while playing {peak / 1024:.1f} MB (target ≤ 100 MB); "
        f"idle {rss_idle / 1024:.1f} MB"
    )
    # what the session itself (pre-flight, renderer, noise tables, chain) adds to the service
    print(f"  playing added {(peak - rss_start) / 1024:.1f} MB to the RSS at start")
    print(
        f"  CPU idle, connected ({status['link']}, outbox {status['outbox_depth']}): "
        f"{idle:.2f} % of a core (target ≤ 1 %)"
    )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        folder = Path(tmp)
        with run_mosquitto(folder / "broker") as broker:
            bench_backlog(broker, folder)
            bench_service(broker, folder, prompts=False)
            bench_service(broker, folder, prompts=True)


if __name__ == "__main__":
    main()
