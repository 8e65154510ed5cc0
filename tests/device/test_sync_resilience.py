"""Loss-free sync under the failures a device meets, all through a real mosquitto: the broker down
during a session, the device killed mid-sync, the server away while the broker is up, a power cut
during writes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from device_peer import Peer, config_file, device_settings
from factories import make_record
from support import Mosquitto, wait_until

from resonera.common.program import builtin_program
from resonera.device.session import play_standalone
from resonera.device.store import DeviceStore
from resonera.device.sync import DeviceSync
from resonera.engine.audio.sinks import NullSink

BIN = Path(sys.executable).parent / "resonera-device"
#: How many times the syncing device is SIGKILLed at a random point (about a second each).
KILLS = 25


def test_broker_down_during_a_session_it_plays_and_every_record_arrives_once_later(
    private_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    private_mosquitto.stop()
    settings = device_settings(
        private_mosquitto, tmp_path, "offline-session", sync={"resend_after_s": 30.0}
    )
    store = settings.open_store()
    with DeviceSync(settings, store) as sync:
        record = play_standalone(settings, store, builtin_program("demo-alpha"), NullSink())
        assert record.outcome == "completed"
        pending = store.pending(limit=1000)
        queued = {m.message_id for m in pending}
        # the session and its safety event (simulation mode); its normal start and end are counted
        assert sorted(m.kind for m in pending) == ["event", "session"]
        assert not sync.connected
        private_mosquitto.start()
        peer = Peer(private_mosquitto)
        try:
            assert sync.drain(timeout_s=30)
            assert set(peer.stored) == queued
            assert set(peer.deliveries.values()) == {1}
        finally:
            peer.close()
    assert [s.session_id for s in store.sessions()] == [record.session_id]


def test_device_killed_at_random_points_during_sync_loses_nothing(
    mosquitto: Mosquitto, peer: Peer, tmp_path: Path
) -> None:
    settings = device_settings(
        mosquitto,
        tmp_path,
        f"killed-{tmp_path.name[-6:]}",
        sync={"max_messages_per_s": 200.0, "batch_size": 20, "resend_after_s": 5.0},
    )
    cfg = config_file(settings, tmp_path / "device.toml")
    store = settings.open_store()
    ids = [store.record_session(settings.device_id, make_record()).id for _ in range(500)]
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    depths = []
    for _ in range(KILLS):
        process = subprocess.Popen(
            [str(BIN), "sync", "--config", str(cfg), "--timeout", "30"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            process.wait(timeout=rng.uniform(0.8, 2.0))  # it starts in about a second
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
        depths.append(store.outbox_depth())
    final = subprocess.run(
        [str(BIN), "sync", "--config", str(cfg), "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert final.returncode == 0, (seed, final.stdout, final.stderr)
    reopened = settings.open_store()
    assert reopened.integrity_check() == "ok"
    assert reopened.outbox_depth() == 0
    # every record at least once; stored by id (as the server does), each exactly once
    sessions = {e.id for e in peer.of_kind("session")}
    assert sessions == set(ids), f"seed {seed}"
    assert len(peer.of_kind("session")) == len(ids)
    duplicates = sum(n - 1 for i, n in peer.deliveries.items() if i in sessions)
    print(f"{KILLS} kills (seed {seed}), outbox after each: {depths}; {duplicates} duplicates")


def test_server_away_while_the_broker_is_up_nothing_leaves_the_outbox(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    silent = Peer(mosquitto, ack=False)
    try:
        settings = device_settings(
            mosquitto,
            tmp_path,
            f"no-server-{tmp_path.name[-6:]}",
            sync={"resend_after_s": 0.5, "max_resend_after_s": 4.0},
        )
        store = settings.open_store()
        store.record_session(settings.device_id, make_record())
        store.queue_message(settings.device_id, "metrics", {"outbox_depth": 1})
        store.queue_message(settings.device_id, "reported", {"desired_version": 1})
        ids = {m.message_id for m in store.pending()}
        with DeviceSync(settings, store):
            # delivered, resent with backoff, and still not deleted: PUBACK is not the server's ack
            wait_until(
                lambda: all(silent.deliveries[i] >= 2 for i in ids), timeout=20, what="resends"
            )
            assert {m.message_id for m in store.pending()} == ids
        assert store.outbox_depth() == 3
    finally:
        silent.close()


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from factories import make_record
    from resonera.device.store import DeviceStore
    store = DeviceStore(Path(sys.argv[1]))
    while True:
        envelope = store.record_session("dev-power", make_record())
        acked = envelope.seq % 3 == 0
        if acked:
            store.acknowledge([envelope.id])
        # one write per line (PYTHONUNBUFFERED makes print write each piece on its own)
        sys.stdout.write(f"{envelope.id} {envelope.body['session_id']} {int(acked)}\\n")
        sys.stdout.flush()
    """
)


def test_power_cut_during_writes_leaves_an_intact_store(tmp_path: Path) -> None:
    path = tmp_path / "device.db"
    tests_dir = str(Path(__file__).parent.parent)
    rng = random.Random()
    committed: dict[str, tuple[str, bool]] = {}
    for _ in range(5):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), tests_dir],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        first = writer.stdout.readline()  # writing has begun
        time.sleep(rng.uniform(0.05, 0.4))  # then the power goes, somewhere mid-write
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        output = first + writer.stdout.read()
        # a line cut by the kill (no newline yet) told of a commit whose id is incomplete
        for line in output[: output.rfind("\n") + 1].splitlines():
            if line.strip():
                message_id, session_id, flag = line.split()
                committed[message_id] = (session_id, flag == "1")
        writer.stdout.close()
    store = DeviceStore(path)
    assert store.integrity_check() == "ok"
    assert len(committed) > 5
    sessions = {s.session_id for s in store.sessions(limit=100_000)}
    assert {session for session, _ in committed.values()} <= sessions
    queued = {m.message_id for m in store.pending(limit=100_000)}  # every payload opens
    for message_id, (_, was_acked) in committed.items():
        # an acknowledged record left the outbox; every other one is still queued
        assert (message_id in queued) != was_acked
