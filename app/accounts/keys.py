"""API keys and roles.

Keys are random, shown once when made and stored only as their SHA-256. Roles are ordered
VIEWER < UPLOADER < USER < ANALYZER and "X or higher" follows that order.
"""

from __future__ import annotations

import hashlib
import secrets

import sqlalchemy.orm as so

from app.accounts.customers import ensure_customer, ensure_user
from app.clock import now_ms
from app.models import ApiKey, ApiKeyCustomer

ROLES = ("SAMPLEDB-VIEWER", "SAMPLEDB-UPLOADER", "SAMPLEDB-USER", "SAMPLEDB-ANALYZER")
VIEWER, UPLOADER, USER, ANALYZER = ROLES


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def create_key(
    session: so.Session,
    *,
    user: str,
    customer: str,
    role: str,
    grant_customers: tuple[str, ...] = (),
    all_customers: bool = False,
    expires_in: int | None = None,
) -> str:
    """Make a key (and its user and customers when new); returns the secret, which is stored only hashed."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    owner = ensure_user(session, user, ensure_customer(session, customer))
    secret = secrets.token_urlsafe(32)
    now = now_ms()
    api_key = ApiKey(
        key_hash=hash_key(secret),
        user_id=owner.id,
        role=role,
        all_customers=all_customers,
        disabled=False,
        created_timestamp=now,
        expires_timestamp=now + expires_in * 1000 if expires_in is not None else None,
    )
    session.add(api_key)
    session.flush()
    for short_name in grant_customers:
        session.add(ApiKeyCustomer(api_key_id=api_key.id, customer_id=ensure_customer(session, short_name).id))
    session.flush()
    return secret
