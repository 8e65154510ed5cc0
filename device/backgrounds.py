"""Background sound files of prescribed programs, by content (issue 20): fetched from the server
over HTTPS with the device's client certificate, bounded, hash-checked, and kept in a
content-addressed cache, ``data_dir/backgrounds/<sha256>``.

A prescribed background layer names its file ``sha256:<hex>`` and the prescription lists the file
with its size (``common.prescription.BackgroundFile``). ``BackgroundFetcher.fetch`` asks
``GET {server_url}/device/backgrounds/{sha256}`` (the server answers 200 with the bytes, 404 when
it has no such file) and refuses:

- before a byte is read: a listed size over ``MAX_BACKGROUND_BYTES``, an answer that is not 200,
  a ``Content-Length`` other than the listed size;
- while reading: more bytes than the listed size (the stream is cut there);
- at the end: fewer bytes, or a SHA-256 other than the name.

The bytes are streamed to a temporary file in the cache folder, synced, and renamed to their hash
only once checked: a crash leaves a ``.part`` file (removed the next time the cache opens), never a
file under a hash it does not have. ``BackgroundCache.resolve`` turns a program's content paths
into these files for playing; nothing is fetched while playing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from resonera.common.errors import ResoneraError
from resonera.common.files import fsync_dir
from resonera.common.prescription import (
    MAX_BACKGROUND_BYTES,
    BackgroundFile,
    ContentMissing,
    resolve_content_paths,
)
from resonera.common.program import Program
from resonera.device.renewal import renewed_mqtt
from resonera.device.settings import DeviceSettings

__all__ = [
    "BackgroundCache",
    "BackgroundFetcher",
    "BackgroundUnavailable",
    "ClientFiles",
    "background_fetcher",
    "backgrounds_dir",
    "client_context",
    "device_client_files",
]

log = logging.getLogger(__name__)

#: How long a connection or one read may wait for the server.
TIMEOUT_S: Final = 30.0
CHUNK_BYTES: Final = 64 * 1024
_PARTIAL_PREFIX: Final = ".part-"


class BackgroundUnavailable(ResoneraError):
    """A background file cannot be had (not fetched, or not in the cache); the message says why."""


def backgrounds_dir(data_dir: Path) -> Path:
    """Where the device keeps background files, one per SHA-256."""
    return data_dir / "backgrounds"


def _is_sha256(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


class BackgroundCache:
    """The content-addressed folder of background files (0700, files 0600: a person's therapy
    sounds are theirs). A file is there only under the SHA-256 of its bytes (``BackgroundFetcher``
    writes it so); what a crash left half-written is removed when the cache is opened."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        for leftover in directory.glob(f"{_PARTIAL_PREFIX}*"):
            leftover.unlink(missing_ok=True)

    def path_for(self, sha256: str) -> Path:
        return self.directory / sha256

    def holds(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def held(self) -> list[str]:
        """The SHA-256 of every file held, sorted (what the engine's capabilities report)."""
        return sorted(
            p.name for p in self.directory.iterdir() if _is_sha256(p.name) and p.is_file()
        )

    def resolve(self, program: Program) -> Program:
        """``program`` with each content path (``sha256:<hex>``) replaced by its cached file, for
        the synthesis to read; ``BackgroundUnavailable`` when one is not held."""
        try:
            return resolve_content_paths(
                program, lambda digest: self.path_for(digest) if self.holds(digest) else None
            )
        except ContentMissing as missing:
            raise BackgroundUnavailable(
                f"{program.name!r}: its background file {missing.digest[:12]}… is not on this device"
            ) from None


@dataclass(frozen=True)
class ClientFiles:
    """The device's TLS client identity for HTTPS: its certificate and key (PEM files)."""

    cert_file: Path
    key_file: Path


class _Received:
    """Bytes as they arrive, bounded by the listed size and hashed (no I/O)."""

    def __init__(self, expected: BackgroundFile) -> None:
        self.expected = expected
        self.size = 0
        self._hash = hashlib.sha256()

    def take(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.expected.size:
            raise BackgroundUnavailable(
                f"the server sent more than the {self.expected.size} bytes the prescription lists"
            )
        self._hash.update(chunk)

    def check_complete(self) -> None:
        if self.size != self.expected.size:
            raise BackgroundUnavailable(
                f"the server sent {self.size} bytes, the prescription lists {self.expected.size}"
            )
        digest = self._hash.hexdigest()
        if digest != self.expected.sha256:
            raise BackgroundUnavailable(
                f"the bytes sent have SHA-256 {digest[:12]}…, not the {self.expected.sha256[:12]}… "
                "they were prescribed as"
            )


class BackgroundFetcher:
    """Fetches background files into ``cache`` from ``server_url`` (the server's HTTPS API root,
    ``https://host:port/api/v1``) with the device's client certificate (``client_files()``: read
    at each fetch, so a renewed certificate is used at once), the server's certificate checked
    against ``ca_file`` (None: the system's CAs)."""

    def __init__(
        self,
        cache: BackgroundCache,
        server_url: str,
        client_files: Callable[[], ClientFiles],
        ca_file: Path | None = None,
        *,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        if not server_url.startswith("https://"):
            raise ResoneraError(f"background files are fetched over HTTPS only, not {server_url!r}")
        self.cache = cache
        self.server_url = server_url.rstrip("/")
        self.client_files = client_files
        self.ca_file = ca_file
        self.timeout_s = timeout_s

    def url_for(self, sha256: str) -> str:
        return f"{self.server_url}/device/backgrounds/{sha256}"

    def ensure(self, file: BackgroundFile) -> Path:
        """The cached file of ``file``, fetched first if not held; ``BackgroundUnavailable``."""
        if self.cache.holds(file.sha256):
            return self.cache.path_for(file.sha256)
        return self.fetch(file)

    def fetch(self, file: BackgroundFile) -> Path:
        """Fetch ``file`` into the cache (see the module); its path, or ``BackgroundUnavailable``
        naming the file and why."""
        try:
            return self._fetch(file)
        except BackgroundUnavailable as exc:
            raise BackgroundUnavailable(f"background file {file.sha256[:12]}…: {exc}") from None

    def _fetch(self, file: BackgroundFile) -> Path:
        if file.size > MAX_BACKGROUND_BYTES:
            raise BackgroundUnavailable(
                f"{file.size} bytes is over the {MAX_BACKGROUND_BYTES} a background may have"
            )
        url = self.url_for(file.sha256)
        request = urllib.request.Request(url, headers={"Accept": "application/octet-stream"})
        try:
            with urllib.request.urlopen(
                request, context=self._context(), timeout=self.timeout_s
            ) as answer:
                length = answer.headers.get("Content-Length")
                if length is not None and length.strip() != str(file.size):
                    raise BackgroundUnavailable(
                        f"the server offers {length.strip()} bytes, the prescription lists "
                        f"{file.size}"
                    )
                return self._store(file, answer.read)
        except urllib.error.HTTPError as exc:
            what = "the server has no such file" if exc.code == 404 else "the server refused"
            raise BackgroundUnavailable(f"{what} ({exc.code} from {url})") from None
        except urllib.error.URLError as exc:
            raise BackgroundUnavailable(f"cannot reach {url}: {exc.reason}") from None
        except (TimeoutError, OSError) as exc:  # ssl.SSLError is an OSError
            raise BackgroundUnavailable(f"cannot fetch {url}: {exc}") from None

    def _context(self) -> ssl.SSLContext:
        try:
            return client_context(self.client_files(), self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise BackgroundUnavailable(f"the device's TLS files cannot be used: {exc}") from None

    def _store(self, file: BackgroundFile, read: Callable[[int], bytes]) -> Path:
        """Stream ``read`` into a temporary file, check it, rename it to its hash."""
        received = _Received(file)
        fd, name = tempfile.mkstemp(
            prefix=f"{_PARTIAL_PREFIX}{file.sha256[:12]}-", dir=self.cache.directory
        )
        partial = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := read(CHUNK_BYTES):
                    received.take(chunk)
                    out.write(chunk)
                received.check_complete()
                out.flush()
                os.fsync(out.fileno())
            final = self.cache.path_for(file.sha256)
            os.replace(partial, final)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        fsync_dir(self.cache.directory)
        log.info("background file %s fetched (%d bytes)", file.sha256[:12], file.size)
        return final


def client_context(files: ClientFiles, ca_file: Path | None) -> ssl.SSLContext:
    """A TLS context for the device's HTTPS requests to its server (background files, agent
    updates): ``files`` as the client certificate, the server's checked against ``ca_file`` (None:
    the system's CAs). ``OSError``/``ssl.SSLError`` when the files cannot be used."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    context.load_cert_chain(files.cert_file, files.key_file)
    return context


def device_client_files(settings: DeviceSettings) -> Callable[[], ClientFiles] | None:
    """How to find the device's client certificate at each request (that of its broker
    connection, a renewed one included); None when it has none. The returned function raises
    ``BackgroundUnavailable`` when the files have gone."""
    if settings.mqtt.cert_file is None:
        return None

    def client_files() -> ClientFiles:
        mqtt = renewed_mqtt(settings) or settings.mqtt
        if mqtt.cert_file is None or mqtt.key_file is None:
            raise BackgroundUnavailable("this device has no client certificate and key")
        return ClientFiles(mqtt.cert_file, mqtt.key_file)

    return client_files


def background_fetcher(
    settings: DeviceSettings, cache: BackgroundCache
) -> BackgroundFetcher | None:
    """The device's fetcher: the server's API root (``server_url``, the enrolled identity's by
    default), the device's client certificate (``device_client_files``) and the server's CA
    (``enroll_ca_file``); None when it has no server or no certificate, so its capabilities say
    it cannot fetch (logged)."""
    client_files = device_client_files(settings)
    if settings.server_url is None or client_files is None:
        log.debug("background files cannot be fetched: no server_url or no client certificate")
        return None
    return BackgroundFetcher(cache, settings.server_url, client_files, settings.enroll_ca_file)
