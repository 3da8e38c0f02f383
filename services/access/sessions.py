"""Browser sessions of the curator console: an API key pasted once becomes an opaque session token.

The browser holds only the token (a cookie the door sets HttpOnly and SameSite=Strict); the database
holds its SHA-256, the key it stands for, a CSRF token for the session's forms, and its expiry. A
revoked key ends its sessions at their next request; signing out deletes the row.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.access import auth
from services.errors import Unauthorized
from services.tables import ApiKey, UiSession, utcnow


@dataclass(frozen=True)
class Signed:
    """A session as its request sees it."""

    token: str | None  # the plaintext token, only when just created
    csrf_token: str
    key_id: int
    key_name: str
    role: str
    expires_at: datetime


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def sign_in(session: Session, key: str, lifetime_s: int) -> Signed:
    """A new session for a valid key (Unauthorized otherwise); expired sessions are swept."""
    row = auth.authenticate(session, key.strip())
    if row is None:
        raise Unauthorized("that API key is not valid or has been revoked")
    session.execute(delete(UiSession).where(UiSession.expires_at < utcnow()))
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    expires = utcnow() + timedelta(seconds=lifetime_s)
    session.add(UiSession(token_sha256=_hash(token), key_id=row.id, csrf_token=csrf, expires_at=expires))
    session.flush()
    return Signed(token, csrf, row.id, row.name, row.role, expires)


def resolve(session: Session, token: str | None) -> Signed | None:
    """The live session of a cookie's token, or None (unknown, expired, or its key revoked)."""
    if not token or len(token) > 256:
        return None
    found = session.execute(select(UiSession, ApiKey).join(ApiKey, ApiKey.id == UiSession.key_id)
                            .where(UiSession.token_sha256 == _hash(token))).first()
    if found is None:
        return None
    ui, key = found
    if key.revoked_at is not None or _aware(ui.expires_at) <= utcnow():
        return None
    return Signed(None, ui.csrf_token, key.id, key.name, key.role, _aware(ui.expires_at))


def sign_out(session: Session, token: str | None) -> None:
    if token:
        session.execute(delete(UiSession).where(UiSession.token_sha256 == _hash(token)))


def same_token(expected: str, given: str | None) -> bool:
    """Constant-time comparison of a CSRF token."""
    return bool(given) and secrets.compare_digest(expected.encode(), (given or "").encode())
