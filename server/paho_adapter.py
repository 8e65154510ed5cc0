"""The one place Resonera reaches into paho-mqtt's internals: the ingest client reads ahead.

Why: paho 2.x reads each MQTT packet with one ``recv`` for its command byte, one per byte of its
remaining length and one for the rest: about four system calls per 600-byte message, each
releasing and retaking the interpreter lock the ingest worker wants (measured: 42,000 ``recv`` for
10,000 messages, 280 with this). ``read_ahead`` makes a client read its socket 64 KiB at a time and
serve paho's small reads from that. With paho's own reads, ingest costs about 7 % more CPU per
message for one consumer on SQLite, 13 % for two processes (``bench_server_ingest``, back to back;
the figures: server/README.md, "Benchmarks"). paho has no public way to change how it reads.
Everything else ingest does with paho is its public API (manual acks are ``Client.ack``); batching
the PUBACKs and their wake-ups through paho internals, as ingest did before, measured no better
than ``Client.ack``, so it is gone.

What this uses of paho, all of it checked by ``internals_problems`` (paho is pinned ``>=2.1,<3`` in
pyproject.toml, and tests/server/test_paho_adapter.py fails naming the attribute when any of this
moves):

- ``Client._sock_recv(self, bufsize) -> bytes``: overridden. paho's ``_packet_read`` does every
  read of the connection through it (the command byte, each length byte, the rest), and expects
  ``BlockingIOError`` when nothing is ready and ``b""`` when the connection is closed. The override
  calls paho's own with at least 64 KiB and hands out the bytes in the sizes asked for. No other
  code of ``paho.mqtt.client`` reads the socket (``self._sock.recv`` appears only in
  ``_sock_recv``), or bytes read ahead would be missed.
- ``Client._sock``: read, never written: the current connection's socket (None when there is none),
  so bytes read ahead on a connection are dropped when paho makes a new one.
- ``Client.loop_read(self, max_packets=1)``: public, but that paho's own network loop (``_loop``,
  under ``loop_start``/``loop_forever``) calls it after ``select`` is not: overridden to go on
  reading while bytes are buffered, because ``select`` on the socket does not see them.
- ``_ahead``, ``_ahead_pos``, ``_ahead_sock``: added by ``ReadAheadClient``; paho must not have them.

Where any of it is not as expected at run time (a paho outside the pinned range), ``read_ahead``
logs one warning naming what moved and leaves the client as paho made it: slower, not broken.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt import __version__ as paho_version
from paho.mqtt.enums import MQTTErrorCode

log = logging.getLogger(__name__)

#: Bytes read from the socket at once.
READ_AHEAD_BYTES: Final = 64 * 1024


class ReadAheadClient(paho.Client):
    """paho's client, reading its socket ``READ_AHEAD_BYTES`` at a time (made by ``read_ahead``)."""

    _ahead_sock: Any = None
    _ahead: bytes = b""
    _ahead_pos: int = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._ahead_sock is not self._sock:  # a new connection: what was read ahead is void
            self._ahead_sock, self._ahead, self._ahead_pos = self._sock, b"", 0
        if self._ahead_pos >= len(self._ahead):
            # May raise BlockingIOError (nothing to read) or return b"" (closed), as paho expects.
            data = super()._sock_recv(max(bufsize, READ_AHEAD_BYTES))
            if len(data) <= bufsize:
                return data
            self._ahead, self._ahead_pos = data, 0
        start = self._ahead_pos
        self._ahead_pos = min(start + bufsize, len(self._ahead))
        return self._ahead[start : self._ahead_pos]

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        result = super().loop_read(max_packets)
        while (
            result == MQTTErrorCode.MQTT_ERR_SUCCESS
            and self._sock is not None
            and self._ahead_sock is self._sock
            and self._ahead_pos < len(self._ahead)
        ):
            result = super().loop_read(max_packets)
        return result


@dataclass(frozen=True)
class Internal:
    """One thing ``ReadAheadClient`` relies on in paho: its ``name`` and the ``shape`` expected."""

    name: str
    shape: str
    holds: Callable[[paho.Client], bool]


def _parameters(function: object) -> list[tuple[str, object]]:
    if not callable(function):
        return []
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return []
    return [(p.name, p.default) for p in signature.parameters.values()]


def _source(function: object) -> str:
    try:
        return inspect.getsource(function)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return ""


INTERNALS: Final = (
    Internal(
        "Client._sock_recv",
        "a method (self, bufsize) returning bytes",
        lambda c: (
            _parameters(getattr(type(c), "_sock_recv", None))
            == [("self", inspect.Parameter.empty), ("bufsize", inspect.Parameter.empty)]
        ),
    ),
    Internal(
        "Client._sock",
        "an instance attribute: the connection's socket",
        lambda c: "_sock" in vars(c),
    ),
    Internal(
        "Client._ahead, Client._ahead_pos, Client._ahead_sock",
        "absent: the names ReadAheadClient adds",
        lambda c: not any(hasattr(c, name) for name in ("_ahead", "_ahead_pos", "_ahead_sock")),
    ),
    Internal(
        "Client.loop_read",
        "a method (self, max_packets=1)",
        lambda c: (
            _parameters(getattr(type(c), "loop_read", None))
            == [("self", inspect.Parameter.empty), ("max_packets", 1)]
        ),
    ),
    Internal(
        "Client._packet_read",
        "reads the connection through self._sock_recv(...)",
        lambda c: "self._sock_recv(" in _source(getattr(type(c), "_packet_read", None)),
    ),
    Internal(
        "Client._sock_recv",
        "the only code of paho.mqtt.client calling self._sock.recv(...)",
        lambda c: (
            len(re.findall(r"\bself\._sock\.recv\(", _source(inspect.getmodule(type(c))))) == 1
            and "self._sock.recv(" in _source(getattr(type(c), "_sock_recv", None))
        ),
    ),
    Internal(
        "Client._loop",
        "paho's network loop, calling self.loop_read(...) when the socket is readable",
        lambda c: "self.loop_read(" in _source(getattr(type(c), "_loop", None)),
    ),
)


def internals_problems(client: paho.Client) -> list[str]:
    """One line for each of ``INTERNALS`` that ``client`` (a plain paho client) lacks."""
    return [
        f"{internal.name}: expected {internal.shape}"
        for internal in INTERNALS
        if not internal.holds(client)
    ]


def read_ahead(client: paho.Client) -> paho.Client:
    """``client``, configured as it is, now reading its socket ``READ_AHEAD_BYTES`` at a time;
    unchanged, with one warning, where paho's internals are not those this module knows."""
    if type(client) is not paho.Client:
        raise TypeError(f"read_ahead takes a paho.mqtt.client.Client, not {type(client).__name__}")
    problems = internals_problems(client)
    if problems:
        log.warning(
            "paho-mqtt %s changed what server/paho_adapter.py relies on (%s); reading MQTT "
            "through paho's own reads instead (slower)",
            paho_version,
            "; ".join(problems),
        )
        return client
    client.__class__ = ReadAheadClient
    return client
