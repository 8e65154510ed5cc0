"""Files written whole or not at all: what every writer of keys, certificates, images and state
needs, so a crash or a full disk leaves the previous file, never half of a new one.

(The agent's launcher, ``device/updater/launcher.py``, keeps its own copy: it is copied out of the
installed package and runs with the standard library alone.)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """``path`` holds ``data`` (file mode ``mode``) or what it held before, whenever a crash comes:
    a temporary file beside it, synced, renamed over it, the folder synced."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(name, mode)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
