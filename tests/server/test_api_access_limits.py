"""Issue 26, finding 5, through the running API (uvicorn on a loopback port, SQLite and
PostgreSQL): assignment reads are audited; real device keys (base64 with its ``=`` padding) are
registered and other keys refused; failed sign-ins slow down the address and, from several
addresses, the account, and never lock anyone out.

Each client speaks from its own loopback address (127.0.0.0/8 is all local), so the server sees
distinct client addresses as it would behind no proxy. The sign-in limits run on an injected clock
(``create_app(clock=...)``): the tests move it instead of waiting, and read no other."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import WallClock
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.common.identity import generate_key
from resonera.common.signing import sign_envelope
from resonera.server.crypto import write_signing_key
from resonera.server.desired import MemoryPublisher
from resonera.server.ingest import IngestProcessor, Received
from resonera.server.models import SIG_VERIFIED, AuditRow, QuarantineRow, SessionRow
from resonera.server.runner import run_server_in_thread
from resonera.server.settings import ServerSettings

#: Where the sign-in limits' clock starts; nothing else in these tests reads a clock.
T = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
PASSWORD = "correct horse battery staple"  # every user of the ``world`` fixture has it
STRANGER = "127.0.0.2"
OWNER = "127.0.0.3"
WRONG = "not the password at all"


@pytest.fixture
def clock() -> WallClock:
    return WallClock(T)


@pytest.fixture
def api(
    engine: Engine,
    server_settings: ServerSettings,
    publisher: MemoryPublisher,
    tmp_path: Path,
    clock: WallClock,
) -> Iterator[str]:
    """The API of ``engine``'s database served by uvicorn on 127.0.0.1, default sign-in limits
    (5 free failures per address, 10 per account, 1 s doubling, at most 900 s / 60 s)."""
    key = tmp_path / "desired.pem"
    write_signing_key(key)
    settings = server_settings.model_copy(update={"desired_signing_key_file": key})
    with run_server_in_thread(
        settings, ingest=False, engine=engine, publisher=publisher, clock=clock
    ) as server:
        yield server.api_url


@pytest.fixture
def speak_from() -> Iterator[Any]:
    """``speak_from(address)``: an HTTP client whose requests come from that loopback address."""
    clients: list[httpx.Client] = []

    def make(address: str) -> httpx.Client:
        client = httpx.Client(transport=httpx.HTTPTransport(local_address=address))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def _login(client: httpx.Client, api: str, email: str, password: str = PASSWORD) -> httpx.Response:
    return client.post(f"{api}/auth/login", json={"email": email, "password": password})


def _waits(response: httpx.Response, whose: str) -> int:
    """The seconds a 429 says to wait (header and body agree), checking whose failures it names."""
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "too_many_requests"
    assert f"too many failed sign-ins {whose}" in error["message"]
    seconds = int(response.headers["Retry-After"])
    assert error["details"] == {"retry_after_s": seconds}
    assert seconds >= 1
    return seconds


def _audit(engine: Engine, **where: Any) -> list[AuditRow]:
    with Session(engine) as session:
        query = select(AuditRow).order_by(col(AuditRow.id))
        for name, value in where.items():
            query = query.where(getattr(AuditRow, name) == value)
        return list(session.exec(query).all())


# -- assignments are audited -----------------------------------------------------------------


def test_reading_assignments_leaves_an_audit_row_per_assignment(
    api: str, world: Any, engine: Engine
) -> None:
    everyone = httpx.get(f"{api}/assignments", headers=world.admin.headers)
    assert everyone.status_code == 200, everyone.text
    assert {a["patient_id"] for a in everyone.json()} == {world.patient, world.other_patient}
    reads = _audit(engine, action="read", resource="assignment")
    assert sorted((r.resource_id, r.patient_id) for r in reads) == sorted(
        (str(a["id"]), a["patient_id"]) for a in everyone.json()
    )
    for row in reads:
        assert (row.actor_id, row.actor_email, row.actor_role) == (
            world.admin.id,
            world.admin.email,
            "admin",
        )
        assert (row.method, row.path, row.client) == ("GET", "/api/v1/assignments", "127.0.0.1")

    one = httpx.get(
        f"{api}/assignments", params={"patient_id": world.patient}, headers=world.admin.headers
    )
    assert [a["patient_id"] for a in one.json()] == [world.patient]
    newest = _audit(engine, action="read", resource="assignment")[len(reads) :]
    assert [(r.resource_id, r.patient_id) for r in newest] == [
        (str(one.json()[0]["id"]), world.patient)
    ]


# -- device keys -----------------------------------------------------------------------------


def _spki(key: Any) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def test_a_real_p256_device_key_is_registered_and_its_messages_verify(
    api: str, world: Any, engine: Engine, make_body: Callable[..., dict[str, Any]]
) -> None:
    key = generate_key()  # what a device makes (resonera.common.identity)
    public = _spki(key.public_key())
    assert public.endswith("==")  # 91 bytes of DER: every P-256 key is padded so
    created = httpx.post(
        f"{api}/devices", json={"id": "dev-real", "public_key": public}, headers=world.admin.headers
    )
    assert created.status_code == 201, created.text
    assert created.json()["public_key"] == public

    # ingest dates what it receives on the real clock, so this test reads that one alone
    start = datetime.now(UTC) - timedelta(minutes=20)

    def session_from(device_key: ec.EllipticCurvePrivateKey, seq: int) -> Envelope:
        envelope = Envelope.create(
            device="dev-real", seq=seq, kind="session", body=make_body(start=start)
        )
        return sign_envelope(envelope, device_key)

    topic = topics.up("dev-real", "session")
    good, forged = session_from(key, 0), session_from(generate_key(), 1)
    result = IngestProcessor(engine).process(
        [Received(topic, good.to_bytes()), Received(topic, forged.to_bytes())]
    )
    assert (result.stored, result.quarantined) == (1, 1)
    with Session(engine) as session:
        stored = session.exec(select(SessionRow)).all()
        assert [(r.message_id, r.sig_status) for r in stored] == [(good.id, SIG_VERIFIED)]
        reason = session.exec(select(QuarantineRow.reason)).one()
        assert "does not verify" in reason


def test_a_raw_ed25519_key_is_registered_and_a_p256_key_can_replace_it(
    api: str, world: Any
) -> None:
    raw = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    ed25519 = base64.b64encode(raw).decode()
    assert len(ed25519) == 44 and ed25519.endswith("=")
    created = httpx.post(
        f"{api}/devices", json={"id": "dev-ed", "public_key": ed25519}, headers=world.admin.headers
    )
    assert created.status_code == 201, created.text
    p256 = _spki(generate_key().public_key())
    changed = httpx.patch(
        f"{api}/devices/dev-ed", json={"public_key": p256}, headers=world.admin.headers
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["public_key"] == p256


def _other_keys() -> list[tuple[str, str, str]]:
    """(case, public_key, what the 422 says about it)."""
    p256 = _spki(generate_key().public_key())
    ed_spki = _spki(Ed25519PrivateKey.generate().public_key())
    return [
        ("garbage", "not a key at all!", "is not base64"),
        ("unpadded-p256", p256.rstrip("="), "is not base64"),
        ("bytes-not-a-key", base64.b64encode(b"x" * 91).decode(), "neither a raw 32-byte"),
        (
            "rsa",
            _spki(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()),
            "is an RSA-2048 key",
        ),
        ("p384", _spki(ec.generate_private_key(ec.SECP384R1()).public_key()), "secp384r1"),
        ("ed25519-spki", ed_spki, "give the raw 32 bytes instead"),
    ]


def test_keys_that_are_not_device_keys_are_422_naming_what_they_are(
    api: str, world: Any, engine: Engine
) -> None:
    failures = []
    for case, public_key, says in _other_keys():
        for method, url, body in (
            ("POST", f"{api}/devices", {"id": f"dev-{case}", "public_key": public_key}),
            ("PATCH", f"{api}/devices/{world.device}", {"public_key": public_key}),
        ):
            response = httpx.request(method, url, json=body, headers=world.admin.headers)
            details = response.json()["error"]["details"] if response.status_code == 422 else []
            if not (
                len(details) == 1
                and details[0]["loc"] == ["body", "public_key"]
                and says in details[0]["msg"]
            ):
                failures.append(f"{case} {method}: {response.status_code} {response.text}")
    assert not failures, "\n".join(failures)
    listed = httpx.get(f"{api}/devices", headers=world.admin.headers).json()
    assert {d["id"] for d in listed} == {world.device, world.other_device}
    assert all(d["public_key"] is None for d in listed)


# -- sign-in limits --------------------------------------------------------------------------


def test_a_strangers_wrong_passwords_slow_down_their_address_not_the_owner(
    api: str, world: Any, engine: Engine, clock: WallClock, speak_from: Any
) -> None:
    stranger, owner = speak_from(STRANGER), speak_from(OWNER)
    admin = world.admin.email
    for _ in range(5):  # free failures per address
        assert _login(stranger, api, admin, WRONG).status_code == 401
    # the address now waits, even with the right password (it is not checked)
    assert _waits(_login(stranger, api, admin), "from this address") == 1
    # a wait lets one more guess through, and each failure doubles the next wait
    waits = []
    for _ in range(6):
        waits.append(_waits(_login(stranger, api, admin, WRONG), "from this address"))
        clock.advance(seconds=waits[-1])
        assert _login(stranger, api, admin, WRONG).status_code == 401
    assert waits == [1, 2, 4, 8, 16, 32]
    # the address waits for every account, whatever password it tries
    assert _waits(_login(stranger, api, world.clinician.email), "from this address") == 64
    # and the owner, from their own address, signs in at once: one address never slows an account
    assert _login(owner, api, admin).status_code == 200
    assert _login(owner, api, admin).status_code == 200
    # every password checked was audited; the refused attempts checked none
    failed = _audit(engine, action="login_failed")
    assert len(failed) == 11
    assert {(r.actor_email, r.client) for r in failed} == {(admin, STRANGER)}


def test_failures_from_many_addresses_delay_the_account_and_never_lock_it(
    api: str, world: Any, clock: WallClock, speak_from: Any
) -> None:
    owner = speak_from(OWNER)
    email = world.clinician.email
    # ten failures from three addresses, none of them over its own limit
    botnet = [speak_from(f"127.0.1.{i}") for i in range(3)]
    for attempt in range(10):
        assert _login(botnet[attempt % 3], api, email, WRONG).status_code == 401
    # now the account waits, from any address, the owner's included, right password or not
    assert _waits(_login(owner, api, email), "for this account") == 1
    assert _waits(_login(speak_from("127.0.1.200"), api, email, WRONG), "for this account") == 1
    # another account is not slowed down, from the same addresses
    assert _login(botnet[0], api, world.admin.email).status_code == 200
    # each further failure (a fresh address each time) doubles the wait, up to one minute
    waits = []
    for i in range(8):
        waits.append(_waits(_login(owner, api, email), "for this account"))
        clock.advance(seconds=waits[-1])
        assert _login(speak_from(f"127.0.2.{i}"), api, email, WRONG).status_code == 401
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60]
    # never a lockout: once the wait is over, the owner's right password signs in
    clock.advance(seconds=_waits(_login(owner, api, email), "for this account"))
    assert _login(owner, api, email).status_code == 200
    # an unknown email is slowed down the same way (a 429 does not tell whether an account exists)
    for attempt in range(10):
        wrong = _login(speak_from(f"127.0.4.{attempt % 3}"), api, "nobody@example.org", WRONG)
        assert wrong.status_code == 401
    assert _waits(_login(owner, api, "nobody@example.org"), "for this account") == 1


def test_refresh_tokens_outlive_the_sign_in_delay_and_not_a_deactivation(
    api: str, world: Any, speak_from: Any
) -> None:
    """Decided: a sign-in delay is about password guesses, and a refresh token was earned with the
    password, so it keeps working; deactivating the account (or resetting its password) is the
    admin's lock and revokes every refresh token at once."""
    owner = speak_from(OWNER)
    email = world.clinician.email
    before = _login(owner, api, email).json()
    for attempt in range(10):
        _login(speak_from(f"127.0.3.{attempt % 3}"), api, email, WRONG)
    _waits(_login(owner, api, email), "for this account")
    refreshed = owner.post(f"{api}/auth/refresh", json={"refresh_token": before["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    me = owner.get(
        f"{api}/auth/me", headers={"Authorization": f"Bearer {refreshed.json()['access_token']}"}
    )
    assert me.json()["email"] == email
    # an admin lifts the account's delay (unlock): the owner signs in at once
    unlock = httpx.patch(
        f"{api}/users/{world.clinician.id}", json={"unlock": True}, headers=world.admin.headers
    )
    assert unlock.status_code == 200, unlock.text
    assert "locked_until" not in unlock.json()
    signed_in = _login(owner, api, email)
    assert signed_in.status_code == 200, signed_in.text
    # deactivation revokes the refresh tokens issued before it, the newest and the older one
    off = httpx.patch(
        f"{api}/users/{world.clinician.id}", json={"active": False}, headers=world.admin.headers
    )
    assert off.status_code == 200, off.text
    for tokens in (refreshed.json(), signed_in.json()):
        gone = owner.post(f"{api}/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert gone.status_code == 401
