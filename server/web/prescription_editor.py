"""The patient page's prescription editor (issue 20): the programs a clinician prescribes, in
order, with each one's state on the patient's devices, and a draft edited without JavaScript.

The draft travels in the page itself (hidden fields, and the address after each step: POST then
redirect to a GET that carries it), so nothing is stored until the clinician saves, and a save is
the whole list at once or nothing. The draft keeps the config version it started from: the save's
If-Match, so a clinician who edits while someone else saves is told so instead of overwriting.
Saving resolves and checks the list with ``server.prescriptions`` (the API's own service) under the
profile and limits the patient's device will enforce; the web adds no rule of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, Literal
from urllib.parse import urlencode

from fastapi import Request
from pydantic import ValidationError
from sqlmodel import Session

from resonera.common.errors import ProgramError, VersionConflict
from resonera.common.prescription import MAX_PRESCRIBED_PROGRAMS, PrescribedProgram
from resonera.common.program_check import check_program_for
from resonera.server import programs
from resonera.server.api.deps import AppState
from resonera.server.desired import Outgoing, config_document
from resonera.server.models import PatientConfigRow, UserRow
from resonera.server.prescriptions import (
    PrescriptionInvalid,
    ProfileUnenforceable,
    prescribe_for_patient,
    program_states,
)
from resonera.server.program_documents import program_of_version
from resonera.server.program_previews import PreviewRefused, patient_profile
from resonera.server.schemas import DesiredIn, PrescribedProgramPublic

#: A draft may hold one more than can be prescribed, so that the save says why it is too many.
MAX_DRAFT_PROGRAMS: Final = MAX_PRESCRIBED_PROGRAMS + 1
#: The most library matches listed at once (the library is searched, not paged).
MAX_MATCHES: Final = 50
_ID_CHARS: Final = frozenset("0123456789abcdef-")

RowState = Literal["pending", "applied", "refused", "unsaved"]


class DraftInvalid(ValueError):
    """A draft or an action that did not come from the page (a hand-made address or form)."""


# -- the draft -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DraftProgram:
    library_id: str
    version: int

    @property
    def field(self) -> str:
        """Its value in the form and the address: ``<library id>:<version>``."""
        return f"{self.library_id}:{self.version}"


@dataclass(frozen=True)
class Draft:
    """The prescription being edited: ``version`` is the patient's config version it started
    from (the save's If-Match); ``edited`` says it differs from what is saved (or may)."""

    version: int
    programs: tuple[DraftProgram, ...]
    sessions_per_week: str
    edited: bool

    def address(self, patient_id: str, q: str | None) -> str:
        """The patient page showing this draft (and the library search ``q``, if one is open)."""
        pairs = [("draft", "1"), ("version", str(self.version))]
        pairs += [("program", p.field) for p in self.programs]
        pairs.append(("sessions_per_week", self.sessions_per_week))
        if q is not None:
            pairs.append(("q", q))
        return f"/patients/{patient_id}?{urlencode(pairs)}#prescription"


def _library_id(text: str) -> str:
    if not 1 <= len(text) <= 36 or not set(text) <= _ID_CHARS:
        raise DraftInvalid(f"{text[:40]!r} is not a library program id")
    return text


def parse_program(text: str) -> DraftProgram:
    library_id, sep, version = text.partition(":")
    if not sep or not version.isdigit() or len(version) > 9 or int(version) < 1:
        raise DraftInvalid(f"{text[:60]!r} does not name a program as <library id>:<version>")
    return DraftProgram(_library_id(library_id), int(version))


def parse_draft(
    version: int, fields: Sequence[str], sessions_per_week: str, *, edited: bool
) -> Draft:
    if len(fields) > MAX_DRAFT_PROGRAMS:
        raise DraftInvalid(f"at most {MAX_PRESCRIBED_PROGRAMS} programs may be prescribed")
    return Draft(
        version, tuple(parse_program(f) for f in fields), sessions_per_week.strip(), edited=edited
    )


def saved_draft(config: PatientConfigRow | None) -> Draft:
    """The saved prescription as a draft not yet edited (entries stored before prescriptions by
    library id cannot be kept: they are left out, and shown as refused until the next save)."""
    document = config_document(config)
    kept = []
    for item in document["programs"]:
        try:
            entry = PrescribedProgram.model_validate(item)
        except ValidationError:
            continue
        kept.append(DraftProgram(entry.library_id, entry.version))
    return Draft(
        config.version if config is not None else 0,
        tuple(kept),
        str(document["sessions_per_week"]),
        edited=False,
    )


def _swap(items: tuple[DraftProgram, ...], a: int, b: int) -> tuple[DraftProgram, ...]:
    out = list(items)
    out[a], out[b] = out[b], out[a]
    return tuple(out)


def apply_action(session: Session, draft: Draft, action: str) -> Draft:
    """The draft after one of the editor's buttons: ``up:<n>``, ``down:<n>``, ``remove:<n>``,
    ``newer:<n>`` (the library's latest version of program n) or ``add:<library id>``
    (its latest version, at the end)."""
    verb, _, argument = action.partition(":")
    items = draft.programs
    if verb == "add":
        head = programs.get_program(session, _library_id(argument))
        if head is None:
            raise DraftInvalid("no library program has this id")
        if len(items) >= MAX_DRAFT_PROGRAMS:
            raise DraftInvalid(f"at most {MAX_PRESCRIBED_PROGRAMS} programs may be prescribed")
        return replace(draft, programs=(*items, DraftProgram(head.id, head.version)), edited=True)
    if verb not in ("up", "down", "remove", "newer") or not argument.isdigit():
        raise DraftInvalid(f"{action[:60]!r} is not something the prescription editor does")
    index = int(argument)
    if index >= len(items):
        raise DraftInvalid(f"the prescription has no program {index + 1}")
    if verb == "up":
        items = _swap(items, index, index - 1) if index > 0 else items
    elif verb == "down":
        items = _swap(items, index, index + 1) if index + 1 < len(items) else items
    elif verb == "remove":
        items = items[:index] + items[index + 1 :]
    else:
        head = programs.get_program(session, items[index].library_id)
        if head is None:
            raise DraftInvalid("the library no longer has this program")
        items = (*items[:index], DraftProgram(head.id, head.version), *items[index + 1 :])
    return replace(draft, programs=items, edited=True)


# -- what the page shows -------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """Why a save did not happen: ``library_id`` names the program it is about (None: the
    prescription as a whole)."""

    message: str
    library_id: str | None = None


@dataclass(frozen=True)
class EditorRow:
    index: int
    #: Its hidden field's value; None for an entry stored before prescriptions by library id.
    field: str | None
    library_id: str | None
    version: int | None
    name: str
    description: str
    duration_s: float | None
    #: The library's latest version (None: the library has no such program).
    latest_version: int | None
    state: RowState
    reason: str
    #: Why the last save refused this program.
    refusal: str

    @property
    def newer(self) -> bool:
        return (
            self.version is not None
            and self.latest_version is not None
            and self.latest_version > self.version
        )


@dataclass(frozen=True)
class LibraryMatch:
    id: str
    name: str
    description: str
    tags: tuple[str, ...]
    duration_s: float
    version: int
    content_hash: str
    #: Why this patient's device could not play it under their limits ("" when it can).
    cannot_play: str
    prescribed: bool


@dataclass(frozen=True)
class EditorView:
    draft: Draft
    rows: tuple[EditorRow, ...]
    #: The config version saved now (the draft may have started from an older one).
    saved_version: int
    refusal: Refusal | None
    #: The library search (None: not opened).
    q: str | None
    matches: tuple[LibraryMatch, ...]
    more_matches: bool

    @property
    def full(self) -> bool:
        return len(self.draft.programs) >= MAX_PRESCRIBED_PROGRAMS


def _row(
    session: Session,
    index: int,
    item: DraftProgram,
    saved: dict[tuple[str, int], PrescribedProgramPublic],
    refusal: Refusal | None,
) -> EditorRow:
    head = programs.get_program(session, item.library_id)
    stored = programs.get_version(session, item.library_id, item.version) if head else None
    program = program_of_version(stored) if stored is not None else None
    state = saved.get((item.library_id, item.version))
    return EditorRow(
        index=index,
        field=item.field,
        library_id=item.library_id,
        version=item.version,
        name=program.name if program is not None else (head.name if head else item.library_id),
        description=program.description if program is not None else "",
        duration_s=program.duration_s if program is not None else None,
        latest_version=head.version if head is not None else None,
        state=state.state if state is not None else "unsaved",
        reason=state.reason if state is not None else "",
        refusal=refusal.message
        if refusal is not None and refusal.library_id == item.library_id
        else "",
    )


def _legacy_rows(states: Sequence[PrescribedProgramPublic], start: int) -> list[EditorRow]:
    return [
        EditorRow(
            index=start + n,
            field=None,
            library_id=None,
            version=None,
            name=s.name,
            description="",
            duration_s=None,
            latest_version=None,
            state=s.state,
            reason=s.reason,
            refusal="",
        )
        for n, s in enumerate(x for x in states if x.library_id is None)
    ]


def _matches(
    session: Session, patient_id: str, q: str, prescribed: set[str]
) -> tuple[list[LibraryMatch], bool]:
    """Library programs whose name, description or tags hold ``q`` (``programs.search_programs``,
    as the API's ``GET /programs?q=``), each with whether this patient's device could play it under
    their limits."""
    try:
        profile = patient_profile(session, patient_id)
        unplayable = ""
    except PreviewRefused as exc:
        profile, unplayable = None, str(exc)
    found: list[LibraryMatch] = []
    for row, program in programs.search_programs(session, q=q):
        if len(found) == MAX_MATCHES:
            return found, True
        cannot_play = unplayable
        if profile is not None:
            try:
                check_program_for(program, profile, profile.output)
            except ProgramError as exc:
                cannot_play = str(exc)
        found.append(
            LibraryMatch(
                id=row.id,
                name=row.name,
                description=program.description,
                tags=tuple(row.tags),
                duration_s=program.duration_s,
                version=row.version,
                content_hash=row.content_hash,
                cannot_play=cannot_play,
                prescribed=row.id in prescribed,
            )
        )
    return found, False


def editor_view(
    session: Session,
    patient_id: str,
    config: PatientConfigRow | None,
    *,
    draft: Draft | None,
    q: str | None,
    refusal: Refusal | None,
    now: datetime,
) -> EditorView:
    """The editor for the saved prescription (``draft`` None) or a draft of it; each program with
    its state on the patient's devices when it is saved as it stands."""
    document = config_document(config)
    saved_version = config.version if config is not None else 0
    states = program_states(session, patient_id, saved_version, document["programs"], now)
    by_entry = {
        (s.library_id, s.version): s
        for s in states
        if s.library_id is not None and s.version is not None
    }
    shown = draft if draft is not None else saved_draft(config)
    rows = [_row(session, n, item, by_entry, refusal) for n, item in enumerate(shown.programs)]
    if draft is None:
        rows += _legacy_rows(states, len(rows))
    matches, more = (
        _matches(session, patient_id, q, {p.library_id for p in shown.programs})
        if q is not None
        else ([], False)
    )
    return EditorView(
        draft=shown,
        rows=tuple(rows),
        saved_version=saved_version,
        refusal=refusal,
        q=q,
        matches=tuple(matches),
        more_matches=more,
    )


# -- saving --------------------------------------------------------------------------------------


class SaveRefused(Exception):
    """The draft cannot be saved: ``refusal`` says why, ``status`` is the page's (400 for a
    field, 422 for a program that cannot be prescribed)."""

    def __init__(self, refusal: Refusal, status: int) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal
        self.status = status


def _body(config: dict[str, Any], draft: Draft) -> DesiredIn:
    try:
        return DesiredIn.model_validate(
            {
                "profile": config["profile"],
                "limits": config["limits"],
                "programs": [
                    {"library_id": p.library_id, "version": p.version} for p in draft.programs
                ],
                "sessions_per_week": draft.sessions_per_week,
            }
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        where = "sessions per week" if err["loc"][0] == "sessions_per_week" else "programs"
        raise SaveRefused(Refusal(f"{where}: {err['msg']}"), 400) from None


def save_draft(
    state: AppState,
    session: Session,
    request: Request,
    user: UserRow,
    *,
    patient_id: str,
    draft: Draft,
    now: datetime,
) -> tuple[PatientConfigRow, list[Outgoing]]:
    """The draft as the patient's next config version, the profile and limits kept, resolved and
    checked as the API's PUT does (``resolve_prescription`` under the profile the device will
    enforce, against what the patient's devices reported); added and audited, for the caller to
    commit and publish. ``SaveRefused``; ``VersionConflict`` when the draft is stale."""
    assert user.id is not None
    row = state.desired.current(session, patient_id)
    saved_version = row.version if row is not None else 0
    if saved_version != draft.version:  # before any check: those ran against another version
        raise VersionConflict(saved_version, "the desired state")
    body = _body(config_document(row), draft)
    values: dict[str, Any] = {
        "profile": body.profile,
        "limits": body.limits.model_dump(),
        "sessions_per_week": body.sessions_per_week,
    }
    try:
        entries = prescribe_for_patient(
            session,
            body.programs,
            config=values,
            patient_id=patient_id,
            desired=state.desired,
            store=state.backgrounds,
            now=now,
        )
    except ProfileUnenforceable as exc:
        message = f"the patient's device would refuse their profile: {exc}"
        raise SaveRefused(Refusal(message), 422) from None
    except PrescriptionInvalid as exc:
        raise SaveRefused(Refusal(str(exc), exc.library_id), 422) from None
    values["programs"] = [entry.model_dump(mode="json") for entry in entries]
    added, outgoing = state.desired.set_audited(
        session,
        request,
        user,
        patient_id=patient_id,
        expected_version=draft.version,
        values=values,
        now=now,
    )
    return added, outgoing
