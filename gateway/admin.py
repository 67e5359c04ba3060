"""Key management over HTTP for the admin key: create, list and revoke virtual keys."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qs

from gateway.exceptions import InvalidRequest, NotFound
from gateway.keys.store import KeyCache, KeyStore, VirtualKey
from gateway.protocol.validation import parse_json_object
from gateway.requests import read_body
from gateway.responses import send_json
from gateway.types import Receive, Scope, Send

MAX_ADMIN_BODY = 64 * 1024


def key_view(record: VirtualKey) -> dict[str, Any]:
    return {
        "id": record.id,
        "team": record.team,
        "name": record.name,
        "display": record.display,
        "budget_usd": str(record.budget_usd) if record.budget_usd is not None else None,
        "created_at": record.created_at.isoformat(),
        "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
    }


def parse_budget(value: Any, param: str = "budget_usd") -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidRequest(f"'{param}' must be a number of US dollars.", param=param)
    try:
        # Through str(): a float like 0.1 must become Decimal("0.1"), not its binary expansion.
        budget = Decimal(str(value))
    except InvalidOperation:
        raise InvalidRequest(f"'{param}' must be a number of US dollars.", param=param) from None
    if not budget.is_finite() or budget < 0:
        raise InvalidRequest(f"'{param}' must be zero or more.", param=param)
    return budget


def valid_team(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise InvalidRequest("'team' is required: a name of 1 to 200 characters.", param="team")
    return value.strip()


class KeyAdmin:
    def __init__(self, store: KeyStore, cache: KeyCache) -> None:
        self.store = store
        self.cache = cache

    async def create(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = parse_json_object(await read_body(receive, MAX_ADMIN_BODY))
        unknown = set(body) - {"team", "name", "budget_usd"}
        if unknown:
            field = sorted(unknown)[0]
            raise InvalidRequest(f"Unknown field '{field}'.", param=field)
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > 200):
            raise InvalidRequest("'name' must be a string of at most 200 characters.", param="name")
        key, record = await self.store.create(
            valid_team(body.get("team")), name=name, budget_usd=parse_budget(body.get("budget_usd"))
        )
        await send_json(send, 201, {**key_view(record), "key": key})

    async def list(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        team = query.get("team", [None])[0]
        include_revoked = query.get("include_revoked", ["false"])[0].lower() in ("1", "true", "yes")
        records = await self.store.list(team=team, include_revoked=include_revoked)
        await send_json(send, 200, {"object": "list", "data": [key_view(r) for r in records]})

    async def revoke(self, key_id: str, scope: Scope, receive: Receive, send: Send) -> None:
        if not await self.store.revoke(key_id):
            raise NotFound(f"No active key with id '{key_id}'.", param="id")
        self.cache.forget(key_id)
        record = await self.store.get(key_id)
        assert record is not None
        await send_json(send, 200, key_view(record))
