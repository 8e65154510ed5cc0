"""Downloading an update bundle: ``GET {server_url}/device/updates/{sha256}`` over HTTPS with the
device's client certificate (the TLS setup is ``backgrounds.client_context``'s, shared), into
``data_dir/agent/downloads/<sha256>.part``, renamed to ``<sha256>.tar`` once its size and SHA-256
are the target's.

- An interrupted download resumes: ``Range: bytes=N-`` for the N bytes the ``.part`` holds. The
  server answers 206 from N (appended), or 200 with the whole file (the ``.part`` starts over).
- Never more than the target's size is taken: a longer answer is cut and counts as corrupt, as
  does a whole file whose SHA-256 is not the target's (the ``.part`` is removed); a short one is
  kept, to be resumed.
- While a session plays the reads are throttled to ``THROTTLED_BYTES_PER_S``: the download runs
  on a thread of the agent, and ``os.nice`` in a thread would lower the whole process on Linux
  (the audio thread too), so the bandwidth and the CPU time of hashing and writing are bounded
  instead. Between sessions it runs at full speed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Final

from resonera.common.agent_update import AgentUpdateTarget
from resonera.common.errors import ResoneraError
from resonera.common.files import fsync_dir
from resonera.device.backgrounds import BackgroundUnavailable, ClientFiles, client_context

__all__ = ["BundleFetcher", "DownloadFailed", "downloads_dir"]

log = logging.getLogger(__name__)

TIMEOUT_S: Final = 30.0
CHUNK_BYTES: Final = 64 * 1024
#: The download's pace while a session plays (a 60 MB bundle in about four minutes).
THROTTLED_BYTES_PER_S: Final = 256 * 1024
#: The ``.part`` is synced this often, so a power loss costs at most this much again.
SYNC_EVERY_BYTES: Final = 4 * 1024 * 1024


class DownloadFailed(ResoneraError):
    """The bundle was not had; ``corrupt``: the server's bytes are not the target's (else the
    network or the server failed, and trying again later may do)."""

    def __init__(self, message: str, *, corrupt: bool = False) -> None:
        super().__init__(message)
        self.corrupt = corrupt


def downloads_dir(agent: Path) -> Path:
    return agent / "downloads"


class BundleFetcher:
    """Fetches bundles into ``directory`` from ``server_url`` (the API root, ``https://…/api/v1``)
    with the client certificate ``client_files()`` names (read at each fetch: a renewed one is
    used at once). ``throttled()``: a session plays now; ``cancelled()``: stop (the target went)."""

    def __init__(
        self,
        directory: Path,
        server_url: str,
        client_files: Callable[[], ClientFiles],
        ca_file: Path | None = None,
        *,
        timeout_s: float = TIMEOUT_S,
        throttled: Callable[[], bool] = lambda: False,
    ) -> None:
        if not server_url.startswith("https://"):
            raise ResoneraError(f"updates are fetched over HTTPS only, not {server_url!r}")
        self.directory = directory
        self.server_url = server_url.rstrip("/")
        self.client_files = client_files
        self.ca_file = ca_file
        self.timeout_s = timeout_s
        self.throttled = throttled

    def url_for(self, sha256: str) -> str:
        return f"{self.server_url}/device/updates/{sha256}"

    def path_for(self, sha256: str) -> Path:
        return self.directory / f"{sha256}.tar"

    def part_for(self, sha256: str) -> Path:
        return self.directory / f"{sha256}.part"

    def discard(self, sha256: str | None = None) -> None:
        """The download of ``sha256`` removed (None: every one)."""
        if not self.directory.exists():
            return
        for path in self.directory.iterdir():
            if sha256 is None or path.name.startswith(sha256):
                path.unlink(missing_ok=True)

    def fetch(self, target: AgentUpdateTarget, cancelled: Callable[[], bool]) -> Path:
        """The bundle of ``target`` on disk, downloaded (or resumed) if need be; ``DownloadFailed``."""
        final = self.path_for(target.sha256)
        if final.is_file() and final.stat().st_size == target.size:
            return final
        self.directory.mkdir(parents=True, exist_ok=True)
        for other in self.directory.iterdir():  # one bundle at a time is kept
            if not other.name.startswith(target.sha256):
                other.unlink(missing_ok=True)
        part = self.part_for(target.sha256)
        have = part.stat().st_size if part.exists() else 0
        if have > target.size:
            part.unlink()
            have = 0
        if have < target.size:
            self._download(target, part, have, cancelled)
        self._check(target, part)
        os.replace(part, final)
        fsync_dir(self.directory)
        log.info("update %s downloaded (%d bytes)", target.version, target.size)
        return final

    def _download(
        self, target: AgentUpdateTarget, part: Path, have: int, cancelled: Callable[[], bool]
    ) -> None:
        url = self.url_for(target.sha256)
        headers = {"Accept": "application/octet-stream"}
        if have:
            headers["Range"] = f"bytes={have}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            context = client_context(self.client_files(), self.ca_file)
        except (OSError, ssl.SSLError, BackgroundUnavailable) as exc:
            raise DownloadFailed(f"the device's TLS files cannot be used: {exc}") from None
        try:
            with urllib.request.urlopen(request, context=context, timeout=self.timeout_s) as answer:
                if answer.status == 206:
                    start = _range_start(answer.headers.get("Content-Range"))
                    if start != have:
                        raise DownloadFailed(f"the server resumed at byte {start}, not {have}")
                elif answer.status == 200:
                    have = 0  # the whole file again
                else:
                    raise DownloadFailed(f"the server answered {answer.status} for {url}")
                self._append(target, part, have, answer.read, cancelled)
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # what we hold is not a prefix the server knows: start over
                part.unlink(missing_ok=True)
            what = "the server has no such bundle" if exc.code == 404 else "the server refused"
            raise DownloadFailed(f"{what} ({exc.code} from {url})") from None
        except urllib.error.URLError as exc:
            raise DownloadFailed(f"cannot reach {url}: {exc.reason}") from None
        except (TimeoutError, OSError) as exc:  # ssl.SSLError is an OSError
            raise DownloadFailed(f"cannot fetch {url}: {exc}") from None

    def _append(
        self,
        target: AgentUpdateTarget,
        part: Path,
        have: int,
        read: Callable[[int], bytes],
        cancelled: Callable[[], bool],
    ) -> None:
        with part.open("r+b" if have and part.exists() else "wb") as out:
            out.seek(have)
            out.truncate()
            unsynced = 0
            while chunk := read(CHUNK_BYTES):
                if cancelled():
                    raise DownloadFailed("the update was withdrawn during its download")
                if have + len(chunk) > target.size:
                    out.close()
                    part.unlink(missing_ok=True)
                    raise DownloadFailed(
                        f"the server sent more than the target's {target.size} bytes", corrupt=True
                    )
                out.write(chunk)
                have += len(chunk)
                unsynced += len(chunk)
                if unsynced >= SYNC_EVERY_BYTES:
                    out.flush()
                    os.fsync(out.fileno())
                    unsynced = 0
                if self.throttled():
                    time.sleep(len(chunk) / THROTTLED_BYTES_PER_S)
            out.flush()
            os.fsync(out.fileno())
        if have < target.size:
            raise DownloadFailed(f"the download stopped at {have} of {target.size} bytes")

    def _check(self, target: AgentUpdateTarget, part: Path) -> None:
        digest = hashlib.sha256()
        with part.open("rb") as fh:
            while chunk := fh.read(1024 * 1024):
                digest.update(chunk)
        if digest.hexdigest() != target.sha256:
            part.unlink(missing_ok=True)
            raise DownloadFailed(
                f"the bytes downloaded have SHA-256 {digest.hexdigest()[:12]}…, not the "
                f"target's {target.sha256[:12]}…",
                corrupt=True,
            )


def _range_start(content_range: str | None) -> int | None:
    """The first byte of ``Content-Range: bytes A-B/N`` (None when it says none)."""
    if not content_range or not content_range.startswith("bytes "):
        return None
    first, _, _ = content_range.removeprefix("bytes ").partition("-")
    return int(first) if first.isdigit() else None
