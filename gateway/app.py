"""The ASGI application: routes, and the one list of middleware they sit behind."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text

from gateway import __version__
from gateway.admin import KeyAdmin
from gateway.database import create_engine
from gateway.exceptions import MethodNotAllowed, ModelNotFound, NotFound
from gateway.keys.store import KeyCache, KeyStore, VirtualKey
from gateway.middleware.auth import VIRTUAL_KEY, AuthMiddleware
from gateway.middleware.body_limit import BodyLimitMiddleware
from gateway.middleware.errors import ErrorMiddleware
from gateway.middleware.request_id import RequestIdMiddleware
from gateway.policy import Policy
from gateway.protocol import validation
from gateway.proxy import Endpoint, Proxy
from gateway.responses import send_json
from gateway.routing import alias_allowed
from gateway.settings import Settings
from gateway.types import ASGIApp, Receive, Scope, Send
from gateway.upstream.registry import ProviderRegistry

logger = logging.getLogger("tollgate")

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

PROXIED = {
    "/chat/completions": Endpoint("chat/completions", validation.validate_chat),
    "/completions": Endpoint("completions", validation.validate_completion),
    "/embeddings": Endpoint("embeddings", validation.validate_embeddings),
    "/responses": Endpoint("responses", validation.validate_responses),
}


class Tollgate:
    """Owns the gateway's long-lived parts; `__call__` is the ASGI entry point."""

    def __init__(self, settings: Settings, policy: Policy, *, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.policy = policy
        self.started_at = int(time.time())
        self.engine = create_engine(settings.store_url)
        self.keys = KeyStore(self.engine)
        self.key_cache = KeyCache(self.keys, settings.key_cache_seconds)
        self.providers = ProviderRegistry()
        self.proxy = Proxy(policy, self.providers, settings.max_body_bytes, rng or random.Random())
        self.admin = KeyAdmin(self.keys, self.key_cache)
        self.ready = False
        self.handler = self.build_middleware_stack()

    def build_middleware_stack(self) -> ASGIApp:
        # Outermost first, as requests meet them.
        middleware: list[Callable[[ASGIApp], ASGIApp]] = [
            RequestIdMiddleware,
            ErrorMiddleware,
            lambda app: BodyLimitMiddleware(app, self.settings.max_body_bytes),
            lambda app: AuthMiddleware(app, self.key_cache, self.settings.admin_key),
        ]
        app: ASGIApp = self.route
        for wrap in reversed(middleware):
            app = wrap(app)
        return app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        await self.handler(scope, receive, send)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def startup(self) -> None:
        await self.keys.create_schema()
        self.ready = True

    async def shutdown(self) -> None:
        self.ready = False
        await self.providers.aclose()
        await self.engine.dispose()

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    logger.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- routes ------------------------------------------------------------------------------------------------

    async def route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        # OpenAI clients configured with or without the /v1 suffix both work.
        api_path = path[3:] if path.startswith("/v1/") else path
        endpoint = PROXIED.get(api_path)
        if endpoint is not None:
            if method != "POST":
                raise MethodNotAllowed(f"Use POST for {path}.")
            await self.proxy.handle(endpoint, scope, receive, send)
            return
        if api_path == "/models" or api_path.startswith("/models/"):
            self.require(method, "GET", path)
            await self.models(api_path[len("/models/") :], scope, send)
        elif path == "/healthz":
            self.require(method, "GET", path)
            await send_json(send, 200, {"status": "ok", "version": __version__})
        elif path == "/readyz":
            self.require(method, "GET", path)
            await self.readiness(send)
        elif path == "/admin/keys":
            if method == "POST":
                await self.admin.create(scope, receive, send)
            else:
                self.require(method, "GET", path)
                await self.admin.list(scope, receive, send)
        elif path.startswith("/admin/keys/"):
            key_id, _, action = path[len("/admin/keys/") :].partition("/")
            if (method, action) not in (("DELETE", ""), ("POST", "revoke")):
                raise MethodNotAllowed("Revoke a key with DELETE /admin/keys/{id} or POST /admin/keys/{id}/revoke.")
            await self.admin.revoke(key_id, scope, receive, send)
        else:
            raise NotFound(f"Unknown path {path}.")

    @staticmethod
    def require(method: str, expected: str, path: str) -> None:
        if method != expected:
            raise MethodNotAllowed(f"Use {expected} for {path}.")

    async def models(self, model_id: str, scope: Scope, send: Send) -> None:
        key: VirtualKey = scope[VIRTUAL_KEY]
        allowed = self.policy.team(key.team).models
        cards = [
            {"id": route.alias, "object": "model", "created": self.started_at, "owned_by": "tollgate"}
            for route in self.policy.routes
            if alias_allowed(route.alias, allowed)
        ]
        if not model_id:
            await send_json(send, 200, {"object": "list", "data": cards})
            return
        route = self.proxy.router.resolve(model_id)
        if route is None or not alias_allowed(model_id, allowed):
            raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")
        await send_json(
            send, 200, {"id": model_id, "object": "model", "created": self.started_at, "owned_by": "tollgate"}
        )

    async def readiness(self, send: Send) -> None:
        checks: dict[str, Any] = {"started": self.ready}
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # Any driver error means "not ready"; say which.
            checks["database"] = f"unavailable: {type(exc).__name__}"
        ok = self.ready and checks["database"] == "ok"
        await send_json(send, 200 if ok else 503, {"status": "ready" if ok else "not ready", "checks": checks})


def create_app(settings: Settings, policy: Policy) -> Tollgate:
    return Tollgate(settings, policy)
