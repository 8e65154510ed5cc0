"""What the device says: the prompt texts and the keys of the clips that say them.

The texts are data, not code: ``prompt_texts.toml`` in this package (its header says how they were
worded), read once when this module is imported. ``texts`` adds the numbers 0…59 a language's
"time left" is composed of; ``checkin_text`` and ``checkin_key`` say a clinician's check-in question
with its anchors and name its clip. Building the clips is ``prompts.py``'s, reading them
``prompt_library.py``'s.
"""

from __future__ import annotations

import hashlib
import tomllib
from importlib.resources import files
from typing import Any, Final

from resonera.common.errors import ResoneraError
from resonera.common.profile import CheckInQuestion

__all__ = [
    "CATALOGUE",
    "CHECKIN_ANCHORS",
    "MAX_NUMBER",
    "PromptsError",
    "checkin_key",
    "checkin_text",
    "choose_language",
    "program_name_key",
    "texts",
    "time_left_keys",
]

#: The packaged data file with every text, in this package.
TEXTS_FILE: Final = "prompt_texts.toml"
#: The language every other one falls back to, and whose keys every other one must have.
FALLBACK_LANGUAGE: Final = "en"
#: Numbers are spoken from their own clips, so "time left" needs no synthesis at run time.
MAX_NUMBER: Final = 59


class PromptsError(ResoneraError):
    """The prompts cannot be built or read (espeak-ng missing, a broken cache)."""


def _str_table(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise PromptsError(f"{TEXTS_FILE}: [{where}] must be a table of texts")
    return dict(value)


def load_texts(document: str) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """(texts per language, check-in anchors per language) from the TOML ``document``, checked:
    every language has the fallback language's keys and its anchors, which name both ends."""
    try:
        data = tomllib.loads(document)
    except tomllib.TOMLDecodeError as exc:
        raise PromptsError(f"{TEXTS_FILE} cannot be read: {exc}") from None
    languages = data.get("catalogue")
    if not isinstance(languages, dict) or FALLBACK_LANGUAGE not in languages:
        raise PromptsError(f"{TEXTS_FILE} has no [catalogue.{FALLBACK_LANGUAGE}]")
    catalogue = {lang: _str_table(table, f"catalogue.{lang}") for lang, table in languages.items()}
    anchors = _str_table(data.get("checkin_anchors"), "checkin_anchors")
    keys = set(catalogue[FALLBACK_LANGUAGE])
    for language, table in catalogue.items():
        if set(table) != keys:
            differ = sorted(keys.symmetric_difference(table))
            raise PromptsError(f"{TEXTS_FILE}: [catalogue.{language}] differs in {differ}")
        anchor = anchors.get(language, "")
        if "{low}" not in anchor or "{high}" not in anchor:
            raise PromptsError(
                f"{TEXTS_FILE}: no check-in anchors with {{low}} and {{high}} in {language}"
            )
    return catalogue, anchors


#: The texts, per language (a key names a prompt and its clip), and how a check-in question's ends
#: are said after it, per catalogue language.
CATALOGUE, CHECKIN_ANCHORS = load_texts(
    files("resonera.device").joinpath(TEXTS_FILE).read_text(encoding="utf-8")
)


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


def choose_language(requested: str, available: set[str]) -> tuple[str, str]:
    """(language to use, why it is not ``requested`` or ""), given the languages espeak-ng has."""
    wanted = requested.lower().replace("_", "-")
    for candidate in (wanted, wanted.split("-")[0]):
        if candidate in CATALOGUE and candidate in available:
            return candidate, ""
    base = wanted.split("-")[0]
    if base not in CATALOGUE:
        why = f"no prompt texts in {requested!r} (have: {', '.join(sorted(CATALOGUE))})"
    else:
        why = f"espeak-ng has no voice for {requested!r}"
    return FALLBACK_LANGUAGE, f"{why}: using English"


def checkin_text(question: CheckInQuestion, language: str) -> str:
    """What is said to ask ``question``: its text, then what its ends mean."""
    anchors = CHECKIN_ANCHORS.get(language, CHECKIN_ANCHORS[FALLBACK_LANGUAGE])
    ends = anchors.format(low=question.low_label.strip(), high=question.high_label.strip())
    return f"{question.text.strip()} {ends}"


def checkin_key(question: CheckInQuestion, language: str) -> str:
    """The cache key of ``question``'s prompt: its spoken text's hash."""
    return "q-" + hashlib.sha256(checkin_text(question, language).encode()).hexdigest()[:24]


def program_name_key(name: str) -> str:
    """The cache key of a prescribed program's spoken name (issue 20): the name's hash (the name is
    said as the clinician's library writes it, in the cache's voice)."""
    return "program-" + hashlib.sha256(name.strip().encode()).hexdigest()[:24]
