"""Spoken prompts: a catalogue of texts, rendered once with espeak-ng, cached as WAV files.

``build_prompts`` runs at install or provisioning time (``resonera-device prompts build``), never
on the audio path: it speaks every text of the catalogue with espeak-ng (the Debian package), in
the person's language when both the catalogue and espeak-ng have it (otherwise English, and the
report says why), resamples to the device's rate, normalises the level, and writes one WAV per
prompt plus ``manifest.json`` (text hash, voice, language, rate, level). A later build re-speaks
only what changed. ``PromptLibrary`` reads the cache into ``Clip`` arrays for the prompt mixer
(``device/audio/prompt_mixer.py``); it never runs espeak-ng. The two halves are apart on purpose:
the agent opens the library (the manifest, the files' headers: the standard library's ``wave``) at
start and reads a clip when it is said, so the build's dependencies (scipy.signal for resampling,
~70 MB; soundfile) are imported inside the build functions only.

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

Wording. The allowance messages follow ITU-T H.870 (2022) clause 11 and the WHO-ITU "Safe
listening devices and systems" (2019) examples: tell the person plainly how much of the weekly
allowance is used, at 80 % and at 100 %, and what listening at a lower level buys them. The texts
are ours (short enough to be understood over a ducked program), not quotations.

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
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from resonera.common.errors import ConfigError, ResoneraError
from resonera.common.profile import CheckInQuestion
from resonera.device.audio.prompt_mixer import Clip
from resonera.engine.audio.calibration import Calibration
from resonera.engine.safety.aweighting import AWeightingFilter

__all__ = [
    "CATALOGUE",
    "BuildReport",
    "PromptLibrary",
    "PromptsError",
    "build_checkin_prompts",
    "build_prompts",
    "checkin_key",
    "checkin_text",
    "time_left_keys",
]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
DEFAULT_LEVEL_DBA = 60.0
#: Prompts louder than this are refused at build time: they are to be heard, not to add dose.
MAX_LEVEL_DBA = 75.0
MIN_LEVEL_DBA = 45.0
PEAK_CEILING_DBFS = -1.0
#: espeak-ng's words per minute: a little slower than its default (175), for clarity.
SPEED_WPM = 150
_FRAME_S = 0.02
_GATE_DB = 30.0
#: Numbers are spoken from their own clips, so "time left" needs no synthesis at run time.
MAX_NUMBER = 59

#: The texts, per language. Numbers 0…59 are added as digits (espeak-ng reads them in the voice's
#: language). The first-use notice names the contraindications docs/safety.md §6 lists.
CATALOGUE: dict[str, dict[str, str]] = {
    "en": {
        "session_start": "Session starting.",
        "session_end": "Session finished.",
        "time_left": "Time left in this session:",
        "hour": "hour",
        "hours": "hours",
        "minute": "minute",
        "minutes": "minutes",
        "dose_80": (
            "You have used 80 percent of your weekly sound allowance. "
            "Listening at a lower volume lets you listen safely for longer."
        ),
        "dose_100": (
            "You have used all of your weekly sound allowance. "
            "To protect your hearing, the sound is now limited, as your clinician has set."
        ),
        "fault_amplifier_hot": (
            "The sound stopped because the amplifier was too hot. "
            "Let the device cool down before you press play."
        ),
        "fault_headphones_unplugged": (
            "The sound stopped because the headphones were unplugged. "
            "Plug them in, then press play."
        ),
        "first_use": (
            "Before you start: keep the volume comfortable. Loud sound for a long time can damage "
            "your hearing. Do not listen while driving, and if you have epilepsy, ask your "
            "clinician before using this device."
        ),
        "max_volume": "Maximum volume.",
        "no_program": "No program has been assigned to you yet.",
        "checkin_before": "Before the session, a short check-in.",
        "checkin_after": "The session is over. A short check-in.",
        "checkin_how": (
            "Choose a number with the volume buttons. Press play to confirm, or stop to skip."
        ),
        "checkin_done": "Thank you.",
    },
    "de": {
        "session_start": "Die Sitzung beginnt.",
        "session_end": "Die Sitzung ist beendet.",
        "time_left": "Verbleibende Zeit in dieser Sitzung:",
        "hour": "Stunde",
        "hours": "Stunden",
        "minute": "Minute",
        "minutes": "Minuten",
        "dose_80": (
            "Sie haben 80 Prozent Ihres wöchentlichen Hörpensums genutzt. "
            "Mit geringerer Lautstärke können Sie länger sicher hören."
        ),
        "dose_100": (
            "Sie haben Ihr wöchentliches Hörpensum ausgeschöpft. "
            "Zum Schutz Ihres Gehörs wird der Ton nun begrenzt, wie Ihre Ärztin oder Ihr Arzt "
            "es eingestellt hat."
        ),
        "fault_amplifier_hot": (
            "Der Ton wurde angehalten, weil der Verstärker zu heiß war. Lassen Sie das Gerät "
            "abkühlen, bevor Sie Wiedergabe drücken."
        ),
        "fault_headphones_unplugged": (
            "Der Ton wurde angehalten, weil der Kopfhörer ausgesteckt wurde. Stecken Sie ihn "
            "ein und drücken Sie dann Wiedergabe."
        ),
        "first_use": (
            "Bevor Sie beginnen: Hören Sie mit angenehmer Lautstärke. Lauter Schall über lange "
            "Zeit kann das Gehör schädigen. Nicht beim Autofahren hören, und bei Epilepsie "
            "fragen Sie vorher Ihre Ärztin oder Ihren Arzt."
        ),
        "max_volume": "Maximale Lautstärke.",
        "no_program": "Ihnen wurde noch kein Programm zugewiesen.",
        "checkin_before": "Vor der Sitzung eine kurze Abfrage.",
        "checkin_after": "Die Sitzung ist beendet. Eine kurze Abfrage.",
        "checkin_how": (
            "Wählen Sie eine Zahl mit den Lautstärketasten. Drücken Sie Wiedergabe zum "
            "Bestätigen oder Stopp zum Überspringen."
        ),
        "checkin_done": "Danke.",
    },
}
#: How a check-in question's ends are said after it, per catalogue language.
CHECKIN_ANCHORS = {
    "en": "0 means {low}. 10 means {high}.",
    "de": "0 bedeutet {low}. 10 bedeutet {high}.",
}


class PromptsError(ResoneraError):
    """The prompts cannot be built or read (espeak-ng missing, a broken cache)."""


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


def prompts_dir(data_dir: Path) -> Path:
    """Where the device keeps its prompts."""
    return data_dir / "prompts"


def texts(language: str) -> dict[str, str]:
    """Every prompt's text in ``language`` (a catalogue key), numbers included."""
    catalogue = dict(CATALOGUE[language])
    catalogue.update({f"n{n}": str(n) for n in range(MAX_NUMBER + 1)})
    return catalogue


def time_left_keys(minutes: int) -> list[str]:
    """The clips that say "time left: …" for ``minutes`` (hours and minutes, singular/plural)."""
    hours, rest = divmod(max(0, minutes), 60)
    keys = ["time_left"]
    if hours:
        keys += [f"n{min(hours, MAX_NUMBER)}", "hour" if hours == 1 else "hours"]
    if rest or not hours:
        keys += [f"n{rest}", "minute" if rest == 1 else "minutes"]
    return keys


# -- building (install time) ------------------------------------------------------------------------


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


def choose_language(requested: str, available: set[str]) -> tuple[str, str]:
    """(language to use, why it is not ``requested`` or "")."""
    wanted = requested.lower().replace("_", "-")
    for candidate in (wanted, wanted.split("-")[0]):
        if candidate in CATALOGUE and candidate in available:
            return candidate, ""
    base = wanted.split("-")[0]
    if base not in CATALOGUE:
        why = f"no prompt texts in {requested!r} (have: {', '.join(sorted(CATALOGUE))})"
    else:
        why = f"espeak-ng has no voice for {requested!r}"
    return "en", f"{why}: using English"


def _speak(espeak: str, voice: str, text: str, workdir: Path) -> tuple[NDArray[np.float64], int]:
    import soundfile  # build time only, as ``build_prompts``'s imports

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
    # build time only: scipy.signal costs a playing device ~70 MB (issue 6), and the agent
    # imports this module for ``PromptLibrary``
    import soundfile
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
    old = _read_manifest(directory)
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


def _read_manifest(directory: Path) -> dict[str, Any] | None:
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


def checkin_text(question: CheckInQuestion, language: str) -> str:
    """What is said to ask ``question``: its text, then what its ends mean."""
    anchors = CHECKIN_ANCHORS.get(language, CHECKIN_ANCHORS["en"])
    ends = anchors.format(low=question.low_label.strip(), high=question.high_label.strip())
    return f"{question.text.strip()} {ends}"


def checkin_key(question: CheckInQuestion, language: str) -> str:
    """The cache key of ``question``'s prompt: its spoken text's hash."""
    return "q-" + hashlib.sha256(checkin_text(question, language).encode()).hexdigest()[:24]


def build_checkin_prompts(
    directory: Path, calibration: Calibration, questions: Sequence[CheckInQuestion]
) -> BuildReport:
    """Speak ``questions`` into the prompt cache in ``directory`` (built already: its language,
    rate and level are kept); those spoken before are reused. When a profile is applied, never on
    the audio path. ``PromptsError`` when there is no cache or espeak-ng is missing."""
    manifest = _read_manifest(directory)
    if manifest is None:
        raise PromptsError(f"no prompts in {directory}: run 'resonera-device prompts build' first")
    language = str(manifest.get("language", "en"))
    extra = {checkin_key(q, language): checkin_text(q, language) for q in questions}
    return build_prompts(
        directory,
        calibration,
        language=language,
        sample_rate=int(manifest.get("sample_rate", 48000)),
        level_dba=float(manifest.get("level_dba", DEFAULT_LEVEL_DBA)),
        keys=sorted(extra),
        extra=extra,
    )


# -- reading (run time: never synthesises) ----------------------------------------------------------


class PromptLibrary:
    """The cached prompts of one directory (never runs espeak-ng).

    Every file is checked when the library opens (a missing or mismatched cache is a
    ``PromptsError`` then, not a silent panel later), but a clip's samples are read only when it
    is asked for (``clips``, on the control panel's thread, never the audio thread): the whole
    catalogue decoded would hold some 25 MB of a device that must play within 100 MB (issue 6),
    for prompts of which a session says a handful. The standard library's ``wave`` reads them.
    """

    def __init__(self, directory: Path, sample_rate: int) -> None:
        manifest = _read_manifest(directory)
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
