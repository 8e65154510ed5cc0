"""Agent updates end to end (issue 25), every hop real: a device agent on version N, started as
systemd starts it (the launcher in ``data_dir/agent``, started again after each exit), connected
to mosquitto with mutual TLS and watched by the safety-MCU simulator on its pty, is asked by a
signed desired state for the bundle of N+1 built from this tree; it fetches it over HTTPS with its
client certificate, checks it, installs it beside itself, switches between sessions, and the new
agent proves itself healthy (MCU armed, broker up, ``installed`` acknowledged). A bundle whose
signature no pinned key made and one with a corrupt file are refused (``failed``) with nothing
switched; an agent that exits at start is rolled back and the previous one says why."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from device_peer import ServerKey, config_file
from fleet import PASSPHRASE, run_tls_broker
from support import wait_until
from updates_support import update_key

from resonera.common.agent_update import AgentUpdateTarget, file_digest
from resonera.device.settings import DeviceSettings
from resonera.device.updater.slots import AgentSlots
from resonera.engine.audio.calibration import packaged_calibration
from resonera.hardware.firmware.config import BoardConfig
from resonera.hardware.sim import Simulator

pytestmark = [
    pytest.mark.slow,
    pytest.mark.real_clock,  # certificates, the launcher's trial deadline
    pytest.mark.realtime,  # the simulated MCU's watchdogs
    pytest.mark.timeout(900),  # each builds or installs a real bundle of the locked wheels
]

N = "0.1.0"  # the test venv's agent
NEXT = "0.1.1"


def load_support() -> Any:
    path = Path(__file__).parents[1] / "device" / "test_updater_support.py"
    if "test_updater_support" in sys.modules:
        return sys.modules["test_updater_support"]
    spec = importlib.util.spec_from_file_location("test_updater_support", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


support = load_support()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bundles")


@dataclass
class Device:
    settings: DeviceSettings
    slots: AgentSlots
    unit: Any
    peer: Any
    server: Any
    key: ServerKey
    sim: Simulator

    def ask(self, desired_version: int, bundle: Path, version: str) -> AgentUpdateTarget:
        size, sha256 = file_digest(bundle)
        target = AgentUpdateTarget(version, sha256, size, f"rollout-{desired_version}")
        self.server.state.serve(sha256, bundle)
        payload = self.key.payload(
            self.settings.device_id, desired_version, agent_update=target.to_json()
        )
        self.peer.publish_desired(self.settings.device_id, payload)
        return target

    def status(self) -> dict[str, Any] | None:
        return support.agent_status(self.settings.control_socket_path)  # type: ignore[no-any-return]

    def running(self, version: str) -> bool:
        status = self.status()
        return status is not None and status["agent_version"] == version

    def reports(self, state: str) -> list[dict[str, Any]]:
        return [r for r in self.peer.updates() if r["state"] == state]


@contextmanager
def device(tmp_path: Path, device_id: str, **changes: Any) -> Iterator[Device]:
    """A device on version N (the test venv adopted as slot a), run by its launcher."""
    with (
        run_tls_broker(tmp_path / "fleet") as tls,
        Simulator(BoardConfig(board_id="upd-board")) as sim,
    ):
        server = support.BundleServer(tls.ca, PASSPHRASE, tmp_path / "https")
        peer = support.TlsPeer(tls.server())
        key = ServerKey()
        settings = DeviceSettings.model_validate(
            {
                "device_id": device_id,
                "data_dir": tmp_path / "data",
                "mqtt": tls.device(device_id),
                "serial_url": sim.port_path,
                "sink": "null",
                "calibration_file": packaged_calibration(),
                "server_public_key": key.public_b64,
                "server_url": server.state.url,
                "enroll_ca_file": tls.ca.cert_path,
                "update_public_keys": [update_key().public_key],
                "update_health_timeout_s": 90.0,
                "sync": {"reconnect_jitter_s": 0.0, "resend_after_s": 2.0},
                **changes,
            }
        )
        cfg = config_file(settings, tmp_path / "device.toml")
        slots = AgentSlots.of(settings.data_dir)
        slots.adopt(Path(sys.prefix))
        unit = support.Unit(slots.directory / "launch.py", cfg, tmp_path / "device.log").start()
        dev = Device(settings, slots, unit, peer, server, key, sim)
        try:
            wait_until(lambda: dev.running(N), 60, "the agent N to answer")
            yield dev
        finally:
            unit.stop()
            peer.close()
            server.close()
        assert sim.error is None


def test_a_device_updates_from_n_to_n_plus_1_built_from_this_tree(
    tmp_path: Path, bundles: Path
) -> None:
    bundle = support.agent_bundle(bundles, NEXT)
    with device(tmp_path, "upd-next") as dev:
        dev.ask(2, bundle, NEXT)
        wait_until(lambda: bool(dev.reports("installed")), 300, "the installed report")
        wait_until(lambda: dev.running(NEXT), 30, "the new agent to answer")
        # the ack reached the peer a moment before the agent
        wait_until(lambda: dev.slots.state()["trial"] is None, 30, "the trial to be confirmed")
        state = dev.slots.state()
        assert state["good"] == {"slot": "b", "version": NEXT}
        assert dev.slots.current() == "b"
        assert state["update_keys"] == [update_key().public_key]
        # the old agent restarted for the switch (75); the new one runs on
        assert dev.unit.exits == [75]
        status = dev.status()
        assert status is not None and status["safety_link"] == "up"
    steps = [r["state"] for r in dev.peer.updates()]
    assert steps == ["downloading", "verifying", "installing", "switching", "installed"]
    assert all(r["from_version"] == N and r["to_version"] == NEXT for r in dev.peer.updates())
    assert dev.reports("installed")[0]["rollout"] == "rollout-2"


def test_a_bad_signature_and_a_corrupt_file_are_refused_and_nothing_is_switched(
    tmp_path: Path, bundles: Path
) -> None:
    other = support.agent_bundle(bundles, NEXT, key=Ed25519PrivateKey.generate())
    good = support.agent_bundle(bundles, NEXT)
    corrupt = tmp_path / "corrupt.tar"
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a wheel: the tar is still a tar
    corrupt.write_bytes(bytes(data))
    with device(tmp_path, "upd-refused") as dev:
        dev.ask(2, other, NEXT)
        wait_until(lambda: len(dev.reports("failed")) == 1, 120, "the bad signature's failure")
        dev.ask(3, corrupt, NEXT)
        wait_until(lambda: len(dev.reports("failed")) == 2, 120, "the corrupt file's failure")
        signature, damaged = (r["reason"] for r in dev.reports("failed"))
        assert "pinned" in signature or "key" in signature, signature
        assert "SHA-256" in damaged or "sha256" in damaged.lower(), damaged
        assert dev.running(N) and dev.unit.exits == []
        state = dev.slots.state()
        assert state["good"]["slot"] == "a" and state["trial"] is None
        assert list((dev.slots.directory / "downloads").iterdir()) == []
    assert "installing" not in [r["state"] for r in dev.peer.updates()]


def test_an_agent_that_fails_its_health_check_is_rolled_back_and_the_reason_reported(
    tmp_path: Path, bundles: Path
) -> None:
    broken = support.agent_bundle(bundles, "0.1.2", broken=True)
    with device(tmp_path, "upd-broken") as dev:
        dev.ask(2, broken, "0.1.2")
        wait_until(lambda: bool(dev.reports("rolled_back")), 300, "the rolled_back report")
        wait_until(lambda: dev.running(N), 60, "the previous agent to answer again")
        [rolled] = dev.reports("rolled_back")
        assert rolled["from_version"] == N and rolled["to_version"] == "0.1.2"
        assert "exited before confirming its health" in rolled["reason"]
        state = dev.slots.state()
        assert state["good"]["slot"] == "a" and state["trial"] is None
        assert state["failure"]["reported"] is True
        assert dev.unit.exits[:2] == [75, 75]  # switch, then the launcher's rollback
        assert dev.reports("installed") == []
    # the rolled-back bundle is not tried again by the previous agent
    assert [r["state"] for r in dev.peer.updates()].count("downloading") == 1
