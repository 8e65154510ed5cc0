"""Background files of prescribed programs fetched by content (``device/backgrounds.py``) from a real
HTTPS server on 127.0.0.1 that requires the device's client certificate: kept only under the
SHA-256 of their bytes, refused (and nothing kept) when the bytes, their size or the server are
wrong; and a program's content paths resolved to the cached files for playing."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fleet import PASSPHRASE
from support import free_port

from resonera.common.prescription import MAX_BACKGROUND_BYTES, BackgroundFile, content_path
from resonera.common.program import builtin_program, parse_program
from resonera.device.backgrounds import (
    BackgroundCache,
    BackgroundFetcher,
    BackgroundUnavailable,
    ClientFiles,
)
from resonera.server.fleet_ca import FleetCA
from resonera.stack.fleet_identity import issue_device

RAIN = b"RIFF pretend this is rain " * 1000
RAIN_SHA = hashlib.sha256(RAIN).hexdigest()
RAIN_FILE = BackgroundFile(sha256=RAIN_SHA, size=len(RAIN))

#: The ``background_server`` fixture (tests/device/conftest.py): starts a ``BackgroundServer``.
Serve = Callable[[FleetCA], Any]


@pytest.fixture
def ca(tmp_path: Path) -> FleetCA:
    return FleetCA.init(tmp_path / "ca", PASSPHRASE)


def fetcher_for(ca: FleetCA, server: Any, tmp_path: Path) -> BackgroundFetcher:
    device = issue_device(ca, PASSPHRASE, "bg-device", tmp_path / "identity")
    cache = BackgroundCache(tmp_path / "data" / "backgrounds")
    files = ClientFiles(device.cert_file, device.key_file)
    return BackgroundFetcher(cache, server.api_url, lambda: files, server.ca_file)


def cached(fetcher: BackgroundFetcher) -> list[str]:
    return sorted(p.name for p in fetcher.cache.directory.iterdir())


def test_a_file_is_fetched_with_the_client_certificate_checked_and_kept_by_its_hash(
    ca: FleetCA, background_server: Serve, tmp_path: Path
) -> None:
    server = background_server(ca)
    server.serve(RAIN_SHA, RAIN)
    fetcher = fetcher_for(ca, server, tmp_path)
    path = fetcher.ensure(RAIN_FILE)
    assert path == fetcher.cache.directory / RAIN_SHA
    assert path.read_bytes() == RAIN
    assert path.stat().st_mode & 0o777 == 0o600
    assert fetcher.cache.directory.stat().st_mode & 0o777 == 0o700
    assert server.requests == [f"/api/v1/device/backgrounds/{RAIN_SHA}"]
    assert "bg-device" in server.clients[0]  # the device's certificate, checked by the server
    assert fetcher.cache.held() == [RAIN_SHA]
    fetcher.ensure(RAIN_FILE)  # held: not fetched again
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("answer", "complaint"),
    [
        ({"body": b"x" * len(RAIN)}, "have SHA-256"),
        ({"body": RAIN + b"more"}, "offers 26004 bytes, the prescription lists 26000"),
        ({"body": RAIN + b"more", "length": False}, "more than the 26000 bytes"),
        ({"body": RAIN[:-1], "length": False}, "sent 25999 bytes, the prescription lists 26000"),
        ({"body": b"busy", "status": 503}, r"the server refused \(503"),
    ],
    ids=["wrong-hash", "oversize-announced", "oversize-streamed", "short", "server-error"],
)
def test_wrong_bytes_are_refused_and_nothing_is_kept(
    ca: FleetCA, background_server: Serve, tmp_path: Path, answer: dict[str, Any], complaint: str
) -> None:
    server = background_server(ca)
    server.serve(RAIN_SHA, **answer)
    fetcher = fetcher_for(ca, server, tmp_path)
    with pytest.raises(BackgroundUnavailable, match=complaint) as refused:
        fetcher.fetch(RAIN_FILE)
    assert RAIN_SHA[:12] in str(refused.value)
    assert cached(fetcher) == []  # no file under a hash it does not have, no partial left


def test_an_unknown_file_is_a_404_said_so(
    ca: FleetCA, background_server: Serve, tmp_path: Path
) -> None:
    fetcher = fetcher_for(ca, background_server(ca), tmp_path)
    with pytest.raises(BackgroundUnavailable, match=r"the server has no such file \(404"):
        fetcher.fetch(RAIN_FILE)
    assert cached(fetcher) == []


def test_a_server_that_is_down_is_said_so(ca: FleetCA, tmp_path: Path) -> None:
    device = issue_device(ca, PASSPHRASE, "bg-device", tmp_path / "identity")
    cache = BackgroundCache(tmp_path / "backgrounds")
    files = ClientFiles(device.cert_file, device.key_file)
    fetcher = BackgroundFetcher(
        cache, f"https://127.0.0.1:{free_port()}/api/v1", lambda: files, ca.cert_path
    )
    with pytest.raises(BackgroundUnavailable, match=r"cannot reach https://127\.0\.0\.1"):
        fetcher.fetch(RAIN_FILE)
    assert cache.held() == []


def test_a_certificate_of_another_fleet_is_refused_by_the_server(
    ca: FleetCA, background_server: Serve, tmp_path: Path
) -> None:
    server = background_server(ca)
    server.serve(RAIN_SHA, RAIN)
    stranger = FleetCA.init(tmp_path / "other-ca", PASSPHRASE)
    device = issue_device(stranger, PASSPHRASE, "bg-device", tmp_path / "stranger")
    files = ClientFiles(device.cert_file, device.key_file)
    fetcher = BackgroundFetcher(
        BackgroundCache(tmp_path / "cache"), server.api_url, lambda: files, server.ca_file
    )
    with pytest.raises(BackgroundUnavailable, match="cannot"):
        fetcher.fetch(RAIN_FILE)
    assert server.requests == []


def test_a_file_over_the_bound_is_refused_before_anything_is_asked(
    ca: FleetCA, background_server: Serve, tmp_path: Path
) -> None:
    server = background_server(ca)
    fetcher = fetcher_for(ca, server, tmp_path)
    huge = BackgroundFile.model_construct(sha256=RAIN_SHA, size=MAX_BACKGROUND_BYTES + 1)
    with pytest.raises(BackgroundUnavailable, match="over the 67108864 a background may have"):
        fetcher.fetch(huge)
    assert server.requests == []


def test_only_https_is_spoken(tmp_path: Path) -> None:
    files = ClientFiles(tmp_path / "c", tmp_path / "k")
    with pytest.raises(Exception, match="over HTTPS only"):
        BackgroundFetcher(BackgroundCache(tmp_path), "http://127.0.0.1/api/v1", lambda: files)


def test_a_partial_file_left_by_a_crash_is_removed_and_content_paths_resolve(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "backgrounds"
    folder.mkdir()
    (folder / ".part-0123456789ab-xyz").write_bytes(b"half")
    (folder / RAIN_SHA).write_bytes(RAIN)
    cache = BackgroundCache(folder)
    assert sorted(p.name for p in folder.iterdir()) == [RAIN_SHA]
    definition = builtin_program("calm-tone").model_dump(mode="json")
    definition["steps"][0]["layers"].append(
        {"type": "background", "path": content_path(RAIN_SHA), "gain": 0.1}
    )
    program = parse_program(definition, "test")
    resolved = cache.resolve(program)
    assert resolved.steps[0].layers[-1].path == str(folder / RAIN_SHA)  # type: ignore[union-attr]
    assert resolved.digest() != program.digest() and cache.resolve(resolved) == resolved
    (folder / RAIN_SHA).unlink()
    with pytest.raises(BackgroundUnavailable, match="is not on this device"):
        cache.resolve(program)
