"""API keys: created once (the plaintext is shown only then), stored as sha256, each with a role."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.errors import BadInput
from services.tables import ApiKey, Role, utcnow

# What each role may do. Health endpoints need none.
PERMISSIONS: dict[str, frozenset[str]] = {
    Role.read.value: frozenset({"read"}),
    Role.ingest.value: frozenset({"read", "ingest"}),
    Role.curator.value: frozenset({"read", "label"}),
    Role.admin.value: frozenset({"read", "ingest", "label", "admin"}),
}

KEY_PREFIX = "stk_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(session: Session, role: str, name: str | None = None) -> tuple[ApiKey, str]:
    if role not in PERMISSIONS:
        raise BadInput(f"unknown role {role!r}; choose one of {', '.join(PERMISSIONS)}", "bad_role")
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name or f"{role} key", prefix=plaintext[:10], key_hash=hash_key(plaintext), role=role)
    session.add(row)
    session.flush()
    return row, plaintext


def authenticate(session: Session, key: str) -> ApiKey | None:
    if not key:
        return None
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None or row.revoked_at is not None:
        return None
    return row


def revoke_key(session: Session, key_id: int) -> bool:
    row = session.get(ApiKey, key_id)
    if row is None:
        return False
    row.revoked_at = utcnow()
    return True


def allows(role: str, permission: str) -> bool:
    return permission in PERMISSIONS.get(role, frozenset())
