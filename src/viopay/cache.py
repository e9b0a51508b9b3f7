"""The cache: Redis in production, an in-process store on the embedded default.

Both sit behind :class:`Cache`. Everything that needs to hold across server processes (nonces,
attestation tokens, rate limits, merchant sessions) goes through it. A Redis failure raises
:class:`~viopay.errors.ServiceUnavailable`: the server fails closed.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar, runtime_checkable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from viopay.errors import ServiceUnavailable
from viopay.metrics import count_roundtrip

T = TypeVar("T")


@runtime_checkable
class Cache(Protocol):
    async def ping(self) -> None: ...
    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, *, ttl: float) -> None: ...
    async def set_nx(self, key: str, value: bytes, *, ttl: float) -> bool:
        """Store only if absent; True when stored. The replay guard."""
        ...

    async def delete(self, *keys: str) -> None: ...
    async def window_hit(self, key: str, *, limit: int, window: float, now: float) -> float:
        """Count one event in a sliding window unless ``limit`` is reached.

        Returns 0 when counted, else the seconds until the oldest event leaves the window.
        """
        ...

    async def window_check(self, key: str, *, limit: int, window: float, now: float) -> float:
        """Like :meth:`window_hit` without counting: 0 when under the limit."""
        ...

    async def window_add(self, key: str, *, window: float, now: float) -> None: ...
    async def close(self) -> None: ...


class MemoryCache:
    """In-process cache for the embedded default (one server process)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._values: dict[str, tuple[bytes, float]] = {}
        self._windows: dict[str, deque[float]] = {}
        self._clock = clock
        self._lock = asyncio.Lock()

    def _live(self, key: str) -> bytes | None:
        item = self._values.get(key)
        if item is None:
            return None
        if item[1] <= self._clock():
            del self._values[key]
            return None
        return item[0]

    def _sweep(self) -> None:
        if len(self._values) > 10_000:
            now = self._clock()
            for key in [k for k, (_, exp) in self._values.items() if exp <= now]:
                del self._values[key]

    async def ping(self) -> None:
        return None

    async def get(self, key: str) -> bytes | None:
        return self._live(key)

    async def set(self, key: str, value: bytes, *, ttl: float) -> None:
        self._sweep()
        self._values[key] = (value, self._clock() + ttl)

    async def set_nx(self, key: str, value: bytes, *, ttl: float) -> bool:
        if self._live(key) is not None:
            return False
        await self.set(key, value, ttl=ttl)
        return True

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self._values.pop(key, None)

    def _window(self, key: str, window: float, now: float) -> deque[float]:
        events = self._windows.setdefault(key, deque())
        while events and events[0] <= now - window:
            events.popleft()
        return events

    async def window_check(self, key: str, *, limit: int, window: float, now: float) -> float:
        events = self._window(key, window, now)
        return 0.0 if len(events) < limit else events[0] + window - now

    async def window_hit(self, key: str, *, limit: int, window: float, now: float) -> float:
        wait = await self.window_check(key, limit=limit, window=window, now=now)
        if wait == 0.0:
            self._windows[key].append(now)
        return wait

    async def window_add(self, key: str, *, window: float, now: float) -> None:
        self._window(key, window, now).append(now)

    async def close(self) -> None:
        self._values.clear()
        self._windows.clear()


# Sliding windows are sorted sets scored by time; each script runs atomically in Redis.
_WINDOW_CHECK = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1] - ARGV[2])
local n = redis.call('ZCARD', KEYS[1])
if n < tonumber(ARGV[3]) then
  if ARGV[4] == '1' then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[5])
    redis.call('PEXPIRE', KEYS[1], math.ceil(ARGV[2] * 1000))
  end
  return '0'
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tostring(oldest[2] + ARGV[2] - ARGV[1])
"""


class RedisCache:
    """Redis-backed cache shared by every server process."""

    def __init__(self, url: str, *, prefix: str) -> None:
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30
        )
        self._prefix = prefix
        self._window_script = self._redis.register_script(_WINDOW_CHECK)

    async def _call(self, op: Awaitable[T]) -> T:
        count_roundtrip()
        try:
            return await op
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable("the cache is unreachable") from exc

    def _k(self, key: str) -> str:
        return self._prefix + key

    async def ping(self) -> None:
        await self._call(self._redis.ping())

    async def get(self, key: str) -> bytes | None:
        value = await self._call(self._redis.get(self._k(key)))
        return value.encode() if isinstance(value, str) else value

    async def set(self, key: str, value: bytes, *, ttl: float) -> None:
        await self._call(self._redis.set(self._k(key), value, px=max(1, math.ceil(ttl * 1000))))

    async def set_nx(self, key: str, value: bytes, *, ttl: float) -> bool:
        stored = await self._call(
            self._redis.set(self._k(key), value, px=max(1, math.ceil(ttl * 1000)), nx=True)
        )
        return bool(stored)

    async def delete(self, *keys: str) -> None:
        if keys:
            await self._call(self._redis.delete(*(self._k(k) for k in keys)))

    async def _window(self, key: str, limit: int, window: float, now: float, add: bool) -> float:
        member = f"{now:.6f}:{secrets.token_hex(4)}"
        result = await self._call(
            self._window_script(
                keys=[self._k(key)], args=[now, window, limit, "1" if add else "0", member]
            )
        )
        return max(0.0, float(result))

    async def window_check(self, key: str, *, limit: int, window: float, now: float) -> float:
        return await self._window(key, limit, window, now, add=False)

    async def window_hit(self, key: str, *, limit: int, window: float, now: float) -> float:
        return await self._window(key, limit, window, now, add=True)

    async def window_add(self, key: str, *, window: float, now: float) -> None:
        await self._window(key, 2**31, window, now, add=True)

    async def close(self) -> None:
        await self._redis.aclose()
