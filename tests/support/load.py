"""Concurrent client load on a gateway, remembering which responses each client received in full.

Workers are threads with their own httpx client, cycling through a list of request bodies (JSON and streamed). A
response counts as *complete* when the client got all of it: a 200 whose JSON body parsed, or a 200 stream that
ended with `data: [DONE]`. Its `x-request-id` is kept either way, so a test can match responses with ledger records.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Outcome:
    request_id: str | None  # None when no response headers arrived
    status: int | None
    stream: bool
    complete: bool
    error: str | None = None


class Load:
    def __init__(
        self,
        base_url: str,
        key: str,
        bodies: Sequence[dict[str, Any]],
        *,
        workers: int = 8,
        max_requests: int = 2000,
        pause: float = 0.0,
        stop_on_error: bool = False,
    ) -> None:
        self.base_url = base_url
        self.key = key
        self.bodies = list(bodies)
        self.max_requests = max_requests
        self.pause = pause
        self.stop_on_error = stop_on_error
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._started = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(workers)]

    # -- control ----------------------------------------------------------------------------------------------

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        assert not any(t.is_alive() for t in self._threads), "a load worker did not stop"

    def wait_for_complete(self, count: int, timeout: float = 30.0) -> None:
        """Until `count` more responses than now have been received in full."""
        target = self.complete_count() + count
        deadline = time.monotonic() + timeout
        while self.complete_count() < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.complete_count()} of {target} responses after {timeout}s")
            if not any(t.is_alive() for t in self._threads):
                raise AssertionError(f"the load ended after {self.complete_count()} of {target} responses")
            time.sleep(0.005)

    # -- results ----------------------------------------------------------------------------------------------

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def complete_count(self) -> int:
        with self._lock:
            return sum(o.complete for o in self.outcomes)

    def complete_ids(self) -> list[str]:
        return [o.request_id for o in self.snapshot() if o.complete and o.request_id is not None]

    # -- workers ----------------------------------------------------------------------------------------------

    def _next(self) -> int | None:
        with self._lock:
            if self._stop.is_set() or self._started >= self.max_requests:
                return None
            self._started += 1
            return self._started

    def _work(self, worker: int) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=15) as client:
            while (n := self._next()) is not None:
                body = self.bodies[(n + worker) % len(self.bodies)]
                outcome = self._one(client, body)
                with self._lock:
                    self.outcomes.append(outcome)
                if outcome.error is not None and self.stop_on_error:
                    return
                if self.pause:
                    time.sleep(self.pause)

    @staticmethod
    def _one(client: httpx.Client, body: dict[str, Any]) -> Outcome:
        stream = bool(body.get("stream"))
        request_id: str | None = None
        status: int | None = None
        try:
            if stream:
                with client.stream("POST", "/chat/completions", json=body) as response:
                    request_id, status = response.headers.get("x-request-id"), response.status_code
                    data = b"".join(response.iter_bytes())
                complete = status == 200 and data.endswith(DONE)
            else:
                response = client.post("/chat/completions", json=body)
                request_id, status = response.headers.get("x-request-id"), response.status_code
                complete = status == 200 and isinstance(orjson.loads(response.content).get("choices"), list)
        except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
            return Outcome(request_id, status, stream, False, f"{type(exc).__name__}: {exc}")
        return Outcome(request_id, status, stream, complete)
