"""The server's background sound files, by content: ``<data_dir>/backgrounds/<sha256>``.

A clinician or admin uploads a WAV or FLAC file (``POST /backgrounds``); the store writes the bytes
to a temporary file beside the others, bounded by ``MAX_BACKGROUND_BYTES`` as they arrive, reads
its header with soundfile (a file the engine could not play is refused before it is kept), then
renames it to its SHA-256: a file is there only under the hash of its bytes, and never half
written. A library program names a background by that hash (``sha256:<hex>``), only if the store
holds it; a prescription lists it with its size, and a device fetches it by hash with its client
certificate (``GET /device/backgrounds/{sha256}``) and checks both.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Final

from resonera.common.prescription import MAX_BACKGROUND_BYTES, BackgroundFile
from resonera.server.settings import ServerSettings

#: What the engine's background layer reads (``engine/audio/background.py``: WAV or FLAC).
FORMATS: Final = ("WAV", "FLAC")
_PARTIAL_PREFIX: Final = ".part-"
#: An upload's temporary file untouched this long was left by a crash (64 MiB take seconds).
STALE_PARTIAL_S: Final = 3600.0


class BackgroundInvalid(ValueError):
    """An upload the store refuses; the message says why. ``too_large``: over the size bound."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


def _is_sha256(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


class BackgroundStore:
    """The content-addressed folder. What a crash left half-written is removed when the store is
    opened, once it is older than ``STALE_PARTIAL_S``: another API process may be writing a
    younger one now."""

    def __init__(self, directory: Path, max_bytes: int = MAX_BACKGROUND_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        stale_before = time.time() - STALE_PARTIAL_S
        for leftover in directory.glob(f"{_PARTIAL_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                if leftover.stat().st_mtime < stale_before:
                    leftover.unlink()

    @classmethod
    def for_settings(cls, settings: ServerSettings) -> BackgroundStore:
        return cls(settings.data_dir / "backgrounds")

    def path_for(self, sha256: str) -> Path:
        if not _is_sha256(sha256):  # never a path built from anything but a hash
            raise ValueError(f"{sha256[:80]!r} is not a SHA-256 in hex")
        return self.directory / sha256

    def file(self, sha256: str) -> BackgroundFile | None:
        """The held file named ``sha256`` with its size; None when the store lacks it."""
        try:
            size = self.path_for(sha256).stat().st_size
        except (FileNotFoundError, ValueError):
            return None
        return BackgroundFile(sha256=sha256, size=size)

    def holds(self, sha256: str) -> bool:
        return self.file(sha256) is not None

    def writer(self) -> BackgroundWriter:
        return BackgroundWriter(self)

    def locate(self, sha256: str) -> Path | None:
        """The held file named ``sha256`` (None: not held), for
        ``common.prescription.resolve_content_paths`` (previews)."""
        return self.path_for(sha256) if self.holds(sha256) else None


class BackgroundWriter:
    """One upload: ``write`` the chunks as they arrive, then ``finish``; a ``with`` block removes
    the temporary file whatever happens."""

    def __init__(self, store: BackgroundStore) -> None:
        self.store = store
        fd, name = tempfile.mkstemp(prefix=_PARTIAL_PREFIX, dir=store.directory)
        self._out = os.fdopen(fd, "wb")
        self._partial = Path(name)
        self._hash = hashlib.sha256()
        self.size = 0

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._out.close()
        self._partial.unlink(missing_ok=True)

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.store.max_bytes:
            raise BackgroundInvalid(
                f"the file is larger than the {self.store.max_bytes} bytes a background may have",
                too_large=True,
            )
        self._hash.update(chunk)
        self._out.write(chunk)

    def finish(self) -> BackgroundFile:
        """Check the file's header and keep it under its hash (the same bytes again: the same
        file, kept once)."""
        if self.size == 0:
            raise BackgroundInvalid("the file is empty")
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()
        # Here, not at the top: soundfile brings numpy, 0.17 s and 11.5 MB on every server process
        # (API, ingest, CLI) at start (measured on the app's imports), and only an upload needs it.
        import soundfile

        try:
            info = soundfile.info(str(self._partial))
        except (RuntimeError, soundfile.LibsndfileError) as exc:
            raise BackgroundInvalid(f"not a sound file soundfile can read: {exc}") from None
        if info.format not in FORMATS:
            raise BackgroundInvalid(
                f"a {info.format} file; backgrounds are {' or '.join(FORMATS)} files"
            )
        if info.frames <= 0:
            raise BackgroundInvalid("the file holds no sound (0 frames)")
        sha256 = self._hash.hexdigest()
        os.replace(self._partial, self.store.path_for(sha256))
        return BackgroundFile(sha256=sha256, size=self.size)
