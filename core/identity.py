"""Identity: verifies the marketplace's JWTs (HS256 or RS256) and issues dev tokens for `messenger token`."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import jwt

from config.settings import AuthSettings
from core.errors import Code, Unauthenticated

USER_ID = re.compile(r"[A-Za-z0-9_.:@\-]{1,128}")
# Tokens verified and kept per process: a client sends the same token with every request until it expires.
VERIFIED_KEPT = 4096
# Most callers have no roles: one shared empty set, not a 216-byte one of their own per session.
NO_ROLES: frozenset[str] = frozenset()


# Slots: every connected session and every kept token holds one (a __dict__ would be ~100 bytes more).
@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    name: str | None
    roles: frozenset[str]
    # The token's exp; a socket outliving it is refused further use, and ended (ChatGateway's sweep).
    expires_at: float = float("inf")

    @property
    def is_moderator(self) -> bool:
        return "moderator" in self.roles


class TokenVerifier:
    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        # Settings validation guarantees a public key for RS256 in production; an empty key fails every token.
        self._key: str = (settings.public_key or "") if settings.algorithm == "RS256" else settings.secret
        self._verified: dict[str, Identity] = {}

    def has_expired(self, identity: Identity, now: float) -> bool:
        """Whether identity's token would be refused at `now`: past its exp by more than the leeway."""
        return now >= identity.expires_at + self._settings.leeway_seconds

    def verify(self, token: object) -> Identity:
        if not isinstance(token, str) or not token:
            raise Unauthenticated("a bearer token is required", code=Code.TOKEN_MISSING)
        # A token verified before is the same bytes under the same key: only its expiry can have changed
        # (nbf and iat only become truer). The full check costs ~30 us, a tenth of an upload grant.
        kept = self._verified.get(token)
        if kept is not None and not self.has_expired(kept, time.time()):
            return kept
        try:
            # algorithms is pinned to the configured one so "alg: none" and key confusion fail.
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[self._settings.algorithm],
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=self._settings.leeway_seconds,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired", code=Code.TOKEN_EXPIRED) from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the token is not valid: {exc}", code=Code.TOKEN_INVALID) from None
        identity = _identity_from_claims(claims)
        if len(self._verified) >= VERIFIED_KEPT:
            self._verified.clear()
        self._verified[token] = identity
        return identity


def _identity_from_claims(claims: dict[str, Any]) -> Identity:
    user_id = claims.get("sub")
    if not isinstance(user_id, str) or not USER_ID.fullmatch(user_id):
        # The same shape as ids in request bodies, so a user who can connect can also take part.
        raise Unauthenticated(
            "the token's sub claim must be a user id of letters, digits and _ . : @ -", code=Code.TOKEN_INVALID
        )
    name = claims.get("name")
    roles = claims.get("roles") or []
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise Unauthenticated("the token's roles claim must be a list of strings", code=Code.TOKEN_INVALID)
    return Identity(
        user_id=user_id,
        name=name if isinstance(name, str) else None,
        roles=frozenset(roles) if roles else NO_ROLES,
        expires_at=float(claims["exp"]),
    )


def issue_token(
    settings: AuthSettings,
    user_id: str,
    *,
    name: str | None = None,
    moderator: bool = False,
    ttl_seconds: int = 3600,
) -> str:
    """Sign a token with the configured HS256 secret, for trying the service without a marketplace."""
    if settings.algorithm != "HS256":
        raise Unauthenticated("tokens can only be issued with JWT_ALGORITHM=HS256", code=Code.TOKEN_ISSUE_UNSUPPORTED)
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + ttl_seconds}
    if name:
        claims["name"] = name
    if moderator:
        claims["roles"] = ["moderator"]
    if settings.issuer:
        claims["iss"] = settings.issuer
    if settings.audience:
        claims["aud"] = settings.audience
    return jwt.encode(claims, settings.secret, algorithm="HS256")
