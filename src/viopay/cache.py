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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

import redis
import redis.asyncio as aioredis
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from viopay import __version__
from viopay.errors import ServerBusy, ServiceUnavailable
from viopay.metrics import count_roundtrip

T = TypeVar("T")


@dataclass(frozen=True)
class Window:
    """A sliding window: at most ``limit`` events in ``seconds``."""

    key: str
    limit: int
    seconds: float


@dataclass(frozen=True)
class Reservation:
    """What :meth:`Cache.window_reserve` answered: ``wait`` is 0 when the event was counted
    (under ``member`` in every window), else the seconds until the full window has room."""

    wait: float
    member: str
    keys: tuple[str, ...]


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

    async def window_reserve(self, windows: Sequence[Window], *, now: float) -> Reservation:
        """Count one event in every window at once, unless one of them is at its limit (then
        none is counted): check and count are one atomic step, so N racing callers are
        answered as if they had come one after another. For limits on failures (failed claims,
        failed sign-ins): reserve before trying, :meth:`window_release` when it succeeded."""
        ...

    async def window_release(self, reservation: Reservation) -> None:
        """Take back a counted reservation (the attempt did not fail)."""
        ...

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

    def _wait(self, key: str, limit: int, window: float, now: float) -> float:
        events = self._window(key, window, now)
        return 0.0 if len(events) < limit else events[0] + window - now

    # No await between check and count below: on the event loop, each runs as one step.

    async def window_hit(self, key: str, *, limit: int, window: float, now: float) -> float:
        wait = self._wait(key, limit, window, now)
        if wait == 0.0:
            self._windows[key].append(now)
        return wait

    async def window_reserve(self, windows: Sequence[Window], *, now: float) -> Reservation:
        keys = tuple(w.key for w in windows)
        wait = max((self._wait(w.key, w.limit, w.seconds, now) for w in windows), default=0.0)
        if wait > 0.0:
            return Reservation(wait, "", keys)
        for key in keys:
            self._windows[key].append(now)
        return Reservation(0.0, repr(now), keys)

    async def window_release(self, reservation: Reservation) -> None:
        if reservation.wait > 0.0:
            return
        moment = float(reservation.member)
        for key in reservation.keys:
            events = self._windows.get(key)
            if events is not None and moment in events:
                events.remove(moment)

    async def close(self) -> None:
        self._values.clear()
        self._windows.clear()


# Sliding windows are sorted sets scored by time; each script runs atomically in Redis.
_WINDOW_HIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1] - ARGV[2])
local n = redis.call('ZCARD', KEYS[1])
if n < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.ceil(ARGV[2] * 1000))
  return '0'
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tostring(oldest[2] + ARGV[2] - ARGV[1])
"""


# Every window of KEYS (limit ARGV[1 + 2i], seconds ARGV[2 + 2i]): trim; if one is at its limit,
# answer the longest wait and count nothing; else count ARGV[2] at ARGV[1] in all of them.
_WINDOW_RESERVE = """
local now, member = tonumber(ARGV[1]), ARGV[2]
local wait = 0
for i, key in ipairs(KEYS) do
  local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= limit then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    wait = math.max(wait, oldest[2] + window - now)
  end
end
if wait > 0 then
  return tostring(wait)
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, math.ceil(tonumber(ARGV[2 + 2 * i]) * 1000))
end
return '0'
"""


#: How long a command waits for a free connection of the process's pool before 503 (as long as
#: a request waits for a database connection).
POOL_WAIT_SECONDS = 10.0

#: What our connections tell Redis they are (``CLIENT SETINFO``; ``CLIENT LIST`` shows
#: ``lib-name=redis-py(viopay_v…)``), built once. Left to redis-py, every new connection of the
#: pool looks up the package's version in the installed distributions (``importlib.metadata``,
#: a scan of ``sys.path`` on the event loop): a burst that grew the pool stalled every request
#: of the process, 35 ms at a time on a busy machine (docs/benchmarks.md, 2026-12-05 evening).
DRIVER_INFO = DriverInfo(lib_version=redis.__version__).add_upstream_driver("viopay", __version__)


class RedisCache:
    """Redis-backed cache shared by every server process.

    Its connections are a bounded pool that commands wait for (``pool_size`` per process, up to
    :data:`POOL_WAIT_SECONDS`): a burst queues for a connection instead of opening one per
    request, and redis-py's default pool, which refuses a command past 100 connections at once
    (``MaxConnectionsError``), turned a burst into 503s with Redis idle."""

    def __init__(self, url: str, *, prefix: str, pool_size: int = 50) -> None:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=POOL_WAIT_SECONDS,
            socket_timeout=2,
            socket_connect_timeout=2,
            health_check_interval=30,
            driver_info=DRIVER_INFO,
        )
        self._redis = aioredis.Redis.from_pool(pool)  # closing the client closes the pool
        self._prefix = prefix
        self._window_script = self._redis.register_script(_WINDOW_HIT)
        self._reserve_script = self._redis.register_script(_WINDOW_RESERVE)

    async def _call(self, op: Awaitable[T]) -> T:
        count_roundtrip()
        try:
            return await op
        except (RedisError, OSError) as exc:
            if isinstance(exc, RedisConnectionError) and isinstance(exc.__cause__, TimeoutError):
                # the pool's wait for a free connection, not Redis failing to answer
                raise ServerBusy("no cache connection came free in time") from exc
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

    async def window_hit(self, key: str, *, limit: int, window: float, now: float) -> float:
        member = f"{now:.6f}:{secrets.token_hex(4)}"
        result = await self._call(
            self._window_script(keys=[self._k(key)], args=[now, window, limit, member])
        )
        return max(0.0, float(result))

    async def window_reserve(self, windows: Sequence[Window], *, now: float) -> Reservation:
        member = f"{now:.6f}:{secrets.token_hex(8)}"
        args: list[str | float | int] = [now, member]
        for w in windows:
            args += [w.limit, w.seconds]
        result = await self._call(
            self._reserve_script(keys=[self._k(w.key) for w in windows], args=args)
        )
        return Reservation(max(0.0, float(result)), member, tuple(w.key for w in windows))

    async def window_release(self, reservation: Reservation) -> None:
        if reservation.wait > 0.0:
            return
        pipe = self._redis.pipeline(transaction=True)
        for key in reservation.keys:
            pipe.zrem(self._k(key), reservation.member)
        await self._call(pipe.execute())

    async def close(self) -> None:
        await self._redis.aclose()
