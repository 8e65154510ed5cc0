"""A device downloads an agent bundle over the server's own HTTPS with its client certificate
(issue 25), and resumes an interrupted download with ``Range``: 200 whole, 206 from where it
stopped (``Content-Range``), 416 past the end, 401 without a certificate, 404 unknown, 403 once
revoked; audited once per download (the request from byte 0), not per range. The HTTPS server,
its issuing CA and the devices' certificates are the background files' (``test_backgrounds.py``)."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.server.models import AuditRow, DeviceRow
from resonera.server.revocation import revoke_device
from resonera.server.updates import BundleStore, update_keys


def _beside(file: str, name: str) -> ModuleType:
    """A test module beside this one, by path (a plain import would find the source tree's
    ``server`` package)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(file))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


backgrounds = _beside("test_backgrounds.py", "resonera_test_backgrounds")
bundles = _beside("update_bundles.py", "resonera_update_bundles")
https_server = backgrounds.https_server  # the fixture: the API over HTTPS asking for certificates


def test_a_device_downloads_a_bundle_and_resumes_it_with_range(
    https_server: Any, engine: Engine, tmp_path: Path
) -> None:
    key = bundles.UpdateKey.new()
    settings = https_server.settings.model_copy(update={"update_public_keys": [key.public_b64]})
    data = bundles.bundle_bytes(key, "0.9.0")
    with BundleStore.for_settings(settings).writer() as writer:
        writer.write(data)
        held = writer.finish()
    assert BundleStore(settings.data_dir / "updates", update_keys(settings)).holds(held.sha256)
    cert = backgrounds._device(https_server, engine, tmp_path / "dev-u", "dev-u")
    url = f"{https_server.url}/device/updates/{held.sha256}"
    with httpx.Client(verify=backgrounds._tls(https_server, cert)) as device:
        whole = device.get(url)
        assert whole.status_code == 200, whole.text
        assert whole.content == data
        assert whole.headers["accept-ranges"] == "bytes"
        # Interrupted after 1000 bytes: the rest, from there.
        rest = device.get(url, headers={"Range": "bytes=1000-"})
        assert rest.status_code == 206, rest.text
        assert rest.headers["content-range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
        assert data[:1000] + rest.content == data
        beyond = device.get(url, headers={"Range": f"bytes={len(data)}-"})
        assert beyond.status_code == 416
        assert beyond.headers["content-range"] == f"bytes */{len(data)}"
        unknown = device.get(f"{https_server.url}/device/updates/{'ab' * 32}")
        assert unknown.status_code == 404, unknown.text
    with httpx.Client(verify=backgrounds._tls(https_server, None)) as anonymous:
        refused = anonymous.get(url)
    assert refused.status_code == 401
    assert "client certificate is needed" in refused.json()["error"]["message"]

    with Session(engine) as session:
        row = session.get(DeviceRow, "dev-u")
        assert row is not None
        revoke_device(session, https_server.settings.enrollment, row, now=datetime.now(UTC))
        session.commit()
    with httpx.Client(verify=backgrounds._tls(https_server, cert)) as device:
        revoked = device.get(url)
    assert revoked.status_code == 403, revoked.text

    with Session(engine) as session:
        reads = session.exec(select(AuditRow).where(AuditRow.resource == "agent_bundle")).all()
    # One download (from byte 0), however many ranges it took.
    assert [(r.actor_email, r.action, r.resource_id) for r in reads] == [
        ("device:dev-u", "read", held.sha256)
    ]
