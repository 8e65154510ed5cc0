"""server/paho_adapter.py, the one module that reaches into paho-mqtt's internals: what it relies on
is still there in the installed paho (each test names the attribute that moved), nothing else of
the server reaches in, and the read-ahead serves paho's reads, packed and split, from one ``recv``.

When a test here fails after a paho upgrade: read the adapter's docstring, then either follow the
moved internals in the adapter (and its ``INTERNALS``) or keep paho below that version in
pyproject.toml. Ingest itself goes on working with paho's own reads (the adapter falls back), more
slowly."""

from __future__ import annotations

import ast
import inspect
import logging
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt import __version__ as paho_version
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from resonera.server import paho_adapter
from resonera.server.db import make_engine
from resonera.server.ingest_mqtt import IngestConsumer
from resonera.server.paho_adapter import (
    INTERNALS,
    READ_AHEAD_BYTES,
    ReadAheadClient,
    internals_problems,
    read_ahead,
)
from resonera.server.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
ADAPTER = ROOT / "server" / "paho_adapter.py"
MOVED = (
    f"paho-mqtt {paho_version} moved an internal server/paho_adapter.py relies on: follow it in "
    "the adapter, or keep paho below this version in pyproject.toml"
)


def _client() -> paho.Client:
    return paho.Client(CallbackAPIVersion.VERSION2)


def _method(name: str) -> Callable[..., object]:
    """paho's ``Client.<name>``, failing the test with the attribute's name where it is gone."""
    function = getattr(paho.Client, name, None)
    assert inspect.isfunction(function), f"{MOVED}: Client.{name} is gone"
    return function


def _parameters(function: Callable[..., object]) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


# -- what the adapter relies on, checked here on its own (not through the adapter's checks) ----


def test_client_sock_recv_is_a_method_of_self_and_bufsize() -> None:
    function = _method("_sock_recv")
    assert _parameters(function) == [
        ("self", inspect.Parameter.empty),
        ("bufsize", inspect.Parameter.empty),
    ], f"{MOVED}: Client._sock_recv is now {inspect.signature(function)}, not (self, bufsize)"


def test_client_sock_is_an_instance_attribute_none_before_connecting() -> None:
    client = _client()
    assert "_sock" in vars(client), f"{MOVED}: Client._sock is no longer an instance attribute"
    assert client._sock is None, f"{MOVED}: Client._sock is {client._sock!r} before connecting"


def test_client_loop_read_takes_max_packets() -> None:
    function = _method("loop_read")
    assert _parameters(function) == [
        ("self", inspect.Parameter.empty),
        ("max_packets", 1),
    ], f"{MOVED}: Client.loop_read is now {inspect.signature(function)}, not (self, max_packets=1)"


def test_client_packet_read_reads_through_sock_recv() -> None:
    source = inspect.getsource(_method("_packet_read"))
    assert "self._sock_recv(" in source, (
        f"{MOVED}: Client._packet_read no longer reads through self._sock_recv"
    )


def test_only_client_sock_recv_reads_the_socket() -> None:
    module = inspect.getsource(inspect.getmodule(paho.Client))  # type: ignore[arg-type]
    reads = re.findall(r"\bself\._sock\.recv\(", module)
    assert len(reads) == 1, (
        f"{MOVED}: paho.mqtt.client calls self._sock.recv in {len(reads)} places, not only in "
        "Client._sock_recv (bytes read ahead would be missed)"
    )
    assert "self._sock.recv(" in inspect.getsource(_method("_sock_recv")), (
        f"{MOVED}: Client._sock_recv no longer calls self._sock.recv"
    )


def test_client_loop_calls_loop_read() -> None:
    assert "self.loop_read(" in inspect.getsource(_method("_loop")), (
        f"{MOVED}: Client._loop (paho's network loop) no longer calls self.loop_read"
    )


def test_paho_has_none_of_the_names_the_adapter_adds() -> None:
    client = _client()
    taken = [name for name in ("_ahead", "_ahead_pos", "_ahead_sock") if hasattr(client, name)]
    assert not taken, f"{MOVED}: Client now has {taken}, which ReadAheadClient adds"


def test_the_adapters_own_check_finds_nothing_moved_and_the_client_is_adapted() -> None:
    client = _client()
    problems = internals_problems(client)
    assert problems == [], f"{MOVED}: " + "; ".join(problems)
    assert type(read_ahead(client)) is ReadAheadClient


def test_the_ingest_consumer_reads_ahead(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'ingest.db'}")
    try:
        consumer = IngestConsumer(ServerSettings(), engine)
        assert type(consumer._client) is ReadAheadClient
    finally:
        engine.dispose()


def _paho_private_names() -> set[str]:
    names = set(dir(paho.Client)) | set(vars(_client()))
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_the_adapter_checks_every_paho_internal_it_uses() -> None:
    """Every private name of paho's client that ReadAheadClient touches is in ``INTERNALS``."""
    checked = {
        name.strip().removeprefix("Client.")
        for internal in INTERNALS
        for name in internal.name.split(",")
    }
    tree = ast.parse(ADAPTER.read_text())
    (adapter_class,) = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.name == ReadAheadClient.__name__
    ]
    used = {
        node.attr
        for node in ast.walk(adapter_class)
        if isinstance(node, ast.Attribute) and node.attr in _paho_private_names()
    }
    used |= {
        node.name
        for node in adapter_class.body
        if isinstance(node, ast.FunctionDef) and node.name in _paho_private_names()
    }
    assert used, "the scan found none of paho's names in ReadAheadClient"
    assert used <= checked, f"used but not in INTERNALS: {sorted(used - checked)}"


def _reaches_into_paho(source: str, where: str, private: set[str]) -> list[str]:
    """Where ``source`` subclasses paho's client, swaps an object's class, or reads a private name
    of paho's client on anything but its own ``self``."""
    found = []
    for node in ast.walk(ast.parse(source, where)):
        line = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ClassDef):
            bases = [ast.unparse(base) for base in node.bases]
            if any(base.endswith("Client") and "paho" in base for base in bases):
                found.append(f"{line}: class {node.name}({', '.join(bases)})")
        elif isinstance(node, ast.Attribute):
            own = isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}
            if node.attr == "__class__" and isinstance(node.ctx, ast.Store):
                found.append(f"{line}: assigns __class__")
            elif node.attr in private and not own:
                found.append(f"{line}: {ast.unparse(node)}")
    return found


def test_no_other_server_or_common_module_reaches_into_paho() -> None:
    private = _paho_private_names()
    files = sorted((ROOT / "server").rglob("*.py")) + sorted((ROOT / "common").rglob("*.py"))
    assert ADAPTER in files
    found = [
        reach
        for path in files
        if path != ADAPTER
        for reach in _reaches_into_paho(path.read_text(), str(path.relative_to(ROOT)), private)
    ]
    assert found == [], "paho internals outside server/paho_adapter.py:\n" + "\n".join(found)


def test_the_scan_sees_what_ingest_did_before_the_adapter() -> None:
    source = (
        "import paho.mqtt.client as paho\n"
        "class _IngestClient(paho.Client):\n"
        "    pass\n"
        "def build(client):\n"
        "    client.__class__ = _IngestClient\n"
        "    client._packet_queue(0, b'', 1, 1)\n"
        "    client._sockpairW.send(b'0')\n"
    )
    found = _reaches_into_paho(source, "old.py", _paho_private_names())
    assert [reach.split(": ", 1)[1] for reach in found] == [
        "class _IngestClient(paho.Client)",
        "assigns __class__",
        "client._packet_queue",
        "client._sockpairW",
    ]


# -- the fallback: a paho whose internals moved is used as it is ------------------------------


@pytest.mark.parametrize(
    ("moved", "named"),
    [
        ("_sock_recv", "Client._sock_recv"),
        ("_packet_read", "Client._packet_read"),
        ("_loop", "Client._loop"),
    ],
)
def test_a_paho_without_an_internal_is_used_unadapted_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, moved: str, named: str
) -> None:
    monkeypatch.delattr(paho.Client, moved)
    with caplog.at_level(logging.WARNING, logger=paho_adapter.__name__):
        client = read_ahead(_client())
    assert type(client) is paho.Client
    assert named in caplog.text
    assert "paho's own reads" in caplog.text


def test_a_changed_signature_is_used_unadapted(monkeypatch: pytest.MonkeyPatch) -> None:
    def _sock_recv(self: paho.Client, bufsize: int, flags: int) -> bytes:
        return b""

    monkeypatch.setattr(paho.Client, "_sock_recv", _sock_recv)
    client = _client()
    problems = internals_problems(client)
    assert "Client._sock_recv: expected a method (self, bufsize) returning bytes" in problems
    assert type(read_ahead(client)) is paho.Client


def test_read_ahead_takes_only_a_plain_paho_client() -> None:
    client = read_ahead(_client())
    with pytest.raises(TypeError, match="ReadAheadClient"):
        read_ahead(client)


# -- the read-ahead itself, on a socket stand-in ----------------------------------------------


class FakeSocket:
    """What paho reads from: ``chunks`` one per ``recv``, then nothing (``BlockingIOError``)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.asked: list[int] = []

    def recv(self, bufsize: int) -> bytes:
        self.asked.append(bufsize)
        if not self.chunks:
            raise BlockingIOError
        chunk, rest = self.chunks[0][:bufsize], self.chunks[0][bufsize:]
        self.chunks[:1] = [rest] if rest else []
        return chunk

    def close(self) -> None:
        pass


def _publish(topic: str, payload: bytes) -> bytes:
    """An MQTT PUBLISH packet at QoS 0."""
    body = struct.pack("!H", len(topic)) + topic.encode() + payload
    length, remaining = bytearray(), len(body)
    while True:
        remaining, byte = divmod(remaining, 128)
        length.append(byte | (0x80 if remaining else 0))
        if not remaining:
            return bytes([paho.PUBLISH]) + bytes(length) + body


@pytest.fixture
def adapted() -> Iterator[tuple[paho.Client, list[tuple[str, bytes]]]]:
    client = read_ahead(_client())
    received: list[tuple[str, bytes]] = []
    client.on_message = lambda _c, _u, msg: received.append((msg.topic, bytes(msg.payload)))
    yield client, received
    client._sock = None


def test_many_packets_in_one_recv_and_one_split_across_recvs(
    adapted: tuple[paho.Client, list[tuple[str, bytes]]],
) -> None:
    client, received = adapted
    messages = [(f"t/{i}", bytes([i]) * 300) for i in range(50)] + [("big", b"x" * 200_000)]
    stream = b"".join(_publish(topic, payload) for topic, payload in messages)
    # Cut inside the big packet's header: its command byte ends the first chunk.
    cut = len(stream) - len(_publish("big", b"x" * 200_000)) + 1
    sock = FakeSocket([stream[:cut], stream[cut:]])
    client._sock = sock  # type: ignore[assignment]
    assert client.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert received == messages
    # paho alone asks for 1 byte, then each length byte, then the rest: 4 reads a packet here.
    assert len(sock.asked) <= 4, sock.asked
    assert all(size >= READ_AHEAD_BYTES for size in sock.asked)


def test_bytes_read_ahead_on_a_connection_are_dropped_with_it(
    adapted: tuple[paho.Client, list[tuple[str, bytes]]],
) -> None:
    client, _received = adapted
    client._sock = FakeSocket([b"abcdef"])  # type: ignore[assignment]
    assert client._sock_recv(2) == b"ab"  # "cdef" is read ahead
    client._sock = FakeSocket([b"xyz"])  # type: ignore[assignment]  # a new connection
    assert client._sock_recv(2) == b"xy"
    assert client._sock_recv(2) == b"z"


def test_nothing_to_read_and_a_closed_connection_read_as_paho_expects(
    adapted: tuple[paho.Client, list[tuple[str, bytes]]],
) -> None:
    client, _received = adapted
    client._sock = FakeSocket([])  # type: ignore[assignment]
    with pytest.raises(BlockingIOError):
        client._sock_recv(1)
    client._sock = FakeSocket([b""])  # type: ignore[assignment]
    assert client._sock_recv(1) == b""
