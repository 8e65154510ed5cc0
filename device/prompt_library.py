"""Reading the prompt cache at run time: ``PromptLibrary`` (never synthesises) and the cache's
layout, ``data_dir/prompts/`` with one 16-bit mono WAV per prompt and ``manifest.json`` (text,
its hash with voice, rate and level; language; engine version; calibration), which ``prompts.py``
writes at install or provisioning time.

This half imports neither scipy nor soundfile: the agent opens the library at start (the manifest,
the files' headers: the standard library's ``wave``) and reads a clip when it is said.
"""

from __future__ import annotations

import json
import logging
import wave
from pathlib import Path
from typing import Any, Final

import numpy as np

from resonera.common.profile import CheckInQuestion
from resonera.device.audio.prompt_mixer import Clip
from resonera.device.prompt_catalogue import (
    PromptsError,
    checkin_key,
    program_name_key,
    time_left_keys,
)

__all__ = ["DEFAULT_LEVEL_DBA", "MANIFEST", "PromptLibrary", "prompts_dir", "read_manifest"]

log = logging.getLogger(__name__)

MANIFEST: Final = "manifest.json"
MANIFEST_VERSION: Final = 1
DEFAULT_LEVEL_DBA: Final = 60.0


def prompts_dir(data_dir: Path) -> Path:
    """Where the device keeps its prompts."""
    return data_dir / "prompts"


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The cache's manifest; None when there is none or it is of another layout (then the build
    speaks everything again). ``PromptsError`` when it cannot be read."""
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PromptsError(f"prompt manifest {path} cannot be read: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
        return None  # another layout: rebuild everything
    return data


class PromptLibrary:
    """The cached prompts of one directory (never runs espeak-ng).

    Every file is checked when the library opens (a missing or mismatched cache is a
    ``PromptsError`` then, not a silent panel later), but a clip's samples are read only when it
    is asked for (``clips``, on the control panel's thread, never the audio thread): the whole
    catalogue decoded would hold some 25 MB of a device that must play within 100 MB (issue 6),
    for prompts of which a session says a handful. The standard library's ``wave`` reads them.
    """

    def __init__(self, directory: Path, sample_rate: int) -> None:
        manifest = read_manifest(directory)
        if manifest is None:
            raise PromptsError(
                f"no prompts in {directory}: run 'resonera-device prompts build' first"
            )
        if manifest.get("sample_rate") != sample_rate:
            raise PromptsError(
                f"prompts in {directory} are at {manifest.get('sample_rate')} Hz, the device "
                f"plays at {sample_rate} Hz: run 'resonera-device prompts build' again"
            )
        self.directory = directory
        self.sample_rate = sample_rate
        self.language = str(manifest.get("language", "en"))
        self.level_dba = float(str(manifest.get("level_dba", DEFAULT_LEVEL_DBA)))
        self._files: dict[str, Path] = {}
        entries = manifest.get("prompts") or {}
        for key, entry in entries.items():
            if not isinstance(entry, dict):
                continue
            path = directory / str(entry.get("file", f"{key}.wav"))
            try:
                with wave.open(str(path), "rb") as wav:
                    layout = (wav.getnchannels(), wav.getsampwidth(), wav.getframerate())
            except (OSError, EOFError, wave.Error) as exc:
                raise PromptsError(f"prompt {key!r} cannot be read from {path}: {exc}") from None
            if layout != (1, 2, sample_rate):
                raise PromptsError(
                    f"prompt file {path} is not 16-bit mono at {sample_rate} Hz "
                    f"({layout[0]} channel(s), {8 * layout[1]}-bit, {layout[2]} Hz): "
                    "run 'resonera-device prompts build' again"
                )
            self._files[key] = path

    @property
    def keys(self) -> list[str]:
        return sorted(self._files)

    def clips(self, *keys: str) -> list[Clip]:
        """The clips for ``keys``, skipping (and logging) any the cache lacks or that cannot be
        read now: a missing prompt must never stop the sound or the controls."""
        found = []
        for key in keys:
            path = self._files.get(key)
            if path is None:
                log.warning("prompt %r is not in %s", key, self.directory)
                continue
            try:
                with wave.open(str(path), "rb") as wav:
                    pcm = wav.readframes(wav.getnframes())
            except (OSError, EOFError, wave.Error) as exc:
                log.warning("prompt %r cannot be read from %s: %s", key, path, exc)
                continue
            samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
            samples *= np.float32(1 / 32768)  # in place: the notice is seconds of speech
            found.append(Clip(key, samples, self.sample_rate))
        return found

    def time_left(self, minutes: int) -> list[Clip]:
        return self.clips(*time_left_keys(minutes))

    def has(self, key: str) -> bool:
        return key in self._files

    def question_key(self, question: CheckInQuestion) -> str:
        return checkin_key(question, self.language)

    def program_key(self, name: str) -> str:
        return program_name_key(name)
