"""The prompt texts as packaged data (``device/prompt_texts.toml``): they are exactly the texts the
catalogue held in code before they moved out of it, so every device's prompt cache stays valid (a
build hashes each text into its digest: a changed byte would speak the prompt again), and a broken
file is refused with what is wrong."""

from __future__ import annotations

import hashlib
import json
from importlib.resources import files

import pytest

from resonera.common.profile import CheckInQuestion
from resonera.device.prompt_catalogue import (
    CATALOGUE,
    CHECKIN_ANCHORS,
    TEXTS_FILE,
    PromptsError,
    checkin_text,
    load_texts,
    texts,
)
from resonera.device.refusals import REASONS

#: sha256 of ``json.dumps(texts(language), sort_keys=True, ensure_ascii=False)`` and of the anchors,
#: taken from the catalogue in ``device/prompts.py`` before the texts moved to the data file.
TEXTS_BEFORE_THE_MOVE = {
    "en": "852d344098df7744d324855dbb1269c79b4d3828dab22316cd547323ac01a6bc",
    "de": "41aad433423c5d092242654eccba620ae3d67fc99328d6075e45bef449e5d35b",
}
ANCHORS_BEFORE_THE_MOVE = "623ec86b4c9a93e7adddb4ba58da3e11d43983eb798a707486fccaaddf6302a2"


def digest(value: object) -> str:
    return hashlib.sha256(
        json.dumps(value, sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()


#: Keys added since (issue 21: why a session cannot start, the status): new texts, new clips.
ADDED_SINCE = {reason.prompt for reason in REASONS.values()} - {"no_program"} | {
    "status_ready",
    "sessions_waiting",
}


def test_the_packaged_texts_are_those_the_code_held() -> None:
    held = {
        language: digest({k: v for k, v in texts(language).items() if k not in ADDED_SINCE})
        for language in CATALOGUE
    }
    assert held == TEXTS_BEFORE_THE_MOVE
    assert digest(CHECKIN_ANCHORS) == ANCHORS_BEFORE_THE_MOVE
    # spot checks that say what a mismatch would be about
    assert CATALOGUE["en"]["dose_80"] == (
        "You have used 80 percent of your weekly sound allowance. "
        "Listening at a lower volume lets you listen safely for longer."
    )
    assert CATALOGUE["de"]["max_volume"] == "Maximale Lautstärke."
    question = CheckInQuestion(id="q1", text=" How loud? ", low_label="quiet", high_label="loud")
    assert checkin_text(question, "de") == "How loud? 0 bedeutet quiet. 10 bedeutet loud."


def test_the_texts_file_ships_in_the_package() -> None:
    packaged = files("resonera.device").joinpath(TEXTS_FILE)
    assert load_texts(packaged.read_text(encoding="utf-8")) == (CATALOGUE, CHECKIN_ANCHORS)


ANCHORS = '[checkin_anchors]\nen = "0 means {low}. 10 means {high}."\n'


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ("catalogue = [", "cannot be read"),
        (ANCHORS, r"has no \[catalogue.en\]"),
        (ANCHORS + "[catalogue.en]\nhello = 1\n", r"\[catalogue.en\] must be a table of texts"),
        (
            ANCHORS + '[catalogue.en]\nhi = "Hi."\n[catalogue.de]\nhallo = "Hallo."\n',
            r"\[catalogue.de\] differs in \['hallo', 'hi'\]",
        ),
        (
            '[checkin_anchors]\nen = "0 means {low}."\n[catalogue.en]\nhi = "Hi."\n',
            "no check-in anchors with {low} and {high} in en",
        ),
    ],
)
def test_a_broken_texts_file_is_refused_saying_what_is_wrong(document: str, complaint: str) -> None:
    with pytest.raises(PromptsError, match=complaint):
        load_texts(document)
