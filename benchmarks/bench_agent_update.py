"""What an agent update costs the device (issue 25), with a real bundle of this tree (the agent's
wheel and every locked wheel of the device, signed) on loopback:

1. download: ``BundleFetcher`` over HTTPS with the client certificate, from a local server;
2. verify: ``check_bundle`` (size, SHA-256, signature, every member);
3. install: ``AgentSlots.prepare`` (extract, venv, pip install at nice 10, ``--version``);
4. switch and downtime: the agent run by its launcher (as systemd runs it) with the slot prepared
   is asked for the bundle; switch = from the desired state's arrival to the old agent's exit (it
   finishes its shutdown: MQTT flush, store closed); downtime = from that exit to the new agent
   confirmed healthy (launcher, agent start, health check with the broker and its acked report;
   no MCU here, the simulation).

Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).parents[1] / "tests")]

from device_peer import ServerKey, config_file  # noqa: E402
from fleet import PASSPHRASE, run_tls_broker  # noqa: E402
from updates_support import update_key  # noqa: E402

from resonera.common.agent_update import (  # noqa: E402
    AgentUpdateTarget,
    check_bundle,
    extract_wheels,
    file_digest,
)
from resonera.device.backgrounds import ClientFiles  # noqa: E402
from resonera.device.settings import DeviceSettings  # noqa: E402
from resonera.device.updater.fetch import BundleFetcher  # noqa: E402
from resonera.device.updater.slots import AgentSlots  # noqa: E402
from resonera.engine.audio.calibration import packaged_calibration  # noqa: E402

N, NEXT = "0.1.0", "0.1.1"


def _support() -> Any:
    path = Path(__file__).parents[1] / "tests" / "device" / "test_updater_support.py"
    spec = importlib.util.spec_from_file_location("test_updater_support", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _wait(predicate: Any, timeout: float, what: str, poll: float = 0.02) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(poll)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    support = _support()
    with tempfile.TemporaryDirectory(prefix="bench-agent-update-") as tmp_dir:
        tmp = Path(tmp_dir)
        started = time.monotonic()
        bundle = support.agent_bundle(tmp / "bundles", NEXT)
        built = time.monotonic() - started
        size, sha256 = file_digest(bundle)
        target = AgentUpdateTarget(NEXT, sha256, size, "bench")
        with run_tls_broker(tmp / "fleet") as tls:
            server = support.BundleServer(tls.ca, PASSPHRASE, tmp / "https")
            server.state.serve(sha256, bundle)
            mqtt = tls.device("bench-upd")
            assert mqtt.cert_file is not None and mqtt.key_file is not None
            files = ClientFiles(mqtt.cert_file, mqtt.key_file)
            data = tmp / "data"
            slots = AgentSlots.of(data)
            slots.adopt(Path(sys.prefix))
            fetcher = BundleFetcher(
                data / "agent" / "downloads", server.state.url, lambda: files, tls.ca.cert_path
            )
            t0 = time.monotonic()
            path = fetcher.fetch(target, lambda: False)
            t1 = time.monotonic()
            verified = check_bundle(
                path, target=target, pinned=update_key().pinned(), running_version=N
            )
            t2 = time.monotonic()
            slots.prepare(NEXT, sha256, lambda folder: extract_wheels(verified, folder))
            t3 = time.monotonic()
            fetcher.discard(sha256)
            peer = support.TlsPeer(tls.server())
            key = ServerKey()
            settings = DeviceSettings.model_validate(
                {
                    "device_id": "bench-upd",
                    "data_dir": data,
                    "mqtt": mqtt,
                    "simulation": True,
                    "sink": "null",
                    "calibration_file": packaged_calibration(),
                    "server_public_key": key.public_b64,
                    "server_url": server.state.url,
                    "enroll_ca_file": tls.ca.cert_path,
                    "update_public_keys": [update_key().public_key],
                    "sync": {"reconnect_jitter_s": 0.0},
                }
            )
            cfg = config_file(settings, tmp / "device.toml")
            unit = support.Unit(slots.directory / "launch.py", cfg, tmp / "device.log").start()
            try:
                _wait(settings.control_socket_path.exists, 60, "the agent N")
                time.sleep(2.0)  # connected and idle
                asked = time.monotonic()
                peer.publish_desired(
                    settings.device_id,
                    key.payload(settings.device_id, 2, agent_update=target.to_json()),
                )
                exited = _wait(lambda: bool(unit.exits), 120, "the old agent's exit", 0.005)
                healthy = _wait(
                    lambda: slots.state()["good"]["slot"] == "b", 180, "the new agent's health"
                )
            finally:
                unit.stop()
                peer.close()
                server.close()
    mb = size / 1e6
    print(f"agent update {N} -> {NEXT}: bundle {mb:.1f} MB ({len(verified.manifest.files)} wheels)")
    print(f"  bundle built from the tree in {built:.1f} s (pip's cache warm after the first)")
    print(
        f"  download (HTTPS, client certificate, loopback) {t1 - t0:5.2f} s ({mb / (t1 - t0):.0f} MB/s)"
    )
    print(f"  verify (check_bundle)                          {t2 - t1:5.2f} s")
    print(f"  install (extract, venv, pip at nice 10)        {t3 - t2:5.2f} s")
    print(f"  switch (desired state -> old agent exited)     {exited - asked:5.2f} s")
    print(f"  downtime (old agent exited -> new one healthy) {healthy - exited:5.2f} s")


if __name__ == "__main__":
    main()
