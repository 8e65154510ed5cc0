"""Updating the safety MCU's firmware over the link the device already holds (protocol v1.5).

``McuUpdater`` drives the MCU's bootloader (hardware/PROTOCOL.md, "Firmware update") through the
device's ``HardwareMonitor``: between sessions only, it sends a signed image (``SignedImage``, the
file ``resonera-hwsim image build`` writes), resumes where the MCU says after a lost chunk, a reset
link or an MCU that lost power, commits, waits for the reboot and the new image's HELLO, runs the
health check and confirms. Each step goes to ``report`` as an ``McuUpdateReport`` (the agent's
update states, ``common/agent_update.py``); the run ends in an ``McuUpdateResult``:

- ``installed``: the new image runs and is confirmed;
- ``failed``: the MCU refused the image (hash, signature, format; with its reason) or never
  answered; nothing was switched and the old image runs;
- ``rolled_back``: the new image booted but did not prove healthy (never said HELLO, its ARM or
  MUTE round-trip failed), so it was rejected and the old image runs again.

The health check: the new image says HELLO with the new version; an ARM is answered with a report
of armed and unmuted (the monitor's consent), then a MUTE with TELEMETRY showing it muted. Nothing
plays meanwhile: the output carries silence, and only the MCU's answers are looked at.

It refuses (``McuUpdateRefused``, before anything is sent) while a session or a prompt holds the
MCU, while it consents, when its firmware has no bootloader (minor < 5), when it already runs the
image's version, and when the health check could not pass for a reason that is not the firmware's
(a limit crossed, headphones out on a board that requires them).

Blocking: call ``run`` from a thread of its own (a CLI command, the service's maintenance task).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from resonera.common import serial_link as sl
from resonera.common.agent_update import UpdateState
from resonera.common.errors import ResoneraError
from resonera.common.safety_link import HEARTBEAT_PERIOD_S, HelloInfo, LinkEvent
from resonera.device.hwmonitor import HardwareMonitor, HardwareNotReady

log = logging.getLogger(__name__)

#: Who holds the MCU during the health check (``HardwareMonitor.claim``).
HEALTH_CHECK_HOLDER = "mcu-update health check"


class McuUpdateError(ResoneraError):
    """The update could not be done; the message says why."""


class McuUpdateRefused(McuUpdateError):
    """Nothing was sent: the MCU cannot be updated now (in use, no bootloader, same version)."""


@dataclass(frozen=True)
class SignedImage:
    """A firmware image and its signature by the update key (hardware/PROTOCOL.md, "Image")."""

    version: str
    image: bytes
    signature: bytes

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.image).digest()

    @property
    def size(self) -> int:
        return len(self.image)

    def begin(self) -> sl.UpdateBegin:
        return sl.UpdateBegin(self.size, self.sha256, self.version, self.signature)

    @classmethod
    def parse(cls, data: bytes, where: str = "signed image") -> SignedImage:
        try:
            signature, image = sl.unpack_signed_image(data)
            version, _size = sl.unpack_image_header(image)
        except sl.LinkProtocolError as exc:
            raise McuUpdateError(f"{where}: {exc}") from None
        return cls(version, image, signature)

    @classmethod
    def load(cls, path: Path | str) -> SignedImage:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise McuUpdateError(f"cannot read {path}: {exc.strerror}") from None
        return cls.parse(data, str(path))


EndState = Literal["installed", "failed", "rolled_back"]


@dataclass(frozen=True)
class McuUpdateReport:
    """One step: ``installing`` (sending, ``detail`` the progress), ``verifying`` (the commit),
    ``switching`` (reboot, HELLO, health check), then one of the end states."""

    state: UpdateState
    from_version: str
    to_version: str
    detail: str = ""


@dataclass(frozen=True)
class McuUpdateResult:
    state: EndState
    from_version: str
    to_version: str
    reason: str
    #: Seconds from UPDATE_BEGIN to the last chunk's answer, and for the whole run.
    transfer_s: float
    total_s: float
    #: How many times the transfer went back to where the MCU said it was.
    resumes: int


#: Answers that tell how far the transfer is (to a chunk or a BEGIN), never the end of it.
_PROGRESS = frozenset({sl.UPDATE_READY, sl.UPDATE_CHUNK_OK, sl.UPDATE_REFUSED_OFFSET})


class _Failed(Exception):
    def __init__(self, state: EndState, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


class McuUpdater:
    """Updates the MCU behind ``monitor`` (started, its port open). Not reusable concurrently."""

    def __init__(
        self,
        monitor: HardwareMonitor,
        *,
        report: Callable[[McuUpdateReport], None] | None = None,
        status_timeout_s: float = 1.0,
        commit_timeout_s: float = 10.0,
        reboot_timeout_s: float = 10.0,
        health_timeout_s: float = 3.0,
        window: int = 2,
        max_resyncs: int = 50,
    ) -> None:
        if window < 1 or max_resyncs < 1:
            raise ValueError("window and max_resyncs must be at least 1")
        self.monitor = monitor
        self._report = report
        self.status_timeout_s = status_timeout_s
        self.commit_timeout_s = commit_timeout_s
        self.reboot_timeout_s = reboot_timeout_s
        self.health_timeout_s = health_timeout_s
        #: Chunks sent ahead of the MCU's answers (its UART buffer holds about four).
        self.window = window
        self.max_resyncs = max_resyncs
        self._from = ""
        self._to = ""
        self._resumes = 0
        self._commit_unanswered = False

    # -- the run ---------------------------------------------------------------------------------

    def run(self, image: SignedImage) -> McuUpdateResult:
        """Update to ``image``; ``McuUpdateRefused`` if it cannot start, else the result."""
        hello = self._check_preconditions(image)
        self._from, self._to, self._resumes = hello.firmware_version, image.version, 0
        self._commit_unanswered = False
        started = time.monotonic()
        transfer_s = 0.0
        while self.monitor.wait_update_status(0) is not None:
            pass  # answers to someone else's frames, long ago
        try:
            transfer_s = self._transfer(image)
            self._switch(image, self._commit())
        except _Failed as failed:
            return self._end(failed.state, failed.reason, transfer_s, started)
        return self._end("installed", "", transfer_s, started)

    def _check_preconditions(self, image: SignedImage) -> HelloInfo:
        monitor = self.monitor
        hello = monitor.hello
        if hello is None:
            raise McuUpdateRefused(f"the safety MCU has not said HELLO: {monitor.reason}")
        if hello.protocol_minor < sl.UPDATE_SINCE_MINOR:
            raise McuUpdateRefused(
                f"the safety MCU's firmware {hello.firmware_version} speaks protocol "
                f"v{hello.protocol_major}.{hello.protocol_minor}: it has no bootloader "
                f"(v1.{sl.UPDATE_SINCE_MINOR})"
            )
        if monitor.holder is not None:
            raise McuUpdateRefused(f"the safety MCU is in use by {monitor.holder}")
        if monitor.consent:
            raise McuUpdateRefused("the safety MCU consents to sound: mute it first")
        if hello.firmware_version == image.version:
            raise McuUpdateRefused(f"the safety MCU already runs firmware {image.version}")
        crossed = monitor.limit_crossed()
        if crossed != sl.FAULT_NONE:
            raise McuUpdateRefused(
                f"the new firmware's health check arms the MCU, which it would refuse now: "
                f"{sl.describe_fault(crossed)}"
            )
        board, telemetry = monitor.board_info, monitor.telemetry
        requires = board is not None and board.requires_headphones
        if requires and telemetry is not None and not telemetry.headphones:
            raise McuUpdateRefused(
                "the new firmware's health check arms the MCU, and this board requires "
                "headphones: plug them in first"
            )
        return hello

    # -- sending ---------------------------------------------------------------------------------

    def _transfer(self, image: SignedImage) -> float:
        started = time.monotonic()
        self._step("installing", f"0 of {image.size} bytes")
        acked = self._resync(image, first=True)
        sent = acked
        rewound_to: int | None = None
        chunk = sl.UPDATE_CHUNK_MAX
        tenth = max(1, image.size // 10)
        next_report = tenth
        while acked < image.size:
            while sent < image.size and sent - acked < self.window * chunk:
                data = image.image[sent : sent + chunk]
                self.monitor.send_update(sl.MSG_UPDATE_CHUNK, sl.pack_update_chunk(sent, data))
                sent += len(data)
            status = self.monitor.wait_update_status(self.status_timeout_s)
            if status is None or status.status == sl.UPDATE_REFUSED_NO_TRANSFER:
                # the answers stopped (a lost frame, a stalled link) or the MCU restarted
                acked = sent = self._resync(image)
                rewound_to = None
            elif status.status in _PROGRESS:
                # Within a transfer the MCU's next offset only grows, so an answer naming one
                # behind what it already acknowledged is stale (sent before a resync): ignored.
                fresh = status.next_offset >= acked
                acked = max(acked, status.next_offset)
                if rewound_to is not None and acked > rewound_to:
                    rewound_to = None
                lost = status.status == sl.UPDATE_REFUSED_OFFSET
                if lost and fresh and rewound_to != status.next_offset:
                    # a chunk was lost: the ones after it come back refused too; go back once
                    sent = rewound_to = status.next_offset
                    self._resumes += 1
                sent = max(sent, acked)
            else:
                self.monitor.send_update(sl.MSG_UPDATE_ABORT)
                raise _Failed("failed", f"the safety MCU refused a chunk: {status.describe()}")
            if acked >= next_report and acked < image.size:
                self._step("installing", f"{acked} of {image.size} bytes")
                next_report = acked + tenth
        return time.monotonic() - started

    def _resync(self, image: SignedImage, *, first: bool = False) -> int:
        """Send UPDATE_BEGIN until the MCU answers READY; return where it says to go on from."""
        for attempt in range(self.max_resyncs):
            if not first or attempt:
                self._resumes += 1
            while self.monitor.wait_update_status(0) is not None:
                pass  # answers already here came before this BEGIN: they say nothing of it
            self.monitor.send_update(sl.MSG_UPDATE_BEGIN, sl.pack_update_begin(image.begin()))
            # as long as a commit's: an MCU may check the image's signature before it answers
            deadline = time.monotonic() + self.commit_timeout_s
            while (remaining := deadline - time.monotonic()) > 0:
                status = self.monitor.wait_update_status(remaining)
                if status is None:
                    break
                if status.status == sl.UPDATE_READY:
                    return status.next_offset
                if status.status in (sl.UPDATE_CHUNK_OK, sl.UPDATE_REFUSED_OFFSET):
                    continue  # answers to chunks sent before this BEGIN
                if status.status != sl.UPDATE_REFUSED_NO_TRANSFER:
                    raise _Failed(
                        "failed", f"the safety MCU refused the image: {status.describe()}"
                    )
        raise _Failed(
            "failed",
            f"the safety MCU's bootloader did not answer UPDATE_BEGIN ({self.max_resyncs} tries)",
        )

    def _commit(self) -> _Restarts:
        """COMMIT; from then on, what tells that the MCU restarted (the reboot brings a HELLO)."""
        self._step("verifying", "size, SHA-256 and signature checked by the MCU")
        restarts = _Restarts(self.monitor)
        self.monitor.send_update(sl.MSG_UPDATE_COMMIT)
        deadline = time.monotonic() + self.commit_timeout_s
        status = None
        while status is None and not restarts.happened and time.monotonic() < deadline:
            status = self.monitor.wait_update_status(0.05)
            if status is not None and status.status in _PROGRESS:
                status = None  # a late answer to a chunk or a resync, not to the commit
        if status is None:
            # Power lost during the commit: what boots now is what the boot record says.
            log.warning("no answer to UPDATE_COMMIT: waiting for the MCU to come back")
            self._commit_unanswered = True
            return restarts
        if status.status != sl.UPDATE_COMMITTED:
            restarts.close()
            raise _Failed("failed", f"the safety MCU refused the image: {status.describe()}")
        return restarts

    # -- after the reboot -------------------------------------------------------------------------

    def _switch(self, image: SignedImage, restarts: _Restarts) -> None:
        self._step("switching", "rebooting into the new image")
        with restarts:
            hello = restarts.next_hello(self.reboot_timeout_s)
        if hello is None:
            raise _Failed(
                "failed",
                f"the safety MCU did not say HELLO within {self.reboot_timeout_s:g} s of its reboot",
            )
        if hello.firmware_version != image.version and self._commit_unanswered:
            raise _Failed(
                "failed",
                f"the safety MCU restarted before it answered the commit; it runs "
                f"{hello.firmware_version}, the new firmware was not switched to",
            )
        if hello.firmware_version != image.version:
            raise _Failed(
                "rolled_back",
                f"the new firmware {image.version} never said HELLO; "
                f"the safety MCU runs {hello.firmware_version} again",
            )
        self._step("switching", f"health check of {image.version}: ARM, then MUTE")
        problem = self._health_problem()
        if problem:
            self._roll_back(problem)
        self.monitor.send_update(sl.MSG_UPDATE_CONFIRM)
        for _ in range(3):
            status = self.monitor.wait_update_status(self.status_timeout_s)
            if status is not None and status.status == sl.UPDATE_CONFIRMED:
                return
            self.monitor.send_update(sl.MSG_UPDATE_CONFIRM)  # its answer lost: confirm again
        raise _Failed(
            "failed",
            "the safety MCU did not confirm the new image; it rolls back at its next reset",
        )

    def _health_problem(self) -> str:
        deadline = time.monotonic() + self.health_timeout_s
        # A freshly booted MCU arms only once a HEARTBEAT reached it (sent every 100 ms).
        time.sleep(2 * HEARTBEAT_PERIOD_S)
        while True:
            try:
                claim = self.monitor.claim(HEALTH_CHECK_HOLDER, self.health_timeout_s)
                break
            except HardwareNotReady as exc:
                fault = self.monitor.last_fault
                lost = fault is not None and fault[0] == sl.FAULT_HEARTBEAT_LOST
                if not lost or time.monotonic() >= deadline:
                    return f"ARM not answered with armed: {exc}"
                time.sleep(HEARTBEAT_PERIOD_S)
        try:
            # consent may rest on a STATE: the image must also report armed in its TELEMETRY
            if not self._telemetry_shows(armed=True, deadline=deadline):
                return "no TELEMETRY showing armed"
        finally:
            claim.release()
        if not self._telemetry_shows(
            armed=False, deadline=time.monotonic() + self.health_timeout_s
        ):
            return "MUTE not answered with a TELEMETRY showing muted"
        return ""

    def _telemetry_shows(self, *, armed: bool, deadline: float) -> bool:
        while time.monotonic() < deadline:
            telemetry = self.monitor.telemetry
            if telemetry is not None and telemetry.armed == armed and telemetry.muted != armed:
                return True
            time.sleep(0.01)
        return False

    def _roll_back(self, problem: str) -> None:
        with _Restarts(self.monitor) as restarts:
            self.monitor.send_update(sl.MSG_UPDATE_ABORT)  # on trial: reboot into the old one
            back = restarts.next_hello(self.reboot_timeout_s)
        now = back.firmware_version if back is not None else "an unknown firmware"
        raise _Failed(
            "rolled_back",
            f"the new firmware failed its health check ({problem}); the safety MCU runs {now} again",
        )

    # -- reporting -------------------------------------------------------------------------------

    def _step(self, state: UpdateState, detail: str = "") -> None:
        log.info("MCU update %s → %s: %s %s", self._from, self._to, state, detail)
        if self._report is not None:
            self._report(McuUpdateReport(state, self._from, self._to, detail))

    def _end(
        self, state: EndState, reason: str, transfer_s: float, started: float
    ) -> McuUpdateResult:
        self._step(state, reason)
        return McuUpdateResult(
            state,
            self._from,
            self._to,
            reason,
            transfer_s,
            time.monotonic() - started,
            self._resumes,
        )


class _Restarts:
    """Watches the monitor's link events for the MCU coming back from a reset: a HELLO nobody
    asked for (``mcu_restarted``) or one after the link went quiet (``link_up``). Only such a HELLO
    says what booted: a late answer to an old HELLO_REQUEST says nothing of it."""

    def __init__(self, monitor: HardwareMonitor) -> None:
        self.monitor = monitor
        self._back = threading.Event()
        monitor.add_event_listener(self._on_event)

    def _on_event(self, event: LinkEvent) -> None:
        if event.kind in ("mcu_restarted", "link_up"):
            self._back.set()

    @property
    def happened(self) -> bool:
        return self._back.is_set()

    def next_hello(self, timeout_s: float) -> HelloInfo | None:
        """The HELLO of the MCU once it is back (None if it is not within ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        if not self._back.wait(timeout_s):
            return None
        while time.monotonic() < deadline:  # the event is told once the HELLO is in place
            hello = self.monitor.hello
            if hello is not None:
                return hello
            time.sleep(0.01)
        return None

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.monitor.remove_event_listener(self._on_event)

    def __enter__(self) -> _Restarts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def update_mcu(
    monitor: HardwareMonitor,
    path: Path | str,
    report: Callable[[McuUpdateReport], None] | None = None,
) -> McuUpdateResult:
    """What ``resonera-device mcu-update IMAGE`` runs: load the signed image file, update the MCU
    behind ``monitor``. ``McuUpdateError`` (bad file) and ``McuUpdateRefused`` (not now)."""
    return McuUpdater(monitor, report=report).run(SignedImage.load(path))
