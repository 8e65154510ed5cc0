"""Agent updates on the server (issue 25, docs/updates.md "The server's side"): the bundle store,
rollouts and which devices they target, the pause rule, and what the dashboard counts.

- **Bundles** are kept by content, ``<data_dir>/updates/<sha256>``, like background files
  (``backgrounds.py``, whose store and streamed writer this reuses): an upload is written to a
  temporary file as it arrives, bounded by ``MAX_BUNDLE_BYTES``, checked as far as it can be away
  from a device (``common.agent_update.read_bundle``: the manifest first, signed by one of the
  server's ``update_public_keys``, every member a regular file listed with its size and SHA-256,
  none missing or extra), then renamed to its SHA-256.
- **A rollout** asks the devices it targets to run one bundle's version: the devices of a named
  cohort (``device.cohort``), or a share of the fleet by a stable bucket per device
  (``bucket``: SHA-256 of the id modulo 100, below the percentage), so a wider rollout of the same
  version keeps every device already in. A targeted device is asked (``agent_update`` in its
  desired document) while it runs an older version that the bundle may update, and has not
  failed this version; a device that failed or rolled back is left on the version it runs.
- **One rollout at a time**: a new rollout of the version the current one (active or paused)
  rolls out supersedes it (that one is cancelled: this is how a rollout is widened); a rollout of
  another version is refused while one is active or paused (cancel it first), so no device is
  ever asked for two versions by turns.
- **Pause**: when the devices that reported ``failed`` or ``rolled_back`` for the rollout (since it
  was last resumed) are at least ``min_failures`` and more than ``failure_threshold`` of the
  devices it targets, ingest pauses it (an audit row; the reason kept on the rollout), and the
  devices not yet switched lose their target. It is **completed** when every device it targets
  runs its version.
- **Documents**: ``DesiredService.reconcile`` re-issues the desired document of every device
  whose document carries another target than it should (``stale_devices``;
  ``device_update.target_*`` records what it carries): when a rollout starts, pauses, resumes or
  ends, a device's cohort or running version changes, or a device reports a failure.

Queries take a ``Session``; ingest wraps its transaction's connection in one.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from packaging.version import InvalidVersion, Version
from sqlmodel import Session, col, select

from resonera.common.agent_update import (
    ENDED_STATES,
    MAX_BUNDLE_BYTES,
    AgentUpdateTarget,
    BundleRejected,
    UpdateReport,
    read_bundle,
    update_key_from_b64,
)
from resonera.common.ids import new_id
from resonera.server.backgrounds import BackgroundInvalid, BackgroundStore, BackgroundWriter
from resonera.server.models import (
    AGENT_VERSION_MAX,
    UPDATE_REASON_MAX,
    AgentBundleRow,
    AuditRow,
    DeviceRow,
    DeviceUpdateRow,
    RolloutRow,
    UpdateReportRow,
    UserRow,
)
from resonera.server.settings import ServerSettings

log = logging.getLogger(__name__)

RolloutState = Literal["active", "paused", "completed", "cancelled"]
ROLLOUT_STATES: Final = ("active", "paused", "completed", "cancelled")
#: A rollout in one of these is the fleet's current one (at most one at a time).
CURRENT_STATES: Final = ("active", "paused")
#: Reports that end an update without the new version running.
FAILED_STATES: Final = frozenset({"failed", "rolled_back"})
#: Reports of an update under way (the device's step).
UNDER_WAY_STATES: Final = ("downloading", "verifying", "installing", "switching")
DEFAULT_FAILURE_THRESHOLD: Final = 0.2
DEFAULT_MIN_FAILURES: Final = 2
#: The actor of what the server does by itself (an automatic pause), in the audit log.
SERVER_ACTOR: Final = "server:ingest"


class UpdateRefused(ValueError):
    """A request about bundles or rollouts that cannot be done; ``status`` is the HTTP status
    (413 too large, 422 invalid, 409 conflicting with what exists, 404 unknown)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


# -- the bundle store --------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckedBundle:
    """What an upload holds, checked: its manifest (with the id of the key that signed it) and
    the tar's identity."""

    sha256: str
    size: int
    version: str
    min_previous_version: str | None
    manifest: dict[str, Any]


def update_keys(settings: ServerSettings) -> list[Ed25519PublicKey]:
    """The update keys the server checks uploads against (``update_public_keys``)."""
    return [update_key_from_b64(text) for text in settings.update_public_keys]


class BundleStore(BackgroundStore):
    """``<data_dir>/updates/<sha256>``: the background store's folder rules, for bundles."""

    def __init__(self, directory: Path, keys: Sequence[Ed25519PublicKey] = ()) -> None:
        super().__init__(directory, MAX_BUNDLE_BYTES)
        self.keys = list(keys)

    @classmethod
    def for_settings(cls, settings: ServerSettings) -> BundleStore:
        return cls(settings.data_dir / "updates", update_keys(settings))

    def writer(self) -> BundleWriter:
        return BundleWriter(self)


class BundleWriter(BackgroundWriter):
    """One upload: ``write`` chunks as they come, then ``finish`` checks and keeps it."""

    store: BundleStore

    def __init__(self, store: BundleStore) -> None:
        super().__init__(store)

    def __enter__(self) -> BundleWriter:
        return self

    def write(self, chunk: bytes) -> None:
        try:
            super().write(chunk)
        except BackgroundInvalid:
            raise UpdateRefused(
                f"the bundle is larger than the {self.store.max_bytes} bytes a bundle may have",
                413,
            ) from None

    def finish(self) -> CheckedBundle:  # type: ignore[override]
        """Check the bundle (``read_bundle``) and keep it under its SHA-256."""
        if self.size == 0:
            raise UpdateRefused("the bundle is empty")
        if not self.store.keys:
            raise UpdateRefused(
                "this server has no update_public_keys configured: it cannot check a bundle's "
                "signature (set update_public_keys to the update key's public half)"
            )
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()
        try:
            verified = read_bundle(self._partial, self.store.keys)
        except BundleRejected as exc:
            raise UpdateRefused(str(exc)) from None
        sha256 = self._hash.hexdigest()
        os.replace(self._partial, self.store.path_for(sha256))
        manifest = verified.manifest
        return CheckedBundle(
            sha256=sha256,
            size=self.size,
            version=manifest.version,
            min_previous_version=manifest.min_previous_version,
            manifest={**manifest.to_json(), "key_id": verified.key_id},
        )


def add_bundle(
    session: Session, checked: CheckedBundle, user: UserRow, now: datetime
) -> AgentBundleRow:
    """The bundle's row; ``UpdateRefused`` (409) when its version or its bytes are there already."""
    if session.get(AgentBundleRow, checked.version) is not None:
        raise UpdateRefused(
            f"a bundle of version {checked.version} was uploaded already (a version is uploaded "
            "once: build the change as a new version)",
            409,
        )
    same = bundle_of(session, checked.sha256)
    if same is not None:
        raise UpdateRefused(f"this bundle was uploaded already as version {same.version}", 409)
    assert user.id is not None
    row = AgentBundleRow(
        version=checked.version,
        sha256=checked.sha256,
        size=checked.size,
        manifest=checked.manifest,
        min_previous_version=checked.min_previous_version,
        uploaded_by=user.id,
        uploaded_by_email=user.email,
        uploaded_at=now,
    )
    session.add(row)
    return row


def bundle_of(session: Session, sha256: str) -> AgentBundleRow | None:
    return session.exec(select(AgentBundleRow).where(AgentBundleRow.sha256 == sha256)).first()


def list_bundles(session: Session) -> list[AgentBundleRow]:
    return list(
        session.exec(select(AgentBundleRow).order_by(col(AgentBundleRow.uploaded_at).desc()))
    )


# -- which devices a rollout targets ----------------------------------------------------------


def bucket(device_id: str) -> int:
    """The device's stable place in 0..99: a rollout to p % takes the devices below p, so raising
    p keeps every device already in."""
    return int.from_bytes(hashlib.sha256(device_id.encode()).digest(), "big") % 100


@dataclass(frozen=True)
class DeviceFacts:
    """What the rollout rules read of one device."""

    device_id: str
    cohort: str | None = None
    revoked: bool = False
    agent_version: str | None = None
    report_rollout: str | None = None
    report_version: str | None = None
    state: str | None = None
    reason: str | None = None
    report_at: datetime | None = None
    target_rollout: str | None = None
    target_version: str | None = None


Standing = Literal["out", "installed", "failed", "pending"]


def _parsed(text: str | None) -> Version | None:
    try:
        return Version(text) if text else None
    except InvalidVersion:
        return None


def matches(rollout: RolloutRow, facts: DeviceFacts) -> bool:
    """Whether the rollout is for this device at all (its cohort, or its bucket)."""
    if rollout.cohort is not None:
        return facts.cohort == rollout.cohort
    return rollout.percentage is not None and bucket(facts.device_id) < rollout.percentage


def standing(rollout: RolloutRow, bundle: AgentBundleRow, facts: DeviceFacts) -> Standing:
    """Where the device stands in the rollout: not targeted (``out``: another cohort or bucket,
    revoked, or running a version the bundle cannot update), running its version or a later one
    (``installed``), failed or rolled back this version (``failed``), or still to update."""
    if facts.revoked or not matches(rollout, facts):
        return "out"
    running = _parsed(facts.agent_version)
    if facts.agent_version is not None and running is None:
        return "out"  # a version no rule can compare: never asked
    if running is not None and running >= Version(bundle.version):
        return "installed"
    minimum = _parsed(bundle.min_previous_version)
    if running is not None and minimum is not None and running < minimum:
        return "out"
    if facts.state in FAILED_STATES and facts.report_version == bundle.version:
        return "failed"
    return "pending"


def wanted_target(
    rollout: RolloutRow | None, bundle: AgentBundleRow | None, facts: DeviceFacts
) -> AgentUpdateTarget | None:
    """The target the device's desired document should carry now (None: none)."""
    if rollout is None or bundle is None or rollout.state != "active":
        return None
    if standing(rollout, bundle, facts) != "pending":
        return None
    return AgentUpdateTarget(bundle.version, bundle.sha256, bundle.size, rollout.id)


@dataclass
class RolloutCounts:
    targeted: int = 0
    installed: int = 0
    failed: int = 0
    pending: int = 0
    #: Devices that failed or rolled back in this rollout since it was last resumed.
    recent_failures: int = 0
    #: The latest of those: (device, reason).
    latest_failure: tuple[str, str] | None = None


def count(
    rollout: RolloutRow, bundle: AgentBundleRow, facts: Iterable[DeviceFacts]
) -> RolloutCounts:
    counts = RolloutCounts()
    latest: datetime | None = None
    for item in facts:
        place = standing(rollout, bundle, item)
        if place == "out":
            continue
        counts.targeted += 1
        setattr(counts, place, getattr(counts, place) + 1)
        since = rollout.resumed_at
        if (
            place == "failed"
            and item.report_rollout == rollout.id
            and (since is None or (item.report_at is not None and item.report_at > since))
        ):
            counts.recent_failures += 1
            if item.report_at is not None and (latest is None or item.report_at > latest):
                latest = item.report_at
                counts.latest_failure = (item.device_id, item.reason or item.state or "")
    return counts


def device_facts(session: Session, device_ids: Iterable[str] | None = None) -> list[DeviceFacts]:
    """The facts of every device (or of ``device_ids``), in id order."""
    query = (
        select(DeviceRow, DeviceUpdateRow)
        .join(DeviceUpdateRow, col(DeviceUpdateRow.device_id) == col(DeviceRow.id), isouter=True)
        .order_by(col(DeviceRow.id))
    )
    if device_ids is not None:
        query = query.where(col(DeviceRow.id).in_(sorted(set(device_ids))))
    out: list[DeviceFacts] = []
    for device, update in session.exec(query):
        extra: dict[str, Any] = {}
        if update is not None:
            extra = {
                name: getattr(update, name)
                for name in (
                    "agent_version",
                    "report_rollout",
                    "report_version",
                    "state",
                    "reason",
                    "report_at",
                    "target_rollout",
                    "target_version",
                )
            }
        out.append(DeviceFacts(device.id, device.cohort, device.revoked, **extra))
    return out


def current_rollout(session: Session) -> tuple[RolloutRow, AgentBundleRow] | None:
    """The fleet's active or paused rollout and its bundle (None: none)."""
    rollout = session.exec(
        select(RolloutRow).where(col(RolloutRow.state).in_(CURRENT_STATES))
    ).first()
    if rollout is None:
        return None
    bundle = session.get(AgentBundleRow, rollout.version)
    assert bundle is not None  # a foreign key
    return rollout, bundle


def target_for(session: Session, device_id: str) -> AgentUpdateTarget | None:
    """The ``agent_update`` the device's next desired document carries (``desired.py``)."""
    current = current_rollout(session)
    if current is None:
        return None
    facts = device_facts(session, [device_id])
    return wanted_target(*current, facts[0]) if facts else None


def note_target(
    session: Session, device_id: str, target: AgentUpdateTarget | None, now: datetime
) -> None:
    """Record what the device's newly issued document carries."""
    row = _update_row(session, device_id, now)
    row.target_rollout = target.rollout if target is not None else None
    row.target_version = target.version if target is not None else None
    session.add(row)


def _update_row(session: Session, device_id: str, now: datetime) -> DeviceUpdateRow:
    row = session.get(DeviceUpdateRow, device_id, with_for_update=True)
    if row is None:
        row = DeviceUpdateRow(device_id=device_id, updated_at=now)
    row.updated_at = now
    return row


def stale_devices(session: Session, device_ids: Iterable[str] | None = None) -> list[str]:
    """Of the devices (all, or ``device_ids``), those whose document carries another target than
    the current rollout asks of them (``DesiredService.reconcile`` re-issues theirs); revoked
    devices are left alone (their topic carries their revoked notice)."""
    current = current_rollout(session)
    rollout, bundle = current if current is not None else (None, None)
    stale: list[str] = []
    for facts in device_facts(session, device_ids):
        if facts.revoked:
            continue
        target = wanted_target(rollout, bundle, facts)
        carried = (facts.target_rollout, facts.target_version)
        if carried != ((target.rollout, target.version) if target is not None else (None, None)):
            stale.append(facts.device_id)
    return stale


# -- rollouts -----------------------------------------------------------------------------


def create_rollout(
    session: Session,
    user: UserRow,
    *,
    version: str,
    cohort: str | None,
    percentage: int | None,
    failure_threshold: float,
    min_failures: int,
    now: datetime,
) -> tuple[RolloutRow, RolloutRow | None]:
    """A new active rollout, and the one it supersedes (cancelled; None: none). ``UpdateRefused``
    for an unknown version (404), a target that is not one cohort or one percentage (422), or
    another version's rollout under way (409)."""
    if (cohort is None) == (percentage is None):
        raise UpdateRefused("give either a cohort or a percentage, not both and not neither")
    if percentage is not None and not 1 <= percentage <= 100:
        raise UpdateRefused(f"percentage must be 1..100, not {percentage}")
    if not 0 < failure_threshold <= 1:
        raise UpdateRefused(f"failure_threshold must be a share in (0, 1], not {failure_threshold}")
    if min_failures < 1:
        raise UpdateRefused(f"min_failures must be at least 1, not {min_failures}")
    if session.get(AgentBundleRow, version) is None:
        raise UpdateRefused(f"no bundle of version {version} was uploaded", 404)
    current = current_rollout(session)
    superseded: RolloutRow | None = None
    if current is not None:
        rollout, _bundle = current
        if rollout.version != version:
            raise UpdateRefused(
                f"rollout {rollout.id} of version {rollout.version} is {rollout.state}: cancel it "
                "before rolling out another version",
                409,
            )
        rollout.state = "cancelled"
        rollout.paused_reason = None
        rollout.updated_at = now
        session.add(rollout)
        superseded = rollout
    assert user.id is not None
    row = RolloutRow(
        id=new_id(),
        version=version,
        cohort=cohort,
        percentage=percentage,
        failure_threshold=failure_threshold,
        min_failures=min_failures,
        state="active",
        created_by=user.id,
        created_by_email=user.email,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return row, superseded


#: What an admin may do to a rollout in each state, and the state it leads to.
_MOVES: Final[dict[str, dict[str, RolloutState]]] = {
    "pause": {"active": "paused"},
    "resume": {"paused": "active"},
    "cancel": {"active": "cancelled", "paused": "cancelled"},
}


def move_rollout(session: Session, rollout_id: str, action: str, now: datetime) -> RolloutRow:
    """Pause, resume or cancel a rollout (``UpdateRefused``: 404 unknown, 409 not from its state)."""
    rollout = session.get(RolloutRow, rollout_id, with_for_update=True)
    if rollout is None:
        raise UpdateRefused(f"no rollout {rollout_id}", 404)
    moves = _MOVES[action]
    if rollout.state not in moves:
        raise UpdateRefused(f"rollout {rollout_id} is {rollout.state}: it cannot {action}", 409)
    rollout.state = moves[rollout.state]
    if action == "pause":
        rollout.paused_reason = "paused by an admin"
    elif action == "resume":
        rollout.paused_reason = None
        rollout.resumed_at = now  # the failures so far stop counting toward a pause
    rollout.updated_at = now
    session.add(rollout)
    session.flush()
    return rollout


def evaluate(session: Session, rollout: RolloutRow, now: datetime) -> str | None:
    """Pause or complete the active ``rollout`` by its rules; the new state, or None."""
    if rollout.state != "active":
        return None
    bundle = session.get(AgentBundleRow, rollout.version)
    assert bundle is not None
    counts = count(rollout, bundle, device_facts(session))
    failures = counts.recent_failures
    if failures >= rollout.min_failures and failures > rollout.failure_threshold * counts.targeted:
        who = ""
        if counts.latest_failure is not None:
            who = f"; latest: {counts.latest_failure[0]}: {counts.latest_failure[1]}"
        rollout.state = "paused"
        rollout.paused_reason = (
            f"{failures} of {counts.targeted} targeted devices failed or rolled back "
            f"(more than {rollout.failure_threshold * 100:g} %, at least {rollout.min_failures}){who}"
        )[:UPDATE_REASON_MAX]
        log.warning("rollout %s paused: %s", rollout.id, rollout.paused_reason)
        session.add(
            AuditRow(
                at=now,
                actor_email=SERVER_ACTOR,
                actor_role="system",
                action="pause",
                resource="rollout",
                resource_id=rollout.id,
            )
        )
    elif counts.targeted and counts.installed == counts.targeted:
        rollout.state = "completed"
    else:
        return None
    rollout.updated_at = now
    session.add(rollout)
    session.flush()
    return rollout.state


def list_rollouts(session: Session) -> list[RolloutRow]:
    return list(session.exec(select(RolloutRow).order_by(col(RolloutRow.created_at).desc())))


def rollout_counts(session: Session, rollouts: Sequence[RolloutRow]) -> dict[str, RolloutCounts]:
    """Each rollout's counts as of now (the facts read once)."""
    facts = device_facts(session)
    bundles = {b.version: b for b in list_bundles(session)}
    return {r.id: count(r, bundles[r.version], facts) for r in rollouts}


# -- what devices say -------------------------------------------------------------------------


@dataclass(frozen=True)
class Reported:
    """An update report as ingest stored it."""

    device_id: str
    seq: int
    report: UpdateReport


@dataclass
class IngestedUpdates:
    """The update facts of one ingest batch: the versions devices run (by seq) and the new reports."""

    versions: dict[str, tuple[int, str]] = field(default_factory=dict)
    reports: list[Reported] = field(default_factory=list)

    def saw_version(self, device_id: str, seq: int, version: object) -> None:
        if not isinstance(version, str) or not 0 < len(version) <= AGENT_VERSION_MAX:
            return
        known = self.versions.get(device_id)
        if known is None or seq > known[0]:
            self.versions[device_id] = (seq, version)

    def saw_report(self, device_id: str, seq: int, report: UpdateReport) -> None:
        if report.component != "agent":
            return  # the MCU's firmware: stored in update_report, no step of the agent's rollout
        self.reports.append(Reported(device_id, seq, report))
        # what runs on the device: the new version once installed, else the one it came from
        running = report.to_version if report.state == "installed" else report.from_version
        self.saw_version(device_id, seq, running)


def record(session: Session, batch: IngestedUpdates, now: datetime) -> tuple[set[str], set[str]]:
    """Store the batch's versions and reports in ``device_update`` (the highest seq wins); the
    devices whose running version or latest report changed, and the rollouts reported on. A row is
    written only when something changes: most telemetry repeats the version it said before, and
    ingest must not pay a write for it."""
    changed: set[str] = set()
    rollouts: set[str] = set()
    latest: dict[str, Reported] = {}
    for one in batch.reports:
        if one.device_id not in latest or one.seq > latest[one.device_id].seq:
            latest[one.device_id] = one
        rollouts.add(one.report.rollout)
    devices = sorted(set(batch.versions) | set(latest))
    rows = {
        row.device_id: row
        for row in session.exec(
            select(DeviceUpdateRow)
            .where(col(DeviceUpdateRow.device_id).in_(devices))
            .with_for_update()
        )
    }
    for device_id in devices:
        row = rows.get(device_id) or DeviceUpdateRow(device_id=device_id, updated_at=now)
        seen = batch.versions.get(device_id)
        moved = (
            seen is not None and seen[0] > row.agent_version_seq and row.agent_version != seen[1]
        )
        item = latest.get(device_id)
        reported = item is not None and item.seq > row.report_seq
        if not moved and not reported:
            continue
        if moved and seen is not None:
            row.agent_version, row.agent_version_seq = seen[1], seen[0]
            changed.add(device_id)
        if reported and item is not None:
            report = item.report
            row.report_rollout = report.rollout[:36]
            row.report_version = report.to_version
            row.state = report.state
            row.reason = (report.reason or "")[:UPDATE_REASON_MAX] or None
            row.report_seq = item.seq
            row.report_at = now
            if report.state in ENDED_STATES:
                changed.add(device_id)
        row.updated_at = now
        session.add(row)
    session.flush()
    return changed, rollouts


@dataclass(frozen=True)
class Recheck:
    """Whose documents a batch may have made stale: every device's (a rollout moved) or these."""

    devices: frozenset[str] = frozenset()
    everyone: bool = False

    @property
    def needed(self) -> bool:
        return self.everyone or bool(self.devices)

    @property
    def device_ids(self) -> frozenset[str] | None:
        """For ``DesiredService.reconcile``: None for every device."""
        return None if self.everyone else self.devices


def _versions_move(session: Session, batch: IngestedUpdates) -> bool:
    """Whether a device of the batch says it runs another version than the one stored (read
    without locks: most batches change nothing)."""
    stored = dict(
        session.exec(
            select(DeviceUpdateRow.device_id, DeviceUpdateRow.agent_version).where(
                col(DeviceUpdateRow.device_id).in_(sorted(batch.versions))
            )
        ).all()
    )
    return any(stored.get(device) != version for device, (_seq, version) in batch.versions.items())


def after_ingest(session: Session, batch: IngestedUpdates, now: datetime) -> Recheck:
    """What a stored batch means for updates: ``device_update`` moves, the rollout reported on is
    evaluated (paused, completed); whose documents to re-issue where they carry the wrong target
    (``DesiredService.reconcile``, published after the commit)."""
    if not batch.reports and not (batch.versions and _versions_move(session, batch)):
        return Recheck()
    # The current rollout's row is locked before the devices' rows, in the order the API locks
    # them (a rollout moved, then its documents), so the two never wait for each other.
    current = current_rollout(session)
    rollout = (
        session.get(RolloutRow, current[0].id, with_for_update=True)
        if current is not None
        else None
    )
    changed, reported_on = record(session, batch, now)
    everyone = False
    if rollout is not None and (rollout.id in reported_on or changed):
        everyone = evaluate(session, rollout, now) is not None
    return Recheck(frozenset(changed), everyone)


# -- cohorts ---------------------------------------------------------------------------------


def set_cohort(session: Session, device_id: str, cohort: str | None) -> DeviceRow:
    device = session.get(DeviceRow, device_id)
    if device is None:
        raise UpdateRefused(f"no device {device_id}", 404)
    device.cohort = cohort
    session.add(device)
    session.flush()
    return device


# -- per version, for the dashboard -----------------------------------------------------------


@dataclass(frozen=True)
class DeviceStep:
    device_id: str
    state: str
    reason: str
    at: datetime | None


@dataclass
class VersionLine:
    """One agent version: the devices running it, updating to it (with their step), failed."""

    version: str
    running: list[str] = field(default_factory=list)
    updating: list[DeviceStep] = field(default_factory=list)
    failed: list[DeviceStep] = field(default_factory=list)
    bundle: AgentBundleRow | None = None


def _sort_key(version: str) -> tuple[int, Version | str]:
    parsed = _parsed(version)
    return (0, parsed) if parsed is not None else (1, version)


def version_lines(session: Session) -> list[VersionLine]:
    """Per version (newest first; "unknown" for devices that never said), of devices not revoked."""
    lines: dict[str, VersionLine] = {}
    for bundle in list_bundles(session):
        lines[bundle.version] = VersionLine(bundle.version, bundle=bundle)
    for facts in device_facts(session):
        if facts.revoked:
            continue
        running = facts.agent_version or "unknown"
        lines.setdefault(running, VersionLine(running)).running.append(facts.device_id)
        if facts.report_version is None or facts.state is None:
            continue
        step = DeviceStep(facts.device_id, facts.state, facts.reason or "", facts.report_at)
        line = lines.setdefault(facts.report_version, VersionLine(facts.report_version))
        if facts.state in FAILED_STATES:
            line.failed.append(step)
        elif facts.state in UNDER_WAY_STATES:
            line.updating.append(step)
    known = sorted((v for v in lines if v != "unknown"), key=_sort_key, reverse=True)
    return [lines[v] for v in known] + ([lines["unknown"]] if "unknown" in lines else [])


@dataclass
class FirmwareLine:
    """One safety-MCU firmware version: the devices running it (their telemetry's), and those whose
    latest firmware update (``component`` "mcu" reports) to it failed or rolled back."""

    version: str
    running: list[str] = field(default_factory=list)
    failed: list[DeviceStep] = field(default_factory=list)


def firmware_lines(session: Session, firmware: Mapping[str, str | None]) -> list[FirmwareLine]:
    """Per MCU firmware version (newest first; "unknown" last) of the devices in ``firmware``
    (device -> the firmware its latest telemetry says, None: not said); [] when none says one."""
    lines: dict[str, FirmwareLine] = {}
    for device_id, version in firmware.items():
        running = version or "unknown"
        lines.setdefault(running, FirmwareLine(running)).running.append(device_id)
    latest: dict[str, UpdateReportRow] = {}
    for row in session.exec(
        select(UpdateReportRow)
        .where(UpdateReportRow.component == "mcu")
        .order_by(col(UpdateReportRow.seq))
    ):
        latest[row.device_id] = row
    for device_id, row in sorted(latest.items()):
        if device_id in firmware and row.state in FAILED_STATES:
            step = DeviceStep(device_id, row.state, row.reason or "", row.received_at)
            lines.setdefault(row.to_version, FirmwareLine(row.to_version)).failed.append(step)
    known = sorted((v for v in lines if v != "unknown"), key=_sort_key, reverse=True)
    if not known:
        return []  # no MCU's firmware said anywhere (simulated devices): no table
    return [lines[v] for v in known] + ([lines["unknown"]] if "unknown" in lines else [])
