"""Counters in Redis, shared by every gateway replica: one Lua script call per admission and per settle.

Each script runs atomically on the server, so check-then-add cannot interleave across replicas: with N replicas
admitting against an rpm of 100, exactly 100 get in. Values are integers (requests, tokens, nano-dollars) changed
with INCRBY; Lua reads them as doubles, exact below 2**53 (nine million dollars in nano-dollars per period).

All keys of one call go to one script, so a Redis Cluster would need them in one hash slot: give the prefix a hash
tag (`{tollgate}:`) there. Redis must not evict these keys (`maxmemory-policy noeviction`, the default): an evicted
spend counter next to a live seed marker would read as zero.

Every Redis or socket failure leaves this module as `CountersUnavailable`, the one exception the limiter handles.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.accounting.counters import ADMITTED, Adjustment, Check, CountersUnavailable, Outcome

# One script applies the adjustments of requests settled since the last call, then checks and reserves for a new
# request: one round trip per request however it is used (settle alone sends no checks).
#
# KEYS: the checks' counters, then the adjustments' counters, then the seed markers they refer to.
# ARGV[1]: per check "kind limit amount ttl marker": kind r(ate) / s(pend), marker the index in KEYS (0: none).
# ARGV[2]: per adjustment "kind amount ttl marker": kind j (adjust: only if it exists) / a(dd) / s(pend).
# Each is one space-separated string: redis-py encodes every argument on its own, and with five per check that
# encoding was most of the client's CPU per call.
# Reply: {status, count, unsettled adjustment indices..., then per status}: 0 admitted; 1 denied, followed by
# (check index, value) pairs; 2 unseeded, followed by the check index. Indices are 0-based.
_ADMIT = """
local function split(packed)
  local words = {}
  for word in string.gmatch(packed, '%S+') do
    words[#words + 1] = word
  end
  return words
end
local checks, adjust = split(ARGV[1]), split(ARGV[2])
local n, m = #checks / 5, #adjust / 4
-- A spend counter's period counts as seeded only when its marker (an index into KEYS, 0: none) exists.
local function seeded(index)
  index = tonumber(index)
  return index > 0 and redis.call('EXISTS', KEYS[index]) == 1
end

local unsettled = {}
for j = 1, m do
  local b = (j - 1) * 4
  local key, kind = KEYS[n + j], adjust[b + 1]
  if redis.call('EXISTS', key) == 1 then
    redis.call('INCRBY', key, adjust[b + 2])
  elseif kind == 'a' or (kind == 's' and seeded(adjust[b + 4])) then
    redis.call('SET', key, adjust[b + 2], 'EX', adjust[b + 3])
  elseif kind == 's' then
    unsettled[#unsettled + 1] = j - 1
  end
end
local function reply(status, rest)
  local out = {status, #unsettled}
  for _, v in ipairs(unsettled) do out[#out + 1] = v end
  for _, v in ipairs(rest) do out[#out + 1] = v end
  return out
end

local denied = {}
local fresh = {}
for i = 1, n do
  local b = (i - 1) * 5
  local raw = redis.call('GET', KEYS[i])
  local limit = tonumber(checks[b + 2])
  if checks[b + 1] == 'r' then
    local value = tonumber(raw or '0')
    fresh[i] = not raw
    if value + tonumber(checks[b + 3]) > limit then
      denied[#denied + 1] = i - 1
      denied[#denied + 1] = value
    end
  else
    if not raw then
      if not seeded(checks[b + 5]) then
        return reply(2, {i - 1})
      end
      redis.call('SET', KEYS[i], 0, 'EX', checks[b + 4])
      raw = '0'
    end
    local value = tonumber(raw)
    if value >= limit then
      denied[#denied + 1] = i - 1
      denied[#denied + 1] = value
    end
  end
end
if #denied > 0 then
  return reply(1, denied)
end
for i = 1, n do
  local b = (i - 1) * 5
  if checks[b + 1] == 'r' then
    redis.call('INCRBY', KEYS[i], checks[b + 3])
    if fresh[i] then
      redis.call('EXPIRE', KEYS[i], checks[b + 4])
    end
  end
end
return reply(0, {})
"""

# KEYS[1] the seed marker, then counters; ARGV[1] ttl, ARGV[2] "1" to set the marker, then one value per counter.
# Raises, never adds: a live counter already holds everything the ledger knows, and usually more.
_SEED = """
for i = 2, #KEYS do
  local raw = redis.call('GET', KEYS[i])
  if not raw then
    redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ARGV[1])
  elseif tonumber(raw) < tonumber(ARGV[i + 1]) then
    redis.call('SET', KEYS[i], ARGV[i + 1], 'KEEPTTL')
  end
end
if ARGV[2] == '1' then
  redis.call('SET', KEYS[1], 1, 'EX', ARGV[1])
end
return 0
"""

_ADJUST_CODES = {"adjust": "j", "add": "a", "spend": "s"}
# Keeps one script call's argument list (and its time holding Redis) small when a period has many owners.
_SEED_CHUNK = 500


@contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise CountersUnavailable(f"{type(exc).__name__}: {exc}") from exc


class RedisCounters:
    def __init__(self, client: redis.Redis, prefix: str = "tollgate:") -> None:
        self.client = client
        self.prefix = prefix
        self._admit: Callable[..., Awaitable[Any]] = client.register_script(_ADMIT)
        self._seed: Callable[..., Awaitable[Any]] = client.register_script(_SEED)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "tollgate:", timeout: float = 0.5) -> RedisCounters:
        # One immediate retry rides over a pooled connection that died with a Redis restart; more would only
        # hold the request while the limiter could already be answering from in-process counters.
        client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 1)
        )
        return cls(client, prefix)

    async def ping(self) -> None:
        with _unavailable():
            await self.client.ping()

    async def close(self) -> None:
        with _unavailable():
            await self.client.aclose()

    async def admit(self, checks: Sequence[Check], adjustments: Sequence[Adjustment] = ()) -> Outcome:
        prefix = self.prefix
        keys = [prefix + c.key for c in checks] + [prefix + a.key for a in adjustments]
        markers: dict[str, int] = {}

        def marker_index(marker: str | None) -> int:
            if marker is None:
                return 0
            index = markers.get(marker)
            if index is None:
                keys.append(prefix + marker)
                index = markers[marker] = len(keys)  # Lua's KEYS is 1-based
            return index

        packed_checks = " ".join(
            f"{'r' if c.is_rate else 's'} {c.limit} {c.amount} {c.ttl} {marker_index(c.marker)}" for c in checks
        )
        packed_adjustments = " ".join(
            f"{_ADJUST_CODES[a.kind]} {a.amount} {a.ttl} {marker_index(a.marker)}" for a in adjustments
        )
        with _unavailable():
            reply = await self._admit(keys=keys, args=[packed_checks, packed_adjustments])
        status, count = reply[0], reply[1]
        unsettled = tuple(int(i) for i in reply[2 : 2 + count])
        rest = reply[2 + count :]
        if status == 0:
            return Outcome(unsettled=unsettled) if unsettled else ADMITTED
        if status == 2:
            return Outcome(unseeded=int(rest[0]), unsettled=unsettled)
        denied = tuple((int(rest[i]), int(rest[i + 1])) for i in range(0, len(rest), 2))
        return Outcome(denied=denied, unsettled=unsettled)

    async def settle(self, adjustments: Sequence[Adjustment]) -> tuple[int, ...]:
        return (await self.admit((), adjustments)).unsettled

    async def seed(self, marker: str, values: Mapping[str, int], ttl: int) -> None:
        items = list(values.items())
        # The marker goes with the last chunk: set earlier, it would vouch for counters not yet raised.
        chunks = [items[i : i + _SEED_CHUNK] for i in range(0, len(items), _SEED_CHUNK)] or [[]]
        with _unavailable():
            for n, chunk in enumerate(chunks):
                keys = [self.prefix + marker] + [self.prefix + key for key, _ in chunk]
                last = "1" if n == len(chunks) - 1 else "0"
                await self._seed(keys=keys, args=[max(ttl, 1), last, *(value for _, value in chunk)])
