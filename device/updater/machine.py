"""The course of one agent update on the device, as a pure state machine: events in, actions out
(no I/O, no clock; ``updater.py`` runs the actions and feeds back what came of them).

Phases: ``idle`` (nothing asked, or the target is the running version) -> ``downloading`` ->
``verifying`` -> ``installing`` -> ``ready`` (prepared; waits until no session plays) ->
``switching`` (the service writes the trial, swaps ``current`` and exits 75). ``failed``: the
bundle was refused or would not install; that target (by SHA-256) is not tried again, as is one
that was rolled back (``given_up``), until the desired state names another.

- A download that fails for the network is retried with a backoff that doubles up to
  ``MAX_BACKOFF_S``, without end: a device offline for a week updates when it is back. Bytes that
  are not the target's (size or SHA-256) count as a fault of the server's copy: after
  ``MAX_CORRUPT_DOWNLOADS`` such downloads the update fails.
- A target withdrawn (``TargetSeen(None)``, a paused rollout) or replaced before the switch drops
  what was prepared for it (``Discard``); once switching, it is too late and it is ignored.
- A slot already prepared from the same bundle (a restart after a kill) skips straight to ready.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from resonera.common.agent_update import AgentUpdateTarget, UpdateState

Phase = Literal["idle", "downloading", "verifying", "installing", "ready", "switching", "failed"]

FIRST_BACKOFF_S: Final = 5.0
MAX_BACKOFF_S: Final = 600.0
MAX_CORRUPT_DOWNLOADS: Final = 3


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetSeen:
    """An applied desired state asks for ``target`` (None: for no update)."""

    target: AgentUpdateTarget | None


# The results of the actions name the bundle (``sha256``) they are about: one that arrives after
# its target was replaced is ignored.


@dataclass(frozen=True)
class Downloaded:
    sha256: str


@dataclass(frozen=True)
class DownloadFailed:
    sha256: str
    reason: str
    #: The server's bytes were not the target's (size or hash), not the network failing.
    corrupt: bool = False


@dataclass(frozen=True)
class Verified:
    sha256: str


@dataclass(frozen=True)
class Rejected:
    """The bundle is refused (``BundleRejected``) or would not install: not tried again."""

    sha256: str
    reason: str


@dataclass(frozen=True)
class Prepared:
    sha256: str
    slot: str


@dataclass(frozen=True)
class RetryDue:
    pass


@dataclass(frozen=True)
class SessionStarted:
    pass


@dataclass(frozen=True)
class SessionEnded:
    pass


@dataclass(frozen=True)
class SwitchRefused:
    """The service found a session starting at the instant of the switch."""


Event = (
    TargetSeen
    | Downloaded
    | DownloadFailed
    | Verified
    | Rejected
    | Prepared
    | RetryDue
    | SessionStarted
    | SessionEnded
    | SwitchRefused
)

# --- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetch:
    target: AgentUpdateTarget


@dataclass(frozen=True)
class Verify:
    target: AgentUpdateTarget


@dataclass(frozen=True)
class Prepare:
    target: AgentUpdateTarget


@dataclass(frozen=True)
class Switch:
    target: AgentUpdateTarget
    slot: str


@dataclass(frozen=True)
class Report:
    state: UpdateState
    target: AgentUpdateTarget
    reason: str | None = None


@dataclass(frozen=True)
class Discard:
    """Drop the download and the prepared slot of ``target``."""

    target: AgentUpdateTarget


@dataclass(frozen=True)
class RetryAfter:
    delay_s: float


Action = Fetch | Verify | Prepare | Switch | Report | Discard | RetryAfter


@dataclass
class UpdateMachine:
    """One device's update course; ``handle`` each event, run the actions it returns in order."""

    running_version: str
    given_up: set[str] = field(default_factory=set)
    phase: Phase = "idle"
    target: AgentUpdateTarget | None = None
    session_active: bool = False
    slot: str | None = None
    network_failures: int = 0
    corrupt_downloads: int = 0

    def handle(self, event: Event) -> list[Action]:
        match event:
            case TargetSeen(target):
                return self._target(target)
            case SessionStarted():
                self.session_active = True
                return []
            case SessionEnded():
                self.session_active = False
                return self._switch_if_idle()
            case SwitchRefused():
                if self.phase == "switching":
                    self.phase = "ready"
                self.session_active = True
                return []
        target = self.target
        if target is None or self.phase in ("idle", "failed", "switching"):
            return []  # what a withdrawn target's work reported late: nothing to do
        if isinstance(event, RetryDue):
            return [Fetch(target)] if self.phase == "downloading" else []
        if event.sha256 != target.sha256:
            return []  # the result of a target since replaced
        working = self.phase in ("downloading", "verifying", "installing")
        match event:
            case Downloaded() if self.phase == "downloading":
                self.phase = "verifying"
                return [Report("verifying", target), Verify(target)]
            case DownloadFailed(_, reason, corrupt) if self.phase == "downloading":
                return self._download_failed(target, reason, corrupt)
            case Verified() if self.phase == "verifying":
                self.phase = "installing"
                return [Report("installing", target), Prepare(target)]
            case Rejected(_, reason) if working:
                self.phase = "failed"
                self.given_up.add(target.sha256)
                return [Report("failed", target, reason), Discard(target)]
            case Prepared(_, slot) if working:
                self.phase, self.slot = "ready", slot
                return self._switch_if_idle()
        return []

    def _target(self, target: AgentUpdateTarget | None) -> list[Action]:
        if target == self.target or self.phase == "switching":
            return []
        actions: list[Action] = []
        if self.target is not None and self.phase != "failed":
            actions.append(Discard(self.target))
        self.target, self.slot = None, None
        self.phase = "idle"
        self.network_failures = self.corrupt_downloads = 0
        if (
            target is None
            or target.version == self.running_version
            or target.sha256 in self.given_up
        ):
            return actions
        self.target, self.phase = target, "downloading"
        return [*actions, Report("downloading", target), Fetch(target)]

    def _download_failed(
        self, target: AgentUpdateTarget, reason: str, corrupt: bool
    ) -> list[Action]:
        if corrupt:
            self.corrupt_downloads += 1
            if self.corrupt_downloads >= MAX_CORRUPT_DOWNLOADS:
                self.phase = "failed"
                self.given_up.add(target.sha256)
                why = f"downloaded {self.corrupt_downloads} times, never intact: {reason}"
                return [Report("failed", target, why), Discard(target)]
        self.network_failures += 1
        delay = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2.0 ** (self.network_failures - 1))
        return [RetryAfter(delay)]

    def _switch_if_idle(self) -> list[Action]:
        if self.phase != "ready" or self.session_active or self.target is None:
            return []
        assert self.slot is not None
        self.phase = "switching"
        return [Report("switching", self.target), Switch(self.target, self.slot)]
