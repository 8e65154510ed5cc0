"""Revoking a device from the server (the dashboard, the API): the registry marks it and its
certificates revoked; with the issuing CA on this server, its certificates go on the CRL and the
broker is told to reload it."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlmodel import Session, col, select

from resonera.common.identity import IdentityError
from resonera.server.enrollment import open_issuing_ca
from resonera.server.models import DeviceCertificateRow, DeviceRow
from resonera.server.settings import EnrollmentSettings

log = logging.getLogger(__name__)


#: What the person is told to do when the server cannot revoke the certificate itself.
MANUAL_REVOCATION: Final = (
    "revoke its certificate on the CA with `resonera-provision device revoke --ca DIR --cert FILE` "
    "and reload the broker"
)


#: How a revocation ended, for the dashboard (which shows fixed texts, never request input).
REVOCATION_OUTCOMES: Final = {
    "blocked": "the broker was reloaded and refuses it from now on.",
    "reload_failed": (
        "its certificates are on the CRL, but the broker reload command failed (the audit log "
        "and the server log say more): reload the broker by hand."
    ),
    "reload_needed": (
        "its certificates are on the CRL: reload the broker so it reads it "
        "(no broker_reload_command is set)."
    ),
    "manual": f"this server could not revoke all its certificates: {MANUAL_REVOCATION}.",
}


@dataclass(frozen=True)
class DeviceRevocation:
    """What revoking a device did beyond marking it revoked (the caller audits and commits)."""

    device_id: str
    #: A key of ``REVOCATION_OUTCOMES``.
    outcome: str
    #: Serial numbers (hex) put on the issuing CA's CRL now.
    listed: list[str]
    #: None: no reload command configured (or nothing to reload); else whether it succeeded.
    broker_reloaded: bool | None
    #: What went wrong or is left to a person; None when the broker now refuses the device.
    problem: str | None

    def summary(self) -> str:
        done = f"Device {self.device_id} is revoked: its messages are quarantined from now on"
        if self.listed:
            done += f"; {len(self.listed)} certificate(s) added to the CRL"
        if self.broker_reloaded:
            done += "; the broker was reloaded and refuses it"
        return f"{done}. {self.problem}" if self.problem else done + "."


def revoke_device(
    session: Session, settings: EnrollmentSettings, device: DeviceRow, *, now: datetime
) -> DeviceRevocation:
    """Mark ``device`` and all its certificates revoked; ingest quarantines its messages from now
    on and what it sent stays. With the issuing CA on this server, also put every certificate
    that CA issued to the device on its CRL and run ``broker_reload_command``, so the broker
    refuses it. Never raises for the CA or the command: what failed is in ``problem``."""
    device.revoked = True
    session.add(device)
    rows = session.exec(
        select(DeviceCertificateRow).where(col(DeviceCertificateRow.device_id) == device.id)
    ).all()
    for row in rows:
        if row.revoked_at is None:
            row.revoked_at = now
            session.add(row)
    if settings.issuing_ca_dir is None:
        return DeviceRevocation(
            device.id, "manual", [], None, f"This server holds no issuing CA: {MANUAL_REVOCATION}."
        )
    try:
        ca, passphrase = open_issuing_ca(settings.issuing_ca_dir, settings, clock=lambda: now)
        found = [ca.issued(int(r.serial_number, 16)) for r in rows]
        certs = [c for c in found if c is not None]
        added = ca.revoke_all(certs, device.id, "revoked on the server", passphrase)
    # IdentityError: the CA's own (CAError) and any it lets through
    except (IdentityError, ValueError) as exc:
        log.warning("revoking %s on the issuing CA failed: %s", device.id, exc)
        return DeviceRevocation(
            device.id,
            "manual",
            [],
            None,
            f"The issuing CA could not revoke it ({exc}): {MANUAL_REVOCATION}.",
        )
    listed = [f"{c.serial_number:x}" for c in added]
    foreign = len(found) - len(certs)
    note = (
        f"{foreign} certificate(s) were not issued by this server's CA: {MANUAL_REVOCATION}."
        if foreign
        else None
    )
    if not certs:
        return DeviceRevocation(device.id, "manual", listed, None, note)
    reloaded, failure = run_broker_reload(settings)
    problem = " ".join(p for p in (failure, note) if p) or None
    if foreign:
        outcome = "manual"
    else:
        outcome = {None: "reload_needed", True: "blocked", False: "reload_failed"}[reloaded]
    return DeviceRevocation(device.id, outcome, listed, reloaded, problem)


def run_broker_reload(settings: EnrollmentSettings) -> tuple[bool | None, str | None]:
    """Run ``broker_reload_command`` (no shell, with a timeout): (None, advice) without one,
    (True, None) on success, (False, why) on failure."""
    argv = settings.broker_reload_command
    if argv is None:
        return None, "Reload the broker so it reads the new CRL (no broker_reload_command is set)."
    shown = " ".join(argv)
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=settings.broker_reload_timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        why = f"did not finish within {settings.broker_reload_timeout_s:g} s"
    except OSError as exc:
        why = f"could not be started: {exc.strerror or exc}"
    else:
        if done.returncode == 0:
            return True, None
        output = (done.stderr or done.stdout).strip().splitlines()
        why = f"exited with {done.returncode}" + (f": {output[-1][:200]}" if output else "")
    log.warning("the broker reload command %r %s", shown, why)
    return False, (
        f"The broker reload command `{shown}` {why}; "
        "reload the broker by hand so it reads the new CRL."
    )
