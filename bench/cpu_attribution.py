"""Where a proxied request's CPU goes: drives the ASGI app in-process (no uvicorn, no wrk) against the bench's fake
upstream with 32 concurrent calls, with parts switched off, and prints CPU µs per request for each variant.

    nginx -p /tmp/bench/nginx -c ../shared/bench/fake_upstream.conf   # the fake upstream on 127.0.0.1:18080
    taskset -c 1 .venv/bin/python bench/cpu_attribution.py full noledger nofinish

Variants: `full`; `noledger` (no journal write and no database rows); `nofinish` (no usage record, no metrics, no
ledger). Figures are noisy (±40 µs on this machine): run each twice.
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from gateway.app import create_app
from gateway.exchange import Exchange
from gateway.policy import parse_policy
from gateway.settings import settings_from_env

BODY = (
    b'{"model":"bench-plain","messages":[{"role":"system","content":"You are a helpful assistant."},'
    b'{"role":"user","content":"Explain in two sentences what a gateway proxy does."}],"max_tokens":64}'
)
ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(variant: str, bursts: int = 150, concurrency: int = 32) -> float:
    data = Path(tempfile.mkdtemp(prefix="tollgate-attrib-"))
    env = {"BENCH_UPSTREAM": "http://127.0.0.1:18080"}
    settings = settings_from_env(env).with_overrides(data_dir=data)
    policy = parse_policy(yaml.safe_load((ROOT / "bench/policy.yaml").read_text()), "bench/policy.yaml", env)
    app = create_app(settings, policy)
    await app.startup()
    if variant == "noledger":
        app.ledger.record = lambda record: None  # type: ignore[method-assign]
    elif variant == "nofinish":

        def finish(exchange: Exchange) -> None:
            exchange.recorded = True

        app.proxy.finish = finish  # type: ignore[method-assign]
    key, _ = await app.keys.create("bench")
    headers = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers, "query_string": b""}

    async def one() -> None:
        messages = [{"type": "http.request", "body": BODY, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            return None

        await app(dict(scope), receive, send)

    for _ in range(20):  # warm-up: pools, caches, the price map
        await asyncio.gather(*(one() for _ in range(concurrency)))
    start = cpu_seconds()
    for _ in range(bursts):
        await asyncio.gather(*(one() for _ in range(concurrency)))
    # The rows written in the background are part of each request's cost: wait for them.
    await asyncio.wait_for(app.ledger.flush(), 60)
    spent = cpu_seconds() - start
    await app.shutdown()
    shutil.rmtree(data, ignore_errors=True)
    return spent / (bursts * concurrency) * 1e6


async def main(variants: list[str]) -> None:
    for variant in variants:
        print(f"{variant:10s} {await measure(variant):6.0f} µs CPU per request")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or ["full", "noledger", "nofinish"]))
