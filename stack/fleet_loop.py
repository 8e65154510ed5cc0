"""One epoll loop for many paho clients (paho's external-loop API): what lets one process hold a
thousand MQTT/TLS connections, where paho's own ``select()`` thread stops at descriptor 1,024.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import selectors
import ssl
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any, Final

import paho.mqtt.client as paho

log = logging.getLogger(__name__)

MISC_EVERY_S: Final = 1.0


class MqttLoop:
    """Drives many paho clients through paho's external-loop API on one selector thread.

    paho calls the socket callbacks from whichever thread opens, writes or closes; selector
    registrations are thread-safe under epoll, and a packet queued while the loop was clearing
    its write interest is picked up by the periodic ``want_write`` sweep."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._clients: list[paho.Client] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name="fleet-mqtt", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)
        self._selector.close()

    def attach(self, client: paho.Client) -> None:
        client.on_socket_open = self._on_open
        client.on_socket_close = self._on_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        with self._lock:
            self._clients.append(client)

    def call_later(self, delay_s: float, action: Callable[[], None]) -> None:
        """Run ``action`` on the loop thread after ``delay_s`` (it must not block)."""
        with self._lock:
            heapq.heappush(
                self._timers, (time.monotonic() + delay_s, next(self._timer_ids), action)
            )

    # paho socket callbacks (any thread)

    def _on_open(self, client: paho.Client, _userdata: Any, sock: Any) -> None:
        # A socket closed without its close callback (a TLS alert during the handshake) leaves its
        # number in the selector's map, and the kernel gives that number to the next socket.
        with suppress(KeyError, ValueError):
            self._selector.unregister(sock.fileno())
        self._selector.register(sock, selectors.EVENT_READ, client)

    def _on_close(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        with suppress(KeyError, ValueError):  # never registered, or the selector is closed
            self._selector.unregister(sock)

    def _on_register_write(self, client: paho.Client, _userdata: Any, sock: Any) -> None:
        # closed meanwhile (epoll forgets a closed descriptor: ENOENT): the reconnect sends the queue
        with suppress(KeyError, ValueError, OSError):
            self._selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _on_unregister_write(self, client: paho.Client, _userdata: Any, sock: Any) -> None:
        with suppress(KeyError, ValueError, OSError):  # closed meanwhile, as above
            self._selector.modify(sock, selectors.EVENT_READ, client)

    # the loop thread

    def _run(self) -> None:
        next_misc = time.monotonic() + MISC_EVERY_S
        while not self._stopping.is_set():
            try:
                events = self._selector.select(timeout=0.05)
            except (OSError, ValueError):
                events = []  # a socket closed under us; the next round has a clean set
            for key, mask in events:
                client: paho.Client = key.data
                if mask & selectors.EVENT_READ:
                    self._read(client)
                if mask & selectors.EVENT_WRITE:
                    client.loop_write()
            now = time.monotonic()
            self._run_timers(now)
            if now >= next_misc:
                next_misc = now + MISC_EVERY_S
                with self._lock:
                    clients = list(self._clients)
                for client in clients:
                    client.loop_misc()  # keepalive pings and timeouts
                    if client.want_write():
                        client.loop_write()

    @staticmethod
    def _read(client: paho.Client) -> None:
        # TLS decrypts whole records: bytes already taken off the socket make no epoll event, so
        # read until the TLS layer holds nothing more (paho's own loop checks ``pending()`` too).
        while client.loop_read(max_packets=10) == paho.MQTT_ERR_SUCCESS:
            sock = client.socket()
            if not isinstance(sock, ssl.SSLSocket) or sock.pending() == 0:
                return

    def _run_timers(self, now: float) -> None:
        due: list[Callable[[], None]] = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                due.append(heapq.heappop(self._timers)[2])
        for action in due:
            try:
                action()
            except Exception:  # one device's timer must not stop the fleet's loop
                log.exception("fleet loop timer failed")
