"""Downloading an update bundle (``device/updater/fetch.py``) from a real HTTPS server on 127.0.0.1
that requires the device's client certificate: resumed with ``Range`` after an interruption,
started over when the server ignores the range, refused when the bytes are not the target's."""

from __future__ import annotations

import hashlib
import re
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from fleet import PASSPHRASE, mutual_tls_http_server

from resonera.common.agent_update import AgentUpdateTarget
from resonera.device.backgrounds import ClientFiles
from resonera.device.updater.fetch import BundleFetcher, DownloadFailed
from resonera.server.fleet_ca import FleetCA
from resonera.stack.fleet_identity import issue_device

BUNDLE = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(BUNDLE).hexdigest()
TARGET = AgentUpdateTarget("0.2.0", SHA, len(BUNDLE), "r1")
PATH = f"/api/v1/device/updates/{SHA}"


@dataclass
class UpdateServer:
    """Serves ``body`` at ``PATH``; honours ``Range`` when ``ranges``; ``cut_after``: the
    connection drops after that many bytes of the next answer (once)."""

    url: str = ""
    ca_file: Path = Path()
    body: bytes = BUNDLE
    ranges: bool = True
    cut_after: int | None = None
    asked: list[str | None] = field(default_factory=list)
    clients: list[str] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    state: UpdateServer

    def do_GET(self) -> None:
        state = self.state
        asked = self.headers.get("Range")
        state.asked.append(asked)
        assert isinstance(self.connection, ssl.SSLSocket)
        state.clients.append(str(self.connection.getpeercert()))
        if self.path != PATH:
            self.send_error(404)
            return
        body, start = state.body, 0
        match = re.fullmatch(r"bytes=(\d+)-", asked or "")
        if match and state.ranges:
            start = int(match[1])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        rest = body[start:]
        if state.cut_after is not None:
            rest, state.cut_after = rest[: state.cut_after], None
            self.wfile.write(rest)
            self.wfile.flush()
            self.connection.shutdown(2)  # as a dropped link does
            return
        self.wfile.write(rest)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def ca(tmp_path: Path) -> FleetCA:
    return FleetCA.init(tmp_path / "ca", PASSPHRASE)


@pytest.fixture
def server(ca: FleetCA, tmp_path: Path) -> Iterator[UpdateServer]:
    httpd = mutual_tls_http_server(ca, tmp_path / "https", _Handler)
    state = UpdateServer(f"https://127.0.0.1:{httpd.server_address[1]}/api/v1", ca.cert_path)
    httpd.RequestHandlerClass = type("Handler", (_Handler,), {"state": state})
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def fetcher(ca: FleetCA, server: UpdateServer, tmp_path: Path) -> BundleFetcher:
    device = issue_device(ca, PASSPHRASE, "upd-device", tmp_path / "identity")
    files = ClientFiles(device.cert_file, device.key_file)
    return BundleFetcher(tmp_path / "downloads", server.url, lambda: files, server.ca_file)


def never() -> bool:
    return False


def test_a_bundle_is_fetched_with_the_client_certificate_and_kept_under_its_hash(
    ca: FleetCA, server: UpdateServer, tmp_path: Path
) -> None:
    f = fetcher(ca, server, tmp_path)
    path = f.fetch(TARGET, never)
    assert path == tmp_path / "downloads" / f"{SHA}.tar"
    assert path.read_bytes() == BUNDLE
    assert "upd-device" in server.clients[0]
    assert f.fetch(TARGET, never) == path and len(server.asked) == 1  # held: not fetched again


def test_an_interrupted_download_resumes_from_its_part_file_with_a_range(
    ca: FleetCA, server: UpdateServer, tmp_path: Path
) -> None:
    f = fetcher(ca, server, tmp_path)
    server.cut_after = 300_000
    with pytest.raises(DownloadFailed) as failed:
        f.fetch(TARGET, never)
    assert not failed.value.corrupt
    kept = f.part_for(SHA).stat().st_size
    assert 0 < kept <= 300_000
    assert f.fetch(TARGET, never).read_bytes() == BUNDLE
    assert server.asked == [None, f"bytes={kept}-"]
    assert not f.part_for(SHA).exists()


def test_a_server_that_ignores_the_range_sends_it_all_and_the_download_starts_over(
    ca: FleetCA, server: UpdateServer, tmp_path: Path
) -> None:
    f = fetcher(ca, server, tmp_path)
    server.cut_after, server.ranges = 100_000, False
    with pytest.raises(DownloadFailed):
        f.fetch(TARGET, never)
    assert f.fetch(TARGET, never).read_bytes() == BUNDLE
    assert server.asked[1] is not None  # it asked for the rest, and took the whole


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (bytes(len(BUNDLE)), "have SHA-256"),
        (BUNDLE + b"more", "more than the target's"),
    ],
    ids=["wrong-bytes", "too-long"],
)
def test_bytes_that_are_not_the_targets_are_refused_as_corrupt_and_not_kept(
    ca: FleetCA, server: UpdateServer, tmp_path: Path, body: bytes, complaint: str
) -> None:
    f = fetcher(ca, server, tmp_path)
    server.body = body
    with pytest.raises(DownloadFailed, match=complaint) as failed:
        f.fetch(TARGET, never)
    assert failed.value.corrupt
    assert list((tmp_path / "downloads").iterdir()) == []


def test_a_missing_bundle_or_a_withdrawn_target_is_said_so(
    ca: FleetCA, server: UpdateServer, tmp_path: Path
) -> None:
    f = fetcher(ca, server, tmp_path)
    other = AgentUpdateTarget("0.2.0", "d" * 64, 10, "r1")
    with pytest.raises(DownloadFailed, match=r"no such bundle \(404"):
        f.fetch(other, never)
    with pytest.raises(DownloadFailed, match="withdrawn"):
        f.fetch(TARGET, lambda: True)
