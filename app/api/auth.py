"""Authentication of a request: its API key's principal (user, role, customer scope) and the
decorator that guards a view. Keys themselves are made in app.accounts.keys; a request's key is
looked up by its hash and the hashes compared in constant time.
"""

from __future__ import annotations

import copy
import functools
import hmac
from dataclasses import dataclass

import sqlalchemy as sa
from flask import g, request

from app import clock
from app.accounts.access import Actor, Scope
from app.accounts.keys import ROLES, hash_key
from app.api.envelope import ApiError
from app.clock import now_ms
from app.extensions import current_settings, db
from app.models import ApiKey

API_KEY_HEADER = "Argus-API-Key"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's user, role and the customers it may see."""

    user: Actor
    role: str
    scope: Scope
    expires_timestamp: int | None = None

    def has_role(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


# Keys seen recently, by hash: authentication costs a dictionary look-up instead of two queries.
# A key disabled in the database stops working within SAMPLEDB_API_KEY_CACHE_SECONDS; expiry is exact.
_principals: dict[str, tuple[float, Principal]] = {}
_PRINCIPALS_MAX = 10_000


def _load_principal(digest: str) -> Principal:
    api_key = db.session.scalar(sa.select(ApiKey).where(ApiKey.key_hash == digest))
    if api_key is None or not hmac.compare_digest(api_key.key_hash, digest):
        raise ApiError.action(401, "Unknown API key")
    if api_key.disabled:
        raise ApiError.action(401, "API key is disabled")
    if api_key.all_customers:
        scope = Scope(None)
    else:
        scope = Scope(frozenset({api_key.user.customer_id} | {c.customer_id for c in api_key.granted_customers}))
    user = api_key.user
    actor = Actor(id=user.id, customer_short_name=user.customer.short_name, info=user.to_info())
    return Principal(user=actor, role=api_key.role, scope=scope, expires_timestamp=api_key.expires_timestamp)


def authenticate() -> Principal:
    key = request.headers.get(API_KEY_HEADER, "")
    if not key:
        raise ApiError.action(401, f"Missing {API_KEY_HEADER} header")
    digest = hash_key(key)
    ttl = current_settings().api_key_cache_seconds
    now = clock.monotonic()
    cached = _principals.get(digest)
    if cached is not None and now - cached[0] < ttl:
        principal = cached[1]
    else:
        principal = _load_principal(digest)
        if ttl:
            if len(_principals) >= _PRINCIPALS_MAX:
                _principals.clear()
            _principals[digest] = (now, principal)
    if principal.expires_timestamp is not None and principal.expires_timestamp <= now_ms():
        raise ApiError.action(401, "API key has expired")
    return principal


def requires(role: str):
    """Decorator: the view needs a valid key with `role` or higher; the principal is in `g.principal`."""

    def decorate(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            principal = authenticate()
            if not principal.has_role(role):
                raise ApiError.action(403, f"Role {role} or higher is required")
            g.principal = principal
            return view(*args, **kwargs)

        wrapper._sampledb_role = role  # read by the OpenAPI security documentation
        # Document the answers every protected operation may give (flask-smorest reads _apidoc).
        wrapper._apidoc = copy.deepcopy(getattr(view, "_apidoc", {}))
        responses = wrapper._apidoc.setdefault("response", {}).setdefault("responses", {})
        responses.setdefault(401, []).append("UNAUTHORIZED")
        responses.setdefault(403, []).append("FORBIDDEN")
        return wrapper

    return decorate


def current_principal() -> Principal:
    return g.principal
