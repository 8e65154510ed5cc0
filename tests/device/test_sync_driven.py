"""``DeviceSync`` driven by a host, as ``resonera fleet-sim`` drives a thousand of them: the paho
client comes from an injected factory and runs on the host's epoll loop (``MqttLoop``, not paho's
own thread), the host pumps when the sync wakes it or when the delay it returned has passed, acks
are handled on the host's own thread, and a lost connection is the host's to retry. Against a real
mosquitto, with an acking peer standing in for the server's ingest."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from device_peer import Peer, device_settings
from enrolled_fleet import broker_admits
from factories import make_record
from fleet import PASSPHRASE, run_tls_broker
from support import Mosquitto, wait_until

from resonera.common.mqtt_client import BrokerUnavailable, build_client
from resonera.common.settings import MqttSettings
from resonera.device.settings import DeviceSettings
from resonera.device.sync import DeviceSync
from resonera.stack.fleet_loop import MqttLoop

#: Long enough that nothing is sent twice while the peer acks: each record goes out once.
NO_RESEND = {"reconnect_jitter_s": 0.0, "resend_after_s": 120.0}


class Host:
    """One device on a host's loop: its client attached to ``loop``, a pump thread woken by
    ``on_wake`` or after the delay ``pump`` returned, store work on an executor of its own."""

    def __init__(
        self,
        settings: DeviceSettings,
        loop: MqttLoop,
        *,
        clock: Callable[[], float] = time.monotonic,
        pump_thread: bool = True,
    ) -> None:
        self.loop = loop
        self.clients: list[paho.Client] = []
        self.acked: Counter[str] = Counter()
        self.lost = threading.Event()
        self.pumps = 0
        self._woken = threading.Event()
        self._stopping = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="host-acks")
        self.store = settings.open_store()
        self.sync = DeviceSync(
            settings,
            self.store,
            clock,
            client_factory=self._client,
            on_wake=self._woken.set,
            on_acked=self._on_acked,
            on_connection_lost=self.lost.set,
            dispatch=self._executor.submit,
        )
        self._pumper = threading.Thread(target=self._pump, name="host-pump", daemon=True)
        if pump_thread:
            self._pumper.start()

    def _client(
        self, settings: MqttSettings, client_id: str, *, will: tuple[str, bytes] | None = None
    ) -> paho.Client:
        client = build_client(settings, client_id, will=will)
        self.loop.attach(client)
        self.clients.append(client)
        return client

    def _on_acked(self, ids: Sequence[str]) -> None:
        self.acked.update(ids)

    def _pump(self) -> None:
        delay: float | None = None
        while not self._stopping.is_set():
            self._woken.wait(timeout=delay)
            self._woken.clear()
            if not self._stopping.is_set():
                delay = self.sync.pump()
                self.pumps += 1

    def close(self) -> None:
        self._stopping.set()
        self._woken.set()
        if self._pumper.is_alive():
            self._pumper.join(timeout=5)
        self.sync.close(goodbye=True)
        self._executor.shutdown(wait=True)
        self.store.close()


@pytest.fixture
def loop() -> Iterator[MqttLoop]:
    running = MqttLoop()
    running.start()
    yield running
    running.stop()


@contextmanager
def hosted(settings: DeviceSettings, loop: MqttLoop, **options: Any) -> Iterator[Host]:
    host = Host(settings, loop, **options)
    try:
        yield host
    finally:
        host.close()


def _paho_thread_of(device_id: str) -> bool:
    return any(t.name == f"paho-mqtt-client-{device_id}" for t in threading.enumerate())


def test_a_driven_sync_publishes_acks_and_deletes_each_record_once(
    mosquitto: Mosquitto, peer: Peer, loop: MqttLoop, tmp_path: Path
) -> None:
    settings = device_settings(mosquitto, tmp_path, "driven-once", sync=NO_RESEND)
    with hosted(settings, loop) as host:
        store = host.store
        backlog = [store.record_session(settings.device_id, make_record()).id for _ in range(60)]
        host.sync.connect()
        wait_until(lambda: host.sync.connected, what="the driven client to connect")
        later = [store.record_session(settings.device_id, make_record()).id for _ in range(5)]
        host.sync.kick()
        wait_until(lambda: store.outbox_depth() == 0, timeout=30, what="the outbox to drain")
        wait_until(lambda: len(host.acked) == 65, what="every ack to reach the host")

        ids = backlog + later
        assert {i: peer.deliveries[i] for i in ids} == dict.fromkeys(ids, 1)
        assert host.acked == Counter(ids)  # each id acked once, and only what was sent
        assert host.sync.last_ack is not None
        # the host's loop drove the injected client: paho started no thread of its own
        assert len(host.clients) == 1 and host.clients[0].is_connected()
        assert not _paho_thread_of(settings.device_id)
        assert host.pumps >= 2  # a backlog of 60 takes two batches of 50
        assert not host.lost.is_set()
    assert not host.clients[0].is_connected()
    assert not host.lost.is_set()  # closing is not a lost connection


def test_woken_while_resting_after_a_batch_the_pump_says_when_to_come_back(
    mosquitto: Mosquitto, peer: Peer, loop: MqttLoop, tmp_path: Path
) -> None:
    """Acks wake the host right after a batch, while the rate limiter is still empty: the pump
    publishes nothing then, as the worker thread sleeps, and says when to come back (not None,
    which would leave the rest of the backlog waiting for the next wake). The sync's clock is the
    test's, the pumps are the test's own calls."""
    now = [1000.0]
    settings = device_settings(mosquitto, tmp_path, "driven-rest", sync=NO_RESEND)
    rate, batch = settings.sync.max_messages_per_s, settings.sync.batch_size
    with hosted(settings, loop, clock=lambda: now[0], pump_thread=False) as host:
        store = host.store
        ids = [store.record_session(settings.device_id, make_record()).id for _ in range(60)]
        host.sync.connect()
        wait_until(lambda: host.sync.connected, what="the driven client to connect")
        assert host.sync.pump() == batch / rate  # a full batch, then a rest
        wait_until(lambda: len(host.acked) == batch, what="the first batch's acks")
        assert host.sync.pump() == batch / rate  # woken by them, still resting: nothing sent
        assert len(peer.deliveries.keys() & set(ids)) == batch
        now[0] += batch / rate
        assert host.sync.pump() == 10 / rate  # rested: the other 10
        wait_until(lambda: store.outbox_depth() == 0, what="the outbox to drain")
        now[0] += 10 / rate
        assert host.sync.pump() is None  # nothing left, nothing in flight
        assert {i: peer.deliveries[i] for i in ids} == dict.fromkeys(ids, 1)
        assert host.acked == Counter(ids)


def test_the_host_retries_a_lost_connection_and_nothing_is_lost_or_doubled(
    private_mosquitto: Mosquitto, loop: MqttLoop, tmp_path: Path
) -> None:
    private_mosquitto.stop()
    settings = device_settings(private_mosquitto, tmp_path, "driven-lost", sync=NO_RESEND)
    with hosted(settings, loop) as host:
        store = host.store
        with pytest.raises(BrokerUnavailable, match="connection refused"):
            host.sync.connect()  # one attempt: nothing retries behind the host's back
        assert host.sync.last_error is not None and "connection refused" in host.sync.last_error
        first = store.record_session(settings.device_id, make_record()).id
        host.sync.kick()  # not connected: the pump does nothing, the record waits

        private_mosquitto.start()
        peer = Peer(private_mosquitto)
        try:
            host.sync.connect()
            wait_until(lambda: store.outbox_depth() == 0, timeout=30, what="the first record")
            assert peer.deliveries[first] == 1
        finally:
            peer.close()

        private_mosquitto.stop()
        wait_until(host.lost.is_set, what="on_connection_lost")
        assert not host.sync.connected
        second = store.record_session(settings.device_id, make_record()).id
        host.sync.kick()

        private_mosquitto.start()
        peer = Peer(private_mosquitto)
        try:
            host.sync.connect()  # what the host does when told the connection was lost
            wait_until(lambda: store.outbox_depth() == 0, timeout=30, what="the second record")
            assert peer.deliveries == Counter({second: 1})
        finally:
            peer.close()
        assert host.acked == Counter({first: 1, second: 1})
        assert len(host.clients) == 1  # the same client, connected again by the host


def test_a_driven_sync_shut_out_by_the_broker_makes_no_attempt_before_the_hour(
    loop: MqttLoop, tmp_path: Path
) -> None:
    """The broker's TLS alert (a revoked certificate on its CRL) sets ``shut_out``; the host is
    told the connection is lost, and ``connect`` refuses without a CONNECT until ``retry_in``."""
    now = [1000.0]
    with run_tls_broker(tmp_path / "tls") as tls:
        mqtt = tls.device("driven-revoked")
        assert mqtt.cert_file is not None
        cert = x509.load_pem_x509_certificate(mqtt.cert_file.read_bytes())
        tls.ca.revoke(cert, "driven-revoked", "device lost", PASSPHRASE)
        tls.broker.reload()
        wait_until(lambda: not broker_admits(mqtt, "probe"), what="the broker to read the CRL")
        settings = device_settings(None, tmp_path, "driven-revoked", mqtt=mqtt)
        with hosted(settings, loop, clock=lambda: now[0]) as host:
            store = host.store
            store.record_session(settings.device_id, make_record())

            def attempt() -> None:
                host.lost.clear()
                host.sync.connect()
                wait_until(host.lost.is_set, what="the broker to end the connection")
                # and paho to close its socket (the loop unregisters it) before the next one
                wait_until(lambda: host.clients[-1].socket() is None, what="the socket closed")

            while host.sync.shut_out is None:  # a socket closed before its alert is read: again
                attempt()
            assert host.sync.shut_out.kind == "revoked"
            attempts = host.sync.connect_attempts
            now[0] += 3599
            with pytest.raises(BrokerUnavailable, match="shut out"):
                host.sync.connect()
            assert host.sync.connect_attempts == attempts  # nothing sent
            now[0] += 1
            attempt()
            assert host.sync.connect_attempts == attempts + 1
            assert store.outbox_depth() == 1
