"""The desired state through a real mosquitto: verified, applied or refused, always reported, and taken
afresh after a reconnect."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from device_peer import Peer, ServerKey, device_settings
from support import Mosquitto, run_mosquitto, wait_until

from resonera.common.signing import sign_document_ed25519
from resonera.device.desired_state import DesiredStateApplier
from resonera.device.sync import DeviceSync

_ids = itertools.count()


@pytest.fixture
def server_key() -> ServerKey:
    return ServerKey()


def _device(tmp_path: Path) -> str:
    return f"desired-{next(_ids)}-{tmp_path.name[-6:]}"


def _outcome(report: dict[str, object]) -> dict[str, object]:
    """A report without what every report carries (the engine's capabilities, which differ per
    build) and the programs' outcomes (none are prescribed here: an empty list when reviewed)."""
    assert "capabilities" in report
    assert report.get("programs", []) == []
    return {k: v for k, v in report.items() if k not in ("capabilities", "programs")}


def _wait_reports(peer: Peer, count: int) -> list[dict[str, object]]:
    wait_until(lambda: len(peer.reports()) >= count, timeout=15, what=f"{count} report(s)")
    return peer.reports()


def test_a_newer_document_is_applied_and_reported_and_the_agent_uses_its_profile(
    mosquitto: Mosquitto, peer: Peer, server_key: ServerKey, tmp_path: Path
) -> None:
    device = _device(tmp_path)
    settings = device_settings(mosquitto, tmp_path, device, server_public_key=server_key.public_b64)
    store = settings.open_store()
    peer.publish_desired(device, server_key.payload(device, 3))
    with DeviceSync(settings, store) as sync:
        [report] = _wait_reports(peer, 1)
        assert _outcome(report) == {"desired_version": 3, "status": "applied"}
        assert sync.drain(timeout_s=10)
    applied = store.applied_desired()
    assert applied is not None and applied.version == 3
    # the profile's 80 dBA, narrowed by the limits' 75 dBA; the session length by the limits
    profile = store.applied_profile()
    assert profile is not None
    assert profile.max_level_dba == 75.0
    assert profile.max_session_s == 3600.0


def test_bad_documents_are_refused_and_each_refusal_reported(
    mosquitto: Mosquitto, peer: Peer, server_key: ServerKey, tmp_path: Path
) -> None:
    device = _device(tmp_path)
    settings = device_settings(mosquitto, tmp_path, device, server_public_key=server_key.public_b64)
    store = settings.open_store()
    first = server_key.payload(device, 5)
    peer.publish_desired(device, first)
    with DeviceSync(settings, store):
        _wait_reports(peer, 1)

        tampered = json.loads(server_key.payload(device, 6))
        tampered["limits"]["max_level_dba"] = 85.0
        wrong_key = sign_document_ed25519(
            Ed25519PrivateKey.generate(), {"device": device, "version": 7}
        )
        forged = {**wrong_key, "sig": {**wrong_key["sig"], "key_id": tampered["sig"]["key_id"]}}
        cases = [
            (json.dumps(tampered).encode(), "does not verify"),
            (json.dumps(wrong_key).encode(), "unknown key"),
            (json.dumps(forged).encode(), "does not verify"),
            (server_key.payload(device, 4), "not newer than the applied version 5"),  # rollback
            (server_key.payload("another-device", 9), "for device 'another-device'"),
            (
                server_key.payload(
                    device, 8, limits={"max_level_dba": 40, "max_session_minutes": 60}
                ),
                "below the lowest",
            ),
            (b"{not json", "not valid JSON"),
        ]
        for count, (payload, _) in enumerate(cases, start=2):
            peer.publish_desired(device, payload)
            _wait_reports(peer, count)
        # a replay: the genuine document 5 comes back after 6 was applied
        peer.publish_desired(device, server_key.payload(device, 6))
        _wait_reports(peer, len(cases) + 2)
        peer.publish_desired(device, first)
        reports = _wait_reports(peer, len(cases) + 3)

    assert _outcome(reports[0]) == {"desired_version": 5, "status": "applied"}
    for report, (_, reason) in zip(reports[1:], cases, strict=False):
        assert report["status"] == "refused"
        assert reason in str(report["reason"])
    assert _outcome(reports[-2]) == {"desired_version": 6, "status": "applied"}
    assert reports[-1]["status"] == "refused"
    assert reports[-1]["desired_version"] == 5
    assert "replay or rollback refused" in str(reports[-1]["reason"])
    applied = store.applied_desired()
    assert applied is not None and applied.version == 6


def test_without_a_pinned_key_nothing_is_applied(
    mosquitto: Mosquitto, peer: Peer, server_key: ServerKey, tmp_path: Path
) -> None:
    device = _device(tmp_path)
    settings = device_settings(mosquitto, tmp_path, device)
    store = settings.open_store()
    peer.publish_desired(device, server_key.payload(device, 1))
    with DeviceSync(settings, store):
        [report] = _wait_reports(peer, 1)
    assert report["status"] == "refused"
    assert "no server key is pinned" in str(report["reason"])
    assert store.applied_desired() is None


def test_after_a_reconnect_the_retained_document_is_taken_afresh(
    server_key: ServerKey, tmp_path: Path
) -> None:
    """A broker without persistence forgets the device's session and subscriptions on restart: only
    a device that subscribes again after every connect sees the document published meanwhile."""
    device = _device(tmp_path)
    with run_mosquitto(tmp_path / "broker") as broker:
        settings = device_settings(
            broker, tmp_path, device, server_public_key=server_key.public_b64
        )
        store = settings.open_store()
        peer = Peer(broker)
        peer.publish_desired(device, server_key.payload(device, 1))
        with DeviceSync(settings, store) as sync:
            _wait_reports(peer, 1)
            peer.close()
            broker.stop()
            wait_until(lambda: not sync.connected, what="the device to notice")
            broker.start()
            peer = Peer(broker)
            peer.publish_desired(device, server_key.payload(device, 2))
            wait_until(lambda: store.desired_version() == 2, timeout=30, what="version 2")
            reports = _wait_reports(peer, 1)
            peer.close()
    assert _outcome(reports[-1]) == {"desired_version": 2, "status": "applied"}


def test_the_same_retained_document_again_is_neither_reapplied_nor_reported(
    mosquitto: Mosquitto, peer: Peer, server_key: ServerKey, tmp_path: Path
) -> None:
    device = _device(tmp_path)
    settings = device_settings(mosquitto, tmp_path, device, server_public_key=server_key.public_b64)
    store = settings.open_store()
    peer.publish_desired(device, server_key.payload(device, 1))
    for _ in range(2):  # two connects: the retained copy arrives twice
        with DeviceSync(settings, store) as sync:
            wait_until(lambda: store.desired_version() == 1, what="version 1")
            assert sync.drain(timeout_s=10)
    assert [_outcome(r) for r in peer.reports()] == [{"desired_version": 1, "status": "applied"}]


def test_during_a_session_raising_waits_and_lowering_applies_at_once(
    server_key: ServerKey, tmp_path: Path
) -> None:
    device = "session-dev"
    settings = device_settings(None, tmp_path, device, server_public_key=server_key.public_b64)
    store = settings.open_store()
    lowered: list[float] = []
    applier = DesiredStateApplier(
        store,
        device,
        settings.pinned_server_key(),
        settings.profile,
        on_lowered=lambda p: lowered.append(p.max_level_dba),
    )
    assert applier.handle(server_key.payload(device, 1)).outcome == "applied"  # 75 dBA
    applier.session_started()
    raised = server_key.payload(
        device, 2, limits={"max_level_dba": 80.0, "max_session_minutes": 60}
    )
    assert applier.handle(raised).outcome == "deferred"
    assert store.applied_profile() is not None
    assert store.applied_profile().max_level_dba == 75.0  # type: ignore[union-attr]
    lower = server_key.payload(device, 3, limits={"max_level_dba": 70.0, "max_session_minutes": 60})
    assert applier.handle(lower).outcome == "applied"
    assert lowered == [70.0]
    ended = applier.session_ended()
    assert ended is None  # the deferred raise was superseded by the newer, lower document
    assert store.applied_profile().max_level_dba == 70.0  # type: ignore[union-attr]
    applier.session_started()
    assert applier.handle(
        server_key.payload(device, 4, limits={"max_level_dba": 78.0, "max_session_minutes": 60})
    ).outcome == ("deferred")
    ended = applier.session_ended()
    assert ended is not None and ended.version == 4
    assert store.applied_profile().max_level_dba == 78.0  # type: ignore[union-attr]
    statuses = [m.payload for m in store.pending(limit=100) if m.kind == "reported"]
    bodies = [json.loads(p)["body"]["status"] for p in statuses]
    assert bodies == ["applied", "deferred", "applied", "deferred", "applied"]


def test_a_session_enforces_the_applied_desired_profile_over_the_settings(
    server_key: ServerKey, tmp_path: Path
) -> None:
    from resonera.common.errors import ProgramError
    from resonera.common.program import builtin_program
    from resonera.device.session import play_standalone
    from resonera.engine.audio.sinks import NullSink

    device = "profile-dev"
    settings = device_settings(None, tmp_path, device, server_public_key=server_key.public_b64)
    store = settings.open_store()
    applier = DesiredStateApplier(store, device, settings.pinned_server_key(), settings.profile)
    short = server_key.payload(device, 1, limits={"max_level_dba": 75.0, "max_session_minutes": 10})
    assert applier.handle(short).outcome == "applied"
    # the settings allow 3 h; the clinician's limit of 10 minutes is what holds
    with pytest.raises(ProgramError, match="at most 600 s"):
        play_standalone(settings, store, builtin_program("alpha-relax"), NullSink())
    assert store.sessions() == []
