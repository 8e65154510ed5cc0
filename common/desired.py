"""The desired state as the device takes it: verified, never older, applied safely
(``device/desired_state.py`` applies it). Shared: the server computes the profile a patient's device
would enforce with the same ``effective_profile`` (``server/programs.py``, previews).

A document arrives retained on ``resonera/v1/dev/{d}/desired``, signed by the server's Ed25519 key that
the device pinned at provisioning. It is refused, and the refusal reported, when the JSON is malformed,
the signature is missing, by another key or wrong, the document names another device, or its version is
not newer than the applied one (no replay, no rollback). Pure logic: the caller feeds payloads and the
applied version, and stores what this returns.

The same topic carries the server's notices (``{"v": 1, "kind": "notice", "device", "notice":
"revoked" | "quarantined", "reason", "issued_at", "sig"}``, ``docs/shut-out.md``): the server will not
take this device's messages. ``verify_notice`` checks them with the very signature and device checks
of a document (``_verified``), and refuses a notice not issued after the last one the device holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from resonera.common.errors import ConfigError, ProtocolError
from resonera.common.ids import is_time_ordered_id
from resonera.common.profile import HearingProfile, parse_profile
from resonera.common.signing import SignatureError, verify_document_ed25519

MAX_DOCUMENT_BYTES = 512 * 1024
#: ``HearingProfile.max_level_dba`` cannot go lower: a lower limit is refused, not raised to this.
MIN_ENFORCEABLE_LEVEL_DBA = 60.0


class DesiredStateRejected(ProtocolError):
    """The document is not applied; the message says why (and is reported to the server)."""


@dataclass(frozen=True)
class DesiredDocument:
    version: int
    content: dict[str, Any]
    raw: bytes

    @property
    def profile(self) -> dict[str, Any]:
        value = self.content.get("profile", {})
        return value if isinstance(value, dict) else {}

    @property
    def limits(self) -> dict[str, Any]:
        value = self.content.get("limits", {})
        return value if isinstance(value, dict) else {}

    @property
    def programs(self) -> list[Any]:
        value = self.content.get("programs", [])
        return value if isinstance(value, list) else []


#: The desired state's list of clinician requests to reset a corrupted dose ledger.
LEDGER_RESETS_KEY = "dose_ledger_reset"


@dataclass(frozen=True)
class LedgerResetRequest:
    """One request, by its server id: carried out once whatever how many documents repeat it."""

    reset_id: str
    reason: str
    requested_by: str


def ledger_resets(content: dict[str, Any]) -> list[LedgerResetRequest]:
    """The reset requests of a verified document's content (``DesiredStateRejected`` when the list
    is malformed, so the refusal is reported rather than a request silently dropped)."""
    items = content.get(LEDGER_RESETS_KEY, [])
    if not isinstance(items, list):
        raise DesiredStateRejected(f"{LEDGER_RESETS_KEY} must be a list")
    out = []
    for index, item in enumerate(items):
        where = f"{LEDGER_RESETS_KEY}[{index}]"
        if not isinstance(item, dict):
            raise DesiredStateRejected(f"{where} must be an object")
        reset_id, reason = item.get("id"), item.get("reason")
        requested_by = item.get("requested_by", "")
        if not isinstance(reset_id, str) or not is_time_ordered_id(reset_id):
            raise DesiredStateRejected(f"{where}.id must be a UUIDv7")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 500:
            raise DesiredStateRejected(f"{where}.reason must be 1-500 characters")
        if not isinstance(requested_by, str) or len(requested_by) > 254:
            raise DesiredStateRejected(f"{where}.requested_by must be a string of ≤ 254")
        out.append(LedgerResetRequest(reset_id, reason.strip(), requested_by))
    return out


#: The ``kind`` of a notice; a desired-state document has none.
NOTICE_KIND: Final = "notice"
NoticeName = Literal["revoked", "quarantined"]
#: A notice's reason longer than this is refused (it is read to the person and shown in ``status``).
MAX_NOTICE_REASON = 500


class NoticeRejected(DesiredStateRejected):
    """A notice that is not taken; the message says why (logged, never reported)."""


@dataclass(frozen=True)
class Notice:
    """A verified notice: the server will not take this device's messages (``notice``), why in
    words for the person (``reason``), and when the server issued it."""

    notice: NoticeName
    reason: str
    issued_at: datetime


def is_notice(payload: bytes) -> bool:
    """True when ``payload`` claims to be a notice (unverified: only to route it)."""
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(document, dict) and document.get("kind") == NOTICE_KIND


def _verified(
    payload: bytes, *, device_id: str, pinned: Ed25519PublicKey, what: str
) -> dict[str, Any]:
    """The signed content of a document or notice (``what``) for ``device_id``: the one check of
    size, JSON, the pinned key's signature and the device both share."""
    if len(payload) > MAX_DOCUMENT_BYTES:
        raise DesiredStateRejected(f"{what} of {len(payload)} bytes exceeds the limit")
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise DesiredStateRejected(f"{what} is not valid JSON") from None
    if not isinstance(document, dict):
        raise DesiredStateRejected(f"{what} is not a JSON object")
    try:
        content = verify_document_ed25519(document, pinned)
    except SignatureError as exc:
        raise DesiredStateRejected(f"{what} refused: {exc}") from None
    if content.get("device") != device_id:
        raise DesiredStateRejected(
            f"{what} is for device {content.get('device')!r}, not {device_id!r}"
        )
    return content


def verify_notice(
    payload: bytes, *, device_id: str, pinned: Ed25519PublicKey, held: datetime | None
) -> Notice:
    """The verified notice, or ``NoticeRejected`` naming the reason. ``held``: when the latest
    notice the device took (or its being let back in) was issued; a notice not issued after it
    is a replay or stale, and refused."""
    try:
        content = _verified(payload, device_id=device_id, pinned=pinned, what="notice")
    except NoticeRejected:
        raise
    except DesiredStateRejected as exc:
        raise NoticeRejected(str(exc)) from None
    if content.get("kind") != NOTICE_KIND:
        raise NoticeRejected("the signed document is not a notice")
    name, reason = content.get("notice"), content.get("reason")
    if name == "revoked" or name == "quarantined":  # noqa: PLR1714 (so mypy narrows the type)
        notice: NoticeName = name
    else:
        raise NoticeRejected(f"notice {name!r} is not one this device knows")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_NOTICE_REASON:
        raise NoticeRejected(f"a notice's reason must be 1-{MAX_NOTICE_REASON} characters")
    try:
        issued_at = datetime.fromisoformat(str(content.get("issued_at")))
    except ValueError:
        raise NoticeRejected("the notice has no valid issued_at") from None
    if issued_at.tzinfo is None:
        raise NoticeRejected("the notice's issued_at has no time zone")
    if held is not None and issued_at <= held:
        raise NoticeRejected(
            f"notice issued at {issued_at.isoformat()} is not newer than {held.isoformat()} "
            "(replay refused)"
        )
    return Notice(notice, reason.strip(), issued_at)


def verify_desired(
    payload: bytes, *, device_id: str, pinned: Ed25519PublicKey, applied_version: int
) -> DesiredDocument:
    """The verified document, or ``DesiredStateRejected`` naming the reason."""
    content = _verified(payload, device_id=device_id, pinned=pinned, what="desired state")
    if content.get("kind") is not None:
        raise DesiredStateRejected(f"a {content.get('kind')!r} is not a desired state")
    version = content.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DesiredStateRejected("desired state has no valid version")
    if version <= applied_version:
        raise DesiredStateRejected(
            f"desired state version {version} is not newer than the applied version "
            f"{applied_version} (replay or rollback refused)"
        )
    return DesiredDocument(version=version, content=content, raw=payload)


def effective_profile(document: DesiredDocument, base: HearingProfile) -> HearingProfile:
    """The profile the device enforces under ``document``: its ``profile`` over ``base`` (the
    provisioned one), then narrowed by its ``limits`` (a limit can only lower a value). A profile
    the device cannot enforce is ``DesiredStateRejected``, so the refusal is reported."""
    merged = {**base.model_dump(), **document.profile}
    limits = document.limits
    try:
        level = limits.get("max_level_dba")
        if level is not None:
            level = float(level)
            if level < MIN_ENFORCEABLE_LEVEL_DBA:
                raise DesiredStateRejected(
                    f"limits.max_level_dba {level:g} dBA is below the lowest level this device "
                    f"can enforce ({MIN_ENFORCEABLE_LEVEL_DBA:g} dBA)"
                )
            merged["max_level_dba"] = min(float(merged["max_level_dba"]), level)
            merged["fallback_level_dba"] = min(
                float(merged["fallback_level_dba"]), merged["max_level_dba"]
            )
        minutes = limits.get("max_session_minutes")
        if minutes is not None:
            merged["max_session_s"] = min(float(merged["max_session_s"]), float(minutes) * 60.0)
        return parse_profile(merged, source="desired state profile")
    except (ConfigError, TypeError, ValueError) as exc:
        raise DesiredStateRejected(str(exc)) from None


def lowers_only(old: HearingProfile, new: HearingProfile) -> bool:
    """True when ``new`` permits nothing ``old`` did not (levels, session length, frequency ranges,
    dose mode): such a change may take effect at once, even during a session."""
    return (
        new.max_level_dba <= old.max_level_dba
        and new.fallback_level_dba <= old.fallback_level_dba
        and new.max_session_s <= old.max_session_s
        and new.dose_mode >= old.dose_mode
        and (new.on_dose_reached in (old.on_dose_reached, "stop"))
        and (new.refuse_over_allowance or not old.refuse_over_allowance)
        and (old.builtin_when_unassigned or not new.builtin_when_unassigned)
        and new.output == old.output
        and new.binaural_on_speaker == old.binaural_on_speaker
        and all(
            getattr(new, name).within((getattr(old, name).low, getattr(old, name).high))
            for name in ("carrier_hz", "beat_hz", "tone_hz")
        )
    )
