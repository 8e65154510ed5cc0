"""Prescriptions (issue 20): the library programs a clinician gives a patient, resolved into the
entries the signed desired state carries (``common.prescription.PrescribedProgram``: the version's
full definition, its library id, version and SHA-256, its background files), and what became of
each on the patient's devices.

A program is refused, with its name and the reason, when its id or version is unknown, a
background file it names is not in the server's store, ``check_prescribed`` (the device's own
check) fails under the profile the patient's device will enforce, or a device of the patient
reported an engine that lacks what it needs; devices that reported nothing yet are not waited for
(they check too, and report a refusal). Duplicates are ``order_is_unique``'s to refuse.

The state of each prescribed program (``program_states``) comes from the devices' reports:
``pending`` until a device serving the patient reports the desired-state version that carries it,
then ``applied`` or ``refused`` (its reason; a document refused whole refuses each program), and
whether the library has a newer version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session, col, select

from resonera.common.desired import DesiredStateRejected
from resonera.common.prescription import (
    EngineCapabilities,
    PrescribedProgram,
    PrescriptionRefused,
    background_hashes,
    check_prescribed,
    order_is_unique,
    prescribe,
)
from resonera.common.profile import HearingProfile
from resonera.engine.capabilities import engine_capabilities
from resonera.server.backgrounds import BackgroundStore
from resonera.server.desired import DesiredService, enforced_profile
from resonera.server.models import (
    DeviceDesiredRow,
    DeviceStateRow,
    ProgramLibraryRow,
    ProgramReportRow,
)
from resonera.server.program_documents import program_of_version
from resonera.server.programs import get_program, get_version
from resonera.server.schemas import (
    DeviceProgramState,
    PrescribedProgramPublic,
    ProgramRef,
    ProgramState,
)


class PrescriptionInvalid(Exception):
    """This prescription cannot be given: ``program`` names the program (its id when nothing
    more is known), ``reason`` says why."""

    def __init__(self, program: str, reason: str, *, library_id: str | None = None) -> None:
        super().__init__(f"{program}: {reason}")
        self.program = program
        self.reason = reason
        self.library_id = library_id


def _label(entry: PrescribedProgram) -> str:
    """How ``check_prescribed`` names a program: its messages start with it."""
    return f"{entry.name!r} (library {entry.library_id} v{entry.version})"


def _refused(entry: PrescribedProgram, exc: PrescriptionRefused, where: str = "") -> Exception:
    label = _label(entry)
    reason = str(exc).removeprefix(f"{label}: ")
    return PrescriptionInvalid(label, where + reason, library_id=entry.library_id)


def device_capabilities(
    session: Session, device_ids: Sequence[str]
) -> dict[str, EngineCapabilities]:
    """What each device's engine can play, as it last reported (devices that did not: absent)."""
    if not device_ids:
        return {}
    rows = session.exec(
        select(DeviceStateRow).where(col(DeviceStateRow.device_id).in_(sorted(device_ids)))
    ).all()
    out: dict[str, EngineCapabilities] = {}
    for row in rows:
        if row.capabilities is None:
            continue
        try:
            out[row.device_id] = EngineCapabilities.model_validate(row.capabilities)
        except ValidationError:  # stored by ingest from a checked report; kept out if not
            continue
    return out


def _entry(session: Session, ref: ProgramRef, store: BackgroundStore) -> PrescribedProgram:
    head = get_program(session, ref.library_id)
    if head is None:
        raise PrescriptionInvalid(
            ref.library_id, "no library program has this id", library_id=ref.library_id
        )
    number = ref.version if ref.version is not None else head.version
    row = get_version(session, head.id, number)
    label = f"{head.name!r} (library {head.id})"
    if row is None:
        raise PrescriptionInvalid(
            label,
            f"the library has no version {number} of it (versions 1 to {head.version})",
            library_id=head.id,
        )
    program = program_of_version(row)
    label = f"{row.name!r} (library {head.id} v{number})"
    files = []
    try:
        for digest in background_hashes(program):
            held = store.file(digest)
            if held is None:
                raise PrescriptionInvalid(
                    label,
                    f"its background file sha256:{digest} is not in the server's store "
                    "(upload it with POST /backgrounds)",
                    library_id=head.id,
                )
            files.append(held)
        return prescribe(head.id, number, program, files)
    except PrescriptionRefused as exc:
        raise PrescriptionInvalid(label, str(exc), library_id=head.id) from None


def resolve_prescription(
    session: Session,
    refs: Sequence[ProgramRef],
    *,
    profile: HearingProfile,
    capabilities: dict[str, EngineCapabilities],
    store: BackgroundStore,
) -> list[PrescribedProgram]:
    """The entries of ``refs`` in their order, each checked as the patient's devices will check
    it (``profile``: the one they will enforce; ``capabilities``: of the devices that reported
    them); ``PrescriptionInvalid`` for the first that cannot be given."""
    entries = [_entry(session, ref, store) for ref in refs]
    problem = order_is_unique(entries)
    if problem is not None:
        ids = [e.library_id for e in entries]
        twice = next((i for i in ids if ids.count(i) > 1), None)
        raise PrescriptionInvalid("programs", problem, library_id=twice)
    check_entries(entries, profile=profile, capabilities=capabilities)
    return entries


class ProfileUnenforceable(Exception):
    """The patient's device would refuse the profile itself, so no program can be checked."""


def prescribe_for_patient(
    session: Session,
    refs: Sequence[ProgramRef],
    *,
    config: dict[str, Any],
    patient_id: str,
    desired: DesiredService,
    store: BackgroundStore,
    now: datetime,
) -> list[PrescribedProgram]:
    """What the API's PUT and the dashboard's editor both save: the entries of ``refs``, checked
    under the profile ``config`` makes the patient's devices enforce and against what those
    devices reported they can play. ``ProfileUnenforceable``; ``PrescriptionInvalid``."""
    if not refs:
        return []
    try:
        profile = enforced_profile(config)
    except DesiredStateRejected as exc:
        raise ProfileUnenforceable(str(exc)) from None
    return resolve_prescription(
        session,
        refs,
        profile=profile,
        capabilities=device_capabilities(session, desired.devices_of(session, patient_id, now)),
        store=store,
    )


def check_entries(
    entries: Sequence[PrescribedProgram],
    *,
    profile: HearingProfile,
    capabilities: dict[str, EngineCapabilities],
) -> None:
    """``check_prescribed`` for each entry under ``profile``: with this engine's capabilities
    (the definition, the profile, the layer types it knows) and each reporting device's."""
    server_engine = engine_capabilities()
    for entry in entries:
        try:
            check_prescribed(entry, profile, server_engine)
        except PrescriptionRefused as exc:
            raise _refused(entry, exc) from None
        for device_id, reported in sorted(capabilities.items()):
            try:
                check_prescribed(entry, profile, reported)
            except PrescriptionRefused as exc:
                raise _refused(entry, exc, f"device {device_id}: ") from None


def stored_entries(programs: Sequence[Any]) -> list[PrescribedProgram | None]:
    """A stored config's programs as entries (None: one stored before prescriptions by id)."""
    out: list[PrescribedProgram | None] = []
    for item in programs:
        try:
            out.append(PrescribedProgram.model_validate(item))
        except ValidationError:
            out.append(None)
    return out


@dataclass(frozen=True)
class _DeviceReport:
    desired_version: int
    #: The whole document's refusal for that version, if the device refused it.
    refused_whole: str | None
    programs: dict[str, ProgramReportRow]


def _device_reports(
    session: Session, patient_id: str, config_version: int, now: datetime
) -> dict[str, _DeviceReport | None]:
    """Per device the patient uses now: its reports on the document that carries this config
    version (None: the device has not been sent it yet)."""
    device_ids = DesiredService.devices_of(session, patient_id, now)
    out: dict[str, _DeviceReport | None] = {}
    for device_id in device_ids:
        desired = session.get(DeviceDesiredRow, device_id)
        if desired is None or desired.patient_version != config_version:
            out[device_id] = None
            continue
        state = session.get(DeviceStateRow, device_id)
        refused_whole = None
        if (
            state is not None
            and state.report_version == desired.version
            and state.report_status == "refused"
        ):
            refused_whole = state.report_reason or "the device refused the desired state"
        rows = session.exec(
            select(ProgramReportRow).where(
                ProgramReportRow.device_id == device_id,
                ProgramReportRow.desired_version == desired.version,
            )
        ).all()
        out[device_id] = _DeviceReport(
            desired.version, refused_whole, {row.library_id: row for row in rows}
        )
    return out


def _on_device(
    device_id: str, report: _DeviceReport | None, entry: PrescribedProgram
) -> DeviceProgramState:
    if report is None:
        return DeviceProgramState(device_id=device_id, desired_version=0, state="pending")
    row = report.programs.get(entry.library_id)
    if row is not None and row.program_version == entry.version and row.sha256 == entry.sha256:
        state: ProgramState = "applied" if row.status == "applied" else "refused"
        return DeviceProgramState(
            device_id=device_id,
            desired_version=report.desired_version,
            state=state,
            reason=row.reason if state == "refused" else "",
        )
    if report.refused_whole is not None:
        return DeviceProgramState(
            device_id=device_id,
            desired_version=report.desired_version,
            state="refused",
            reason=report.refused_whole,
        )
    return DeviceProgramState(
        device_id=device_id, desired_version=report.desired_version, state="pending"
    )


def program_states(
    session: Session,
    patient_id: str,
    config_version: int,
    programs: Sequence[Any],
    now: datetime,
) -> list[PrescribedProgramPublic]:
    """Each prescribed program of the patient's config ``config_version`` with its state."""
    entries = stored_entries(programs)
    ids = sorted({e.library_id for e in entries if e is not None})
    latest = (
        dict(
            session.exec(
                select(ProgramLibraryRow.id, ProgramLibraryRow.version).where(
                    col(ProgramLibraryRow.id).in_(ids)
                )
            ).all()
        )
        if ids
        else {}
    )
    reports = _device_reports(session, patient_id, config_version, now) if entries else {}
    out = []
    for raw, entry in zip(programs, entries, strict=True):
        if entry is None:
            name = raw.get("name") if isinstance(raw, dict) else None
            out.append(
                PrescribedProgramPublic(
                    library_id=None,
                    version=None,
                    name=str(name or "(unnamed)")[:120],
                    sha256=None,
                    latest_version=None,
                    newer_version=False,
                    state="refused",
                    reason="stored before programs were prescribed by library id: no device "
                    "plays it; prescribe it again from the library",
                )
            )
            continue
        devices = [_on_device(d, r, entry) for d, r in sorted(reports.items())]
        refused = [d for d in devices if d.state == "refused"]
        state: ProgramState
        if refused:
            state, reason = "refused", f"device {refused[0].device_id}: {refused[0].reason}"
        elif devices and all(d.state == "applied" for d in devices):
            state, reason = "applied", ""
        else:
            state, reason = "pending", ""
        newest = latest.get(entry.library_id)
        out.append(
            PrescribedProgramPublic(
                library_id=entry.library_id,
                version=entry.version,
                name=entry.name,
                sha256=entry.sha256,
                backgrounds=list(entry.backgrounds),
                latest_version=newest,
                newer_version=newest is not None and newest > entry.version,
                state=state,
                reason=reason,
                devices=devices,
            )
        )
    return out
