"""Authenticates the caller: a virtual key on /v1, the admin key on /admin. Health probes stay open."""

from __future__ import annotations

import hashlib
import hmac

from gateway.exceptions import AuthenticationFailed
from gateway.keys.store import KeyCache
from gateway.requests import header
from gateway.types import ASGIApp, Receive, Scope, Send

VIRTUAL_KEY = "tollgate.key"
# Set (True) when the caller presented the admin key; admin may read every team's reports but not call models.
ADMIN = "tollgate.admin"
# Paths under /v1 where the admin key is accepted as well as a virtual key.
ADMIN_READABLE_PREFIXES = ("/v1/reports/", "/v1/reviews", "/v1/feedback")
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})


def bearer_token(scope: Scope) -> str | None:
    raw = header(scope, b"authorization")
    if raw is not None:
        scheme, _, token = raw.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    # Azure-style clients send the key as `api-key`.
    raw = header(scope, b"api-key")
    return raw.decode("latin-1").strip() or None if raw is not None else None


class AuthMiddleware:
    def __init__(self, app: ASGIApp, keys: KeyCache, admin_key: str | None, *, metrics_public: bool = False) -> None:
        self.app = app
        self.keys = keys
        # Metrics name teams and their spend: behind the admin key when there is one, unless made public.
        self.metrics_open = metrics_public or not admin_key
        self._admin_digest = hashlib.sha256(admin_key.encode()).digest() if admin_key else None

    def is_admin(self, token: str) -> bool:
        if self._admin_digest is None:
            return False
        # Digests first, so the comparison takes the same time whatever the length of the guess.
        return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self._admin_digest)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] in PUBLIC_PATHS
            or (scope["path"] == "/metrics" and self.metrics_open)
        ):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is None:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer tg-...'.", code="missing_api_key"
            )
        if scope["path"].startswith("/admin") or scope["path"] == "/metrics":
            if self._admin_digest is None:
                raise AuthenticationFailed("Admin endpoints are disabled: set TOLLGATE_ADMIN_KEY to enable them.")
            if not self.is_admin(token):
                raise AuthenticationFailed("Incorrect admin key provided.")
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith(ADMIN_READABLE_PREFIXES) and self.is_admin(token):
            scope[ADMIN] = True
            await self.app(scope, receive, send)
            return
        record = await self.keys.authenticate(token)
        if record is None:
            # Never echo the key: error messages end up in client logs.
            raise AuthenticationFailed("Incorrect API key provided, or the key has been revoked.")
        scope[VIRTUAL_KEY] = record
        await self.app(scope, receive, send)
