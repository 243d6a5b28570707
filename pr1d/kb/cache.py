"""Caches for heavy knowledge-base reads: `LRUCache` (in-process default), `RedisCache`, and `ResilientCache`.

Values are bytes under content-hash keys (`content_key`): an embedding is keyed by the model and the
text, a query result by the store, its generation, the question and the retrieval settings, so a key
never goes stale by itself; a TTL bounds how long anything lingers.

Callers hold a `ResilientCache`. It counts hits, misses and errors (the dataset builder reports them
to measure the rebuild-with-cache speed-up) and, when Redis fails in the middle of a build -- killed,
restarted, network gone -- logs one warning and carries on with its in-process LRU for the rest of
the process. A cache can make a build faster; it must never make it fail.

redis-py is imported only when a `RedisCache` is made; this module is safe for the daemon to import.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

# Every key pr1 writes into a shared Redis starts with this, so it never collides with other users.
KEY_PREFIX = "pr1:kb:"


def content_key(kind: str, *parts: str) -> str:
    """`kind:sha256(parts)`: a fixed-size key for arbitrary content (the unit separator keeps parts apart)."""
    h = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return f"{kind}:{h}"


@runtime_checkable
class Cache(Protocol):
    """A bytes cache. Implementations raise on backend failure; `ResilientCache` turns that into degradation.

    `ttl_s=None` means the cache's default TTL; `ttl_s=0` means the entry never expires.
    """

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None: ...

    def close(self) -> None: ...


class LRUCache:
    """Thread-safe in-process LRU with a per-entry TTL. `max_items=0` stores nothing."""

    backend = "lru"

    def __init__(self, max_items: int = 20_000, ttl_s: float | None = None, clock=time.monotonic):
        self.max_items = max_items
        self.ttl_s = ttl_s
        self._clock = clock
        self._data: OrderedDict[str, tuple[float | None, bytes]] = OrderedDict()
        self._lock = threading.Lock()  # the embedder may run in a worker thread

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            expires, value = item
            if expires is not None and self._clock() >= expires:
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return value

    def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        if self.max_items <= 0:
            return
        ttl = ttl_s if ttl_s is not None else self.ttl_s
        expires = self._clock() + ttl if ttl else None
        with self._lock:
            self._data[key] = (expires, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_items:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def close(self) -> None:
        with self._lock:
            self._data.clear()


class RedisCache:
    """Redis via redis-py with short timeouts and no retries: failures surface at once, as exceptions."""

    backend = "redis"

    def __init__(self, url: str, *, ttl_s: float | None = None, timeout_s: float = 0.5, prefix: str = KEY_PREFIX):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = url
        self.ttl_s = ttl_s
        self.prefix = prefix
        # redis-py retries and backs off by default; here a dead Redis should cost one short timeout,
        # after which ResilientCache stops asking it.
        self._r = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )

    def ping(self) -> bool:
        return bool(self._r.ping())

    def get(self, key: str) -> bytes | None:
        return self._r.get(self.prefix + key)

    def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        ttl = ttl_s if ttl_s is not None else self.ttl_s
        self._r.set(self.prefix + key, value, ex=int(ttl) if ttl else None)

    def close(self) -> None:
        self._r.close()


@dataclass
class CacheStats:
    """Counters for reports and metrics: hits/misses per lookup, errors from the primary backend."""

    backend: str
    hits: int = 0
    misses: int = 0
    sets: int = 0
    errors: int = 0
    degraded: bool = False

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"hit_rate": round(self.hit_rate, 4)}


class ResilientCache:
    """The cache callers use: counts, and survives its primary backend dying (warns once, then LRU).

    `primary` is the configured backend (a `RedisCache`, or an `LRUCache` when there is no Redis);
    `fallback` takes over after the primary's first error (by default a fresh LRU of `lru_size`).
    """

    def __init__(self, primary: Cache, *, fallback: Cache | None = None, ttl_s: float | None = None):
        self.primary = primary
        self.fallback = fallback
        self.ttl_s = ttl_s
        self._active: Cache | None = primary
        self.stats = CacheStats(backend=getattr(primary, "backend", type(primary).__name__))
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        """The backend in use now: the primary's, or `<fallback> (degraded)`."""
        if not self.stats.degraded:
            return self.stats.backend
        return f"{getattr(self._active, 'backend', 'none')} (degraded)"

    def _degrade(self, op: str, err: BaseException) -> None:
        with self._lock:
            self.stats.errors += 1
            if self.stats.degraded:
                return
            self.stats.degraded = True
            self._active = self.fallback
        where = getattr(self.primary, "url", self.stats.backend)
        from .discovery import redact_url

        log.warning(
            "cache %s failed on %s (%s: %s); continuing with %s for the rest of this process",
            redact_url(str(where)), op, type(err).__name__, err,
            "the in-process LRU" if self.fallback is not None else "no cache",
        )

    def get(self, key: str, *, count: bool = True) -> bytes | None:
        """The cached value or None. `count=False` keeps bookkeeping reads out of the hit/miss counters."""
        active = self._active
        value = None
        if active is not None:
            try:
                value = active.get(key)
            except Exception as e:  # any backend failure: the redis-py, socket and protocol errors alike
                if active is not self.primary:
                    raise
                self._degrade("get", e)
                return self.get(key, count=count)
        if not count:
            return value
        if value is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return value

    def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        active = self._active
        if active is None:
            return
        try:
            active.set(key, value, ttl_s if ttl_s is not None else self.ttl_s)
            self.stats.sets += 1
        except Exception as e:
            if active is not self.primary:
                raise
            self._degrade("set", e)
            self.set(key, value, ttl_s)

    def close(self) -> None:
        for c in (self.primary, self.fallback):
            if c is not None:
                try:
                    c.close()
                except Exception:  # closing a dead Redis connection may raise; nothing to do about it
                    pass


def make_cache(redis_url: str | None, *, ttl_s: float | None, lru_size: int, timeout_s: float = 0.5) -> ResilientCache:
    """The build's cache: Redis (with an LRU to fall back on) when a URL is given, else the LRU alone.

    A Redis that is unreachable at start-up degrades right away (with the warning), like one that dies later.
    """
    if not redis_url:
        return ResilientCache(LRUCache(lru_size, ttl_s), ttl_s=ttl_s)
    cache = ResilientCache(RedisCache(redis_url, ttl_s=ttl_s, timeout_s=timeout_s),
                           fallback=LRUCache(lru_size, ttl_s), ttl_s=ttl_s)
    try:
        cache.primary.ping()  # type: ignore[attr-defined]
    except Exception as e:
        cache._degrade("connect", e)
    return cache
