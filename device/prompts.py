"""Spoken prompts: a catalogue of texts, rendered once with espeak-ng, cached as WAV files.

Three modules, one per concern, and this one their public face (every name the agent, the command
and the tests use is importable from here):

- ``prompt_catalogue.py``: what is said. The texts are data (``prompt_texts.toml`` in this package,
  where their wording is explained), with the keys "time left" and the check-in questions are said
  with.
- this module: building the cache (``build_prompts``, ``build_checkin_prompts``), at install or
  provisioning time (``resonera-device prompts build``), never on the audio path. It speaks every
  text of the catalogue with espeak-ng (the Debian package), in the person's language when both the
  catalogue and espeak-ng have it (otherwise English, and the report says why), resamples to the
  device's rate, normalises the level, and writes one WAV per prompt plus ``manifest.json`` (text
  hash, voice, language, rate, level). A later build re-speaks only what changed.
- ``prompt_library.py``: reading the cache at run time (``PromptLibrary``: ``Clip`` arrays for the
  prompt mixer, ``device/audio/prompt_mixer.py``); it never runs espeak-ng. The agent opens the
  library at start and reads a clip when it is said; scipy.signal, which only the build needs, is
  imported inside ``build_prompts`` (the reason is beside that import).

Level. Every prompt is scaled so its active-speech level (the A-weighted level of the 20 ms frames
within 30 dB of the loudest one; a simple form of ITU-T P.56's active speech level) is
``level_dba`` at the ear (60 dBA by default), converted to dBFS through the device's output
calibration (``Calibration.dbfs_for_spl``: dBFS is the rms of one channel, the ``levels.py``
convention, and the A-weighted dBFS maps to dBA by the same offset). On the reference headphones
(``engine/calibrations/reference-headphones.toml``, 0 dBFS ↔ 83 dB SPL) 60 dBA is −23 dBFS(A). The
peak is kept at or below −1 dBFS; if that binds (speech peaks ~20 dB over its active level, so on
a quiet output chain), the level is lower and the report and the manifest say so. 60 dBA is
conversational speech: clear over a program ducked by 15 dB, far under the 80 dBA that ITU-T H.870
allows for 40 h a week, so a prompt adds no meaningful dose; the safety chain after the mixer still
enforces the person's ceiling. Files are 16-bit PCM WAV, mono.

Check-ins (issue 12). The clinician writes the questions, so they cannot be in the catalogue: when
a profile is applied, ``build_checkin_prompts`` speaks each question with its anchors ("0 means
…, 10 means …", ``CHECKIN_ANCHORS``) into the same cache, in the cache's language and level, under
a key made of the text's hash (``checkin_key``); the voice is in the digest, so a new voice speaks
it again. The fixed phrases (how to answer) and the numbers 0–10 are in the catalogue.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from numpy.typing import NDArray

from resonera.common.errors import ConfigError
from resonera.common.profile import CheckInQuestion
from resonera.device.prompt_catalogue import (
    CATALOGUE,
    CHECKIN_ANCHORS,
    MAX_NUMBER,
    PromptsError,
    checkin_key,
    checkin_text,
    choose_language,
    program_name_key,
    texts,
    time_left_keys,
)
from resonera.device.prompt_library import (
    DEFAULT_LEVEL_DBA,
    MANIFEST,
    MANIFEST_VERSION,
    PromptLibrary,
    prompts_dir,
    read_manifest,
)
from resonera.engine.audio.calibration import Calibration
from resonera.engine.safety.aweighting import AWeightingFilter

__all__ = [
    "CATALOGUE",
    "CHECKIN_ANCHORS",
    "DEFAULT_LEVEL_DBA",
    "MAX_NUMBER",
    "BuildReport",
    "PromptLibrary",
    "PromptsError",
    "active_level_dbfs",
    "build_checkin_prompts",
    "build_program_name_prompts",
    "build_prompts",
    "checkin_key",
    "checkin_text",
    "choose_language",
    "espeak_languages",
    "program_name_key",
    "prompts_dir",
    "texts",
    "time_left_keys",
]

log = logging.getLogger(__name__)

#: Prompts louder than this are refused at build time: they are to be heard, not to add dose.
MAX_LEVEL_DBA = 75.0
MIN_LEVEL_DBA = 45.0
PEAK_CEILING_DBFS = -1.0
#: espeak-ng's words per minute: a little slower than its default (175), for clarity.
SPEED_WPM = 150
_FRAME_S = 0.02
_GATE_DB = 30.0


@dataclass(frozen=True)
class BuildReport:
    directory: Path
    language: str
    requested_language: str
    voice: str
    sample_rate: int
    level_dba: float
    level_dbfs: float
    built: int
    reused: int
    #: Why the language is not the one asked for ("" when it is).
    fallback: str = ""
    #: Prompts whose peak ceiling made them quieter than ``level_dba``: key → their level (dBA).
    quieter: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"prompts in {self.directory}: {self.built} spoken, {self.reused} unchanged",
            f"language {self.language} (voice {self.voice}), {self.sample_rate} Hz, "
            f"{self.level_dba:g} dBA at the ear = {self.level_dbfs:.1f} dBFS(A)",
        ]
        if self.fallback:
            lines.append(self.fallback)
        if self.quieter:
            quietest = min(self.quieter, key=self.quieter.__getitem__)
            lines.append(
                f"{len(self.quieter)} prompt(s) peak-limited below {self.level_dba:g} dBA "
                f"(quietest: {quietest}, {self.quieter[quietest]:.1f} dBA): the output chain has "
                "little headroom; see the manifest"
            )
        return "\n".join(lines)


def _espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise PromptsError("espeak-ng is not installed (Debian: apt install espeak-ng)")
    return path


def _espeak_version(espeak: str) -> str:
    out = subprocess.run(
        [espeak, "--version"], capture_output=True, text=True, check=False, timeout=30
    ).stdout
    return out.split("Data at")[0].strip() or "espeak-ng"


def espeak_languages(espeak: str) -> set[str]:
    """Languages espeak-ng has a voice for (``--voices`` lists them)."""
    out = subprocess.run(
        [espeak, "--voices"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    languages = {line.split()[1] for line in out.splitlines()[1:] if len(line.split()) > 1}
    return languages | {language.split("-")[0] for language in languages}  # "en-gb" → "en" too


def _speak(espeak: str, voice: str, text: str, workdir: Path) -> tuple[NDArray[np.float64], int]:
    out = workdir / "speech.wav"
    try:
        subprocess.run(
            [espeak, "-v", voice, "-s", str(SPEED_WPM), "-w", str(out), text],
            capture_output=True,
            check=True,
            timeout=60,
        )
    except subprocess.CalledProcessError as exc:
        detail = exc.stderr.decode(errors="replace").strip()
        raise PromptsError(f"espeak-ng failed on {text!r}: {detail}") from None
    samples, rate = soundfile.read(out, dtype="float64", always_2d=True)
    return samples[:, 0], int(rate)


def active_level_dbfs(samples: NDArray[np.floating], sample_rate: int) -> float:
    """A-weighted active-speech level (dBFS(A)): the energy of the 20 ms frames within 30 dB of
    the loudest frame (pauses between words do not lower it)."""
    weighted = AWeightingFilter(sample_rate, channels=1).filter_channels(
        np.asarray(samples, dtype=np.float32)[:, None]
    )[0]
    frame = max(1, round(_FRAME_S * sample_rate))
    count = len(weighted) // frame
    if count == 0:
        return -math.inf
    energy = np.mean(weighted[: count * frame].reshape(count, frame) ** 2, axis=1)
    loudest = float(energy.max())
    if loudest <= 0:
        return -math.inf
    active = energy[energy >= loudest * 10 ** (-_GATE_DB / 10)]
    return 10 * math.log10(float(np.mean(active)))


def _normalise(samples: NDArray[np.float64], rate: int, target_dbfs: float) -> NDArray[np.float64]:
    level = active_level_dbfs(samples, rate)
    if not math.isfinite(level):
        raise PromptsError("espeak-ng produced silence")
    scaled = samples * 10 ** ((target_dbfs - level) / 20)
    peak = float(np.max(np.abs(scaled)))
    ceiling = 10 ** (PEAK_CEILING_DBFS / 20)
    return scaled * (ceiling / peak) if peak > ceiling else scaled


def _digest(text: str, voice: str, rate: int, level_dbfs: float) -> str:
    key = json.dumps([text, voice, rate, round(level_dbfs, 2), SPEED_WPM, MANIFEST_VERSION])
    return hashlib.sha256(key.encode()).hexdigest()


def build_prompts(
    directory: Path,
    calibration: Calibration,
    *,
    language: str = "en",
    sample_rate: int = 48000,
    level_dba: float = DEFAULT_LEVEL_DBA,
    keys: list[str] | None = None,
    extra: dict[str, str] | None = None,
) -> BuildReport:
    """Speak the catalogue into ``directory`` (created; unchanged prompts are kept). ``keys``
    limits the build to those prompts (tests); a full build also removes prompts no longer
    in the catalogue. ``extra`` adds texts to the catalogue (key → text: check-in questions).
    ``PromptsError`` names what went wrong; ``ConfigError`` for a bad level."""
    if not MIN_LEVEL_DBA <= level_dba <= MAX_LEVEL_DBA:
        raise ConfigError(
            f"prompt level {level_dba:g} dBA is outside {MIN_LEVEL_DBA:g}…{MAX_LEVEL_DBA:g} dBA"
        )
    if sample_rate < 32_000:
        raise ConfigError(
            f"prompts are built at the device's rate (44100 or 48000), not {sample_rate}"
        )
    # Build time only: importing scipy.signal adds 67 MB to the process's peak RSS and 1.8-2.3 s
    # (measured: ru_maxrss and ``python -X importtime`` after numpy and this module, on the busy
    # 2-core machine), and the agent, which must play within 100 MB (issue 6), imports this module
    # (the panel: ``PromptLibrary``, ``build_checkin_prompts``).
    from scipy.signal import resample_poly

    espeak = _espeak()
    chosen, fallback = choose_language(language, espeak_languages(espeak))
    if fallback:
        log.warning("prompts: %s", fallback)
    catalogue = texts(chosen) | (extra or {})
    unknown = sorted(set(keys or ()) - set(catalogue))
    if unknown:
        raise PromptsError(f"no such prompt(s): {', '.join(unknown)}")
    wanted = keys if keys is not None else sorted(catalogue)
    level_dbfs = calibration.dbfs_for_spl(level_dba)
    directory.mkdir(parents=True, exist_ok=True)
    old = read_manifest(directory)
    entries: dict[str, Any] = {}
    if keys is not None and old is not None:
        entries.update(old.get("prompts", {}))
    quieter: dict[str, float] = {}
    built = reused = 0
    with tempfile.TemporaryDirectory(prefix="resonera-prompts-") as tmp:
        for key in wanted:
            text = catalogue[key]
            digest = _digest(text, chosen, sample_rate, level_dbfs)
            path = directory / f"{key}.wav"
            previous = (old or {}).get("prompts", {}).get(key)
            if previous and previous.get("digest") == digest and path.exists():
                entries[key] = previous
                reused += 1
                continue
            speech, rate = _speak(espeak, chosen, text, Path(tmp))
            if rate != sample_rate:
                common = math.gcd(rate, sample_rate)
                speech = resample_poly(speech, sample_rate // common, rate // common)
            speech = _normalise(speech, sample_rate, level_dbfs)
            level = calibration.spl_at_dbfs(active_level_dbfs(speech, sample_rate))
            if level < level_dba - 0.5:
                quieter[key] = level
            soundfile.write(path, speech.astype(np.float32), sample_rate, subtype="PCM_16")
            entries[key] = {
                "file": path.name,
                "text": text,
                "digest": digest,
                "level_dba": round(level, 2),
                "duration_s": round(len(speech) / sample_rate, 3),
            }
            built += 1
    if keys is None:
        for stale in set((old or {}).get("prompts") or {}) - set(entries):
            (directory / f"{stale}.wav").unlink(missing_ok=True)
    manifest = {
        "version": MANIFEST_VERSION,
        "language": chosen,
        "requested_language": language,
        "voice": chosen,
        "engine": _espeak_version(espeak),
        "sample_rate": sample_rate,
        "level_dba": level_dba,
        "level_dbfs": round(level_dbfs, 2),
        "calibration": calibration.name,
        "prompts": entries,
    }
    tmp_manifest = directory / f".{MANIFEST}.tmp"
    tmp_manifest.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp_manifest.replace(directory / MANIFEST)
    return BuildReport(
        directory, chosen, language, chosen, sample_rate, level_dba, level_dbfs, built, reused,
        fallback, quieter,
    )  # fmt: skip


def _build_into_cache(
    directory: Path, calibration: Calibration, texts_in: Callable[[str], dict[str, str]]
) -> BuildReport:
    """Speak ``texts_in(language)`` (key → text) into the prompt cache in ``directory`` (built
    already: its language, rate and level are kept); those spoken before are reused.
    ``PromptsError`` when there is no cache or espeak-ng is missing."""
    manifest = read_manifest(directory)
    if manifest is None:
        raise PromptsError(f"no prompts in {directory}: run 'resonera-device prompts build' first")
    language = str(manifest.get("language", "en"))
    extra = texts_in(language)
    return build_prompts(
        directory,
        calibration,
        language=language,
        sample_rate=int(manifest.get("sample_rate", 48000)),
        level_dba=float(manifest.get("level_dba", DEFAULT_LEVEL_DBA)),
        keys=sorted(extra),
        extra=extra,
    )


def build_checkin_prompts(
    directory: Path, calibration: Calibration, questions: Sequence[CheckInQuestion]
) -> BuildReport:
    """Speak ``questions`` into the prompt cache in ``directory`` (see ``_build_into_cache``).
    When a profile is applied, never on the audio path."""
    return _build_into_cache(
        directory,
        calibration,
        lambda language: {checkin_key(q, language): checkin_text(q, language) for q in questions},
    )


def build_program_name_prompts(
    directory: Path, calibration: Calibration, names: Sequence[str]
) -> BuildReport:
    """Speak the prescribed programs' ``names`` into the prompt cache in ``directory`` (issue 20:
    the play button says which program it starts). When programs are applied, never on the
    audio path."""
    return _build_into_cache(
        directory, calibration, lambda _language: {program_name_key(n): n.strip() for n in names}
    )
