"""Passwords (argon2id), access tokens (JWT, HS256, short-lived) and refresh tokens (random,
stored as SHA-256, rotated on every use, revocable). Failed sign-ins are limited per address and
per account by ``ratelimit.FailureLimiter`` (a delay, never a lockout).

Access tokens are checked against the database on every request (the user must still exist and be
active, with the role the token names), so deactivating a user takes effect at once; refresh tokens
are rows, so logging out or deactivating revokes them. Reusing a refresh token that was already
rotated revokes every refresh token of that user (a stolen copy and the real one cannot both live).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlmodel import Session, col, select, update

from resonera.server.models import RefreshTokenRow, UserRow
from resonera.server.settings import ServerSettings

ALGORITHM: Final = "HS256"
ISSUER: Final = "resonera-server"
_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile
#: Verified against when the email is unknown, so both cases take as long (made on first use).
_dummy_hash: list[str] = []


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def burn_time(password: str) -> None:
    if not _dummy_hash:
        _dummy_hash.append(_hasher.hash(secrets.token_urlsafe(16)))
    verify_password(_dummy_hash[0], password)


def now_utc() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AccessClaims:
    user_id: int
    role: str


class TokenError(Exception):
    """An access token is missing, malformed, expired or signed by another key."""


def issue_access_token(settings: ServerSettings, user: UserRow, now: datetime) -> str:
    assert user.id is not None
    claims = {
        "sub": str(user.id),
        "role": user.role,
        "iss": ISSUER,
        "iat": int(now.timestamp()),
        "exp": int(now.timestamp()) + settings.access_token_ttl_s,
        "jti": secrets.token_hex(8),
        "typ": "access",
    }
    return jwt.encode(claims, settings.jwt_secret_value(), algorithm=ALGORITHM)


def decode_access_token(settings: ServerSettings, token: str) -> AccessClaims:
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret_value(),
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "sub", "iat"]},
        )
    except jwt.PyJWTError as exc:
        raise TokenError(str(exc)) from None
    if claims.get("typ") != "access" or not str(claims.get("sub", "")).isdigit():
        raise TokenError("not an access token")
    return AccessClaims(int(claims["sub"]), str(claims.get("role", "")))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_refresh_token(
    session: Session, settings: ServerSettings, user: UserRow, now: datetime
) -> str:
    """A new refresh token for ``user``, added to ``session`` (the caller commits)."""
    assert user.id is not None
    token = secrets.token_urlsafe(32)
    session.add(
        RefreshTokenRow(
            user_id=user.id,
            token_hash=_digest(token),
            created_at=now,
            expires_at=now + timedelta(seconds=settings.refresh_token_ttl_s),
        )
    )
    return token


class RefreshRefused(Exception):
    """The refresh token is unknown, expired or revoked."""


def use_refresh_token(session: Session, token: str, now: datetime) -> UserRow:
    """Revoke ``token`` (rotation) and return its user; on reuse of a revoked token revoke all of
    the user's tokens. Raise ``RefreshRefused`` unless the token was valid. Caller commits."""
    row = session.exec(
        select(RefreshTokenRow).where(RefreshTokenRow.token_hash == _digest(token))
    ).first()
    if row is None:
        raise RefreshRefused("unknown refresh token")
    if row.revoked_at is not None:
        revoke_all(session, row.user_id, now)
        raise RefreshRefused("refresh token was already used or revoked")
    if row.expires_at <= now:
        raise RefreshRefused("refresh token expired")
    row.revoked_at = now
    session.add(row)
    user = session.get(UserRow, row.user_id)
    if user is None or not user.active:
        raise RefreshRefused("the user is not active")
    return user


def revoke_refresh_token(session: Session, user_id: int, token: str, now: datetime) -> bool:
    """Revoke ``token`` if it is one of ``user_id``'s live tokens; say whether it was."""
    row = session.exec(
        select(RefreshTokenRow).where(RefreshTokenRow.token_hash == _digest(token))
    ).first()
    if row is None or row.revoked_at is not None or row.user_id != user_id:
        return False
    row.revoked_at = now
    session.add(row)
    return True


def revoke_all(session: Session, user_id: int, now: datetime) -> None:
    session.exec(
        update(RefreshTokenRow)
        .where(col(RefreshTokenRow.user_id) == user_id, col(RefreshTokenRow.revoked_at).is_(None))
        .values(revoked_at=now)
    )
