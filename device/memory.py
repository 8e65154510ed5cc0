"""Keep the agent's native heap small (issue 6: RSS ≤ 100 MB while playing). glibc only.

glibc gives a thread that allocates while another holds the main heap an arena of its own (up to
8 per core), and each arena keeps what was freed in it: the agent's threads (sync, player, control
socket, panel, read-ahead) each kept megabytes after a session. Two arenas serve a few threads that
mostly wait. Blocks from 128 kB up (numpy's temporaries of a rendered block, decoded prompts) are
mmap'ed, so they go back to the system when freed; setting the threshold also stops glibc from
raising it after the first large free, which is what kept them in the heap. After start-up and
after each session the heap's free tops are handed back (``malloc_trim``).

Elsewhere (musl, macOS) nothing is changed: the functions say so by returning False.
"""

from __future__ import annotations

import ctypes
import logging
import os
from functools import cache
from typing import Final

log = logging.getLogger(__name__)

# mallopt(3) parameters (glibc's malloc.h)
M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
M_ARENA_MAX: Final = -8

ARENAS: Final = 2
#: Above this, blocks are mmap'ed (and returned when freed); glibc's own starting value, fixed.
MMAP_THRESHOLD: Final = 128 * 1024
#: Free memory at the heap's top beyond this is returned to the system at once.
TRIM_THRESHOLD: Final = 256 * 1024


@cache
def _glibc() -> ctypes.CDLL | None:
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return None
        libc = ctypes.CDLL(None)  # the process's own symbols: glibc's malloc is among them
    except (AttributeError, ValueError, OSError):  # no confstr, no such name, no libc to open
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc


def limit_native_heap() -> bool:
    """Cap the malloc arenas and fix the mmap and trim thresholds. Call it before any thread
    starts (an arena made before stays). False where this is not glibc (nothing changed)."""
    libc = _glibc()
    if libc is None:
        return False
    applied = all(
        libc.mallopt(param, value) == 1
        for param, value in (
            (M_ARENA_MAX, ARENAS),
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        )
    )
    if not applied:
        log.warning("glibc refused a malloc setting; the agent may hold more memory than needed")
    return applied


def release_free_memory() -> bool:
    """Hand the free memory of every arena back to the system (after start-up, after a session).
    False where this is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
