"""The ASGI application: routes, and the one list of middleware they sit behind."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import text

from gateway import __version__
from gateway.accounting.ledger import Ledger
from gateway.accounting.limits import build_limiter
from gateway.accounting.pricing import PriceBook
from gateway.accounting.reports import ReportsAPI
from gateway.admin import KeyAdmin
from gateway.database import create_engine
from gateway.exceptions import MethodNotAllowed, ModelNotFound, NotFound
from gateway.keys.store import KeyCache, KeyStore, VirtualKey
from gateway.middleware.auth import VIRTUAL_KEY, AuthMiddleware
from gateway.middleware.body_limit import BodyLimitMiddleware
from gateway.middleware.errors import ErrorMiddleware
from gateway.middleware.request_id import RequestIdMiddleware
from gateway.middleware.tracing import TracingMiddleware
from gateway.policy import Policy
from gateway.protocol import validation
from gateway.protocol.types import ModelCard, ModelList
from gateway.proxy import Endpoint, Proxy
from gateway.responses import send_bytes, send_json
from gateway.routing import alias_allowed
from gateway.settings import Settings
from gateway.telemetry.metrics import CONTENT_TYPE, Metrics
from gateway.telemetry.tracing import Tracing
from gateway.types import ASGIApp, Receive, Scope, Send
from gateway.upstream.registry import ProviderRegistry

logger = logging.getLogger("tollgate")

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
        self.admin = KeyAdmin(self.keys, self.key_cache)
        self.ledger = Ledger(settings, self.engine)
        self.reports = ReportsAPI(self.engine)
        self.limiter = build_limiter(policy, settings.redis_url, self.ledger.spend_since)
        self.metrics = Metrics()
        self.metrics.journal_lag.set_function(lambda: self.ledger.lag)
        self.metrics.ledger_healthy.set_function(lambda: float(self.ledger.healthy))
        self.metrics.ledger_rejected.set_function(lambda: self.ledger.stats.rejected)
        self.metrics.limits_healthy.set_function(lambda: float(self.limiter.healthy))
        self.tracing = Tracing(settings, on_drop=self.metrics.span_drops.inc, on_failure=self.metrics.span_failures.inc)
        self.proxy = Proxy(
            policy,
            self.providers,
            max_body_bytes=settings.max_body_bytes,
            rng=rng or random.Random(),
            prices=PriceBook.from_litellm(overrides=policy.prices),
            ledger=self.ledger,
            limiter=self.limiter,
            tracing=self.tracing,
            metrics=self.metrics,
        )
        self.ready = False
        self.handler = self.build_middleware_stack()

    def build_middleware_stack(self) -> ASGIApp:
        # Outermost first, as requests meet them.
        middleware: list[Callable[[ASGIApp], ASGIApp]] = [
            RequestIdMiddleware,
            lambda app: TracingMiddleware(app, self.tracing),
            lambda app: ErrorMiddleware(app, on_error=lambda status: self.metrics.refused.labels(str(status)).inc()),
            lambda app: BodyLimitMiddleware(app, self.settings.max_body_bytes),
            lambda app: AuthMiddleware(
                app, self.key_cache, self.settings.admin_key, metrics_public=self.settings.metrics_public
            ),
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
        await self.ledger.start()
        await self.limiter.start()
        self.ready = True

    async def shutdown(self) -> None:
        self.ready = False
        await self.limiter.stop()
        await self.ledger.stop()
        await self.providers.aclose()
        self.tracing.shutdown()
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
        elif path in ("/v1/reports/cost", "/v1/reports/usage"):
            self.require(method, "GET", path)
            await self.reports.handle("cost" if path.endswith("/cost") else "usage", scope, send)
        elif path == "/healthz":
            self.require(method, "GET", path)
            await send_json(send, 200, {"status": "ok", "version": __version__})
        elif path == "/metrics":
            self.require(method, "GET", path)
            await self.metrics_page(send)
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
        if not model_id:
            cards = [self.model_card(r.alias) for r in self.policy.routes if alias_allowed(r.alias, allowed)]
            listing: ModelList = {"object": "list", "data": cards}
            await send_json(send, 200, listing)
            return
        route = self.proxy.router.resolve(model_id)
        if route is None or not alias_allowed(model_id, allowed):
            raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")
        await send_json(send, 200, self.model_card(model_id))

    def model_card(self, model_id: str) -> ModelCard:
        return {"id": model_id, "object": "model", "created": self.started_at, "owned_by": "tollgate"}

    async def readiness(self, send: Send) -> None:
        """200 while the gateway can serve (degraded parts are listed: the journal and local counters cover for
        them, DESIGN.md §3); 503 only before start-up completes, so a load balancer keeps sending traffic."""
        checks: dict[str, Any] = {"started": self.ready}
        try:
            async with asyncio.timeout(2.0), self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # Any driver error or a timeout means "unavailable"; say which.
            checks["database"] = f"unavailable: {type(exc).__name__}"
        checks["ledger"] = {"healthy": self.ledger.healthy, "lag": self.ledger.lag}
        checks["limits"] = "ok" if self.limiter.healthy else "degraded: Redis unreachable, counting per replica"
        degraded = checks["database"] != "ok" or not self.ledger.healthy or not self.limiter.healthy
        status = "not ready" if not self.ready else ("degraded" if degraded else "ready")
        await send_json(send, 200 if self.ready else 503, {"status": status, "checks": checks})

    async def metrics_page(self, send: Send) -> None:
        await send_bytes(send, 200, self.metrics.render(), CONTENT_TYPE.encode())


def create_app(settings: Settings, policy: Policy) -> Tollgate:
    return Tollgate(settings, policy)
