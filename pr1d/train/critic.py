"""The critic client: batched `POST /v1/critic/verify` with a content-hash cache (Redis or LRU); never raises.

GRPO asks the platform's critic whether each completion's final answer is right, once per training
step and for a whole batch at once. Three things shape this client:

* **One request per call.** The items of a call that the cache does not know are de-duplicated
  (a GRPO group often reaches the same answer several times) and sent as one POST, split into
  requests of at most :data:`MAX_BATCH` items (the platform's limit).
* **A cache by content hash.** ``sha256(question \\0 normalised answer)``: the same question answered
  ``"$1,234."`` or ``"1234"`` is one critic call, for the whole run and, with Redis, across runs and
  workers. The cache is :class:`pr1d.kb.cache.ResilientCache` (the knowledge base's, with its
  connection conventions): Redis when a URL is configured, an in-process LRU otherwise, and an LRU
  to fall back on when Redis dies mid-run.
* **An outage is an answer, not an exception.** Unreachable, timed out, 4xx/5xx, malformed JSON or
  a reply of the wrong shape: the uncached items come back as None, :attr:`CriticClient.last_error`
  says why, the counters say how often, and the trainer goes on. After a failure the client does not
  call again for ``cooldown_s`` seconds, so a dead critic costs one timeout, not one per step.

No torch here; ``httpx`` and (when configured) ``redis`` only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import httpx

from pr1d.data.parallel_format import clean_answer, normalize_number
from pr1d.kb.cache import LRUCache, RedisCache, ResilientCache

__all__ = ["CACHE_PREFIX", "MAX_BATCH", "CriticClient", "CriticResult", "CriticStats", "critic_key", "make_critic_cache"]

log = logging.getLogger(__name__)

# The platform refuses more than this many items per request (docs/scoring-api.md).
MAX_BATCH = 1000
# Keys in a shared Redis: apart from the knowledge base's "pr1:kb:" keys, and versioned so that a
# change of the key recipe never reads old entries.
CACHE_PREFIX = "pr1:critic:v1:"


@dataclass(frozen=True)
class CriticResult:
    """The critic's verdict on one (question, answer): agrees or not, and how confident it is."""

    agree: bool
    confidence: float
    cached: bool = False  # served from the cache (no request made for it)


@dataclass
class CriticStats:
    """Counters, per item unless named otherwise; the trainer reports them as metrics.

    ``hits``/``misses``: cache lookups; ``requested``: distinct items sent to the critic;
    ``unavailable``: items answered None because the critic failed; ``requests``/``failures``: HTTP
    calls made and failed; ``skipped_calls``: calls answered None without trying (cool-down).
    """

    hits: int = 0
    misses: int = 0
    requested: int = 0
    unavailable: int = 0
    requests: int = 0
    failures: int = 0
    skipped_calls: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _normalised_answer(answer: str) -> str:
    """The answer as the critic judges it: a canonical number when it is one, else the cleaned text."""
    number = normalize_number(answer)
    return number if number is not None else clean_answer(answer)


def critic_key(question: str, answer: str) -> str:
    """The cache key of one item: ``sha256(question \\0 normalised answer)`` in hex."""
    return hashlib.sha256(f"{question.strip()}\0{_normalised_answer(answer)}".encode()).hexdigest()


def make_critic_cache(redis_url: str = "", *, lru_size: int = 100_000, ttl_s: float | None = None,
                      timeout_s: float = 0.5) -> ResilientCache:
    """Redis (with an LRU to fall back on) when ``redis_url`` is set, else an in-process LRU.

    A Redis that does not answer at start-up degrades to the LRU at once, with one warning, exactly
    as the knowledge-base cache does: a cache may make training cheaper, never make it fail.
    """
    if not redis_url:
        return ResilientCache(LRUCache(lru_size, ttl_s), ttl_s=ttl_s)
    cache = ResilientCache(
        RedisCache(redis_url, ttl_s=ttl_s, timeout_s=timeout_s, prefix=CACHE_PREFIX),
        fallback=LRUCache(lru_size, ttl_s),
        ttl_s=ttl_s,
    )
    try:
        cache.primary.ping()  # type: ignore[attr-defined]
    except Exception as e:  # any redis-py/socket error: degrade now rather than on the first step
        cache._degrade("connect", e)
    return cache


class _Unavailable(Exception):
    """Internal: the critic could not answer this request; the message is the reason recorded."""


def _parse_result(raw: object, k: int) -> CriticResult:
    if not isinstance(raw, dict):
        raise _Unavailable(f"results[{k}] is {type(raw).__name__}, expected an object")
    agree, conf = raw.get("agree"), raw.get("confidence")
    if not isinstance(agree, bool):
        raise _Unavailable(f"results[{k}].agree is {agree!r}, expected true or false")
    if isinstance(conf, bool) or not isinstance(conf, int | float) or not math.isfinite(conf) or not 0 <= conf <= 1:
        raise _Unavailable(f"results[{k}].confidence is {conf!r}, expected a number in [0, 1]")
    return CriticResult(agree, float(conf))


class CriticClient:
    """Synchronous client of ``POST {base_url}/v1/critic/verify``; see the module docstring.

    ``cache`` defaults to an in-process LRU (:func:`make_critic_cache`); ``timeout`` bounds each HTTP
    request; ``cooldown_s`` is how long after a failure calls return None without trying.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        cache: ResilientCache | None = None,
        timeout: float = 10.0,
        cooldown_s: float = 30.0,
        batch_size: int = MAX_BATCH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"critic base_url must start with http:// or https://, got {base_url!r}")
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be in [1, {MAX_BATCH}] (the platform's limit), got {batch_size}")
        if timeout <= 0 or cooldown_s < 0:
            raise ValueError("timeout must be > 0 and cooldown_s >= 0 (seconds)")
        self.base_url = base_url.rstrip("/")
        self.cache = cache if cache is not None else make_critic_cache()
        self.cooldown_s = cooldown_s
        self.batch_size = batch_size
        self.stats = CriticStats()
        self.last_error: str | None = None  # why the critic last failed (an outage or one malformed record)
        self._clock = clock
        self._down_until = -math.inf
        self._down = False  # in an outage (warned once; cleared by the next answered request)
        self._lock = threading.Lock()  # one verify at a time: counters and cool-down stay consistent
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        # No retries: a step that waits for a flaky critic is worse than a step without the critic term.
        self._http = httpx.Client(timeout=timeout, headers=headers, trust_env=False)

    @property
    def available(self) -> bool:
        """False while cooling down after a failure (calls then answer None without trying)."""
        return self._clock() >= self._down_until

    def verify(self, items: Sequence[tuple[str, str]]) -> list[CriticResult | None]:
        """The critic's verdict per ``(question, answer)``, in order; None where it could not be had.

        Never raises for a critic or cache failure. Items already cached cost no request; the rest are
        de-duplicated and sent in batches of at most ``batch_size``; a failed batch leaves its items
        None (and uncached), batches already answered keep their results.
        """
        with self._lock:
            out: list[CriticResult | None] = [None] * len(items)
            todo: dict[str, list[int]] = {}  # key -> positions asking for it
            for i, (question, answer) in enumerate(items):
                key = critic_key(question, answer)
                cached = self.cache.get(key)
                if cached is not None:
                    try:
                        payload = json.loads(cached)
                        out[i] = CriticResult(bool(payload["agree"]), float(payload["confidence"]), cached=True)
                        self.stats.hits += 1
                        continue
                    except (ValueError, KeyError, TypeError):
                        pass  # an entry we cannot read is a miss (and gets overwritten below)
                self.stats.misses += 1
                todo.setdefault(key, []).append(i)
            if not todo:
                return out
            if not self.available:
                self.stats.skipped_calls += 1
                self._give_up(todo, None)
                return out
            keys = list(todo)
            for start in range(0, len(keys), self.batch_size):
                chunk = keys[start : start + self.batch_size]
                body = {"items": [{"question": items[todo[k][0]][0], "answer": items[todo[k][0]][1]} for k in chunk]}
                self.stats.requests += 1
                self.stats.requested += len(chunk)
                try:
                    results = self._post(body, len(chunk))
                except _Unavailable as e:
                    self.stats.failures += 1
                    self._give_up({k: todo[k] for k in keys[start:]}, str(e))
                    return out
                for k, result in zip(chunk, results, strict=True):
                    if isinstance(result, str):  # one malformed record: that item only is unavailable
                        self._give_up({k: todo[k]}, result, outage=False)
                        continue
                    self.cache.set(k, json.dumps({"agree": result.agree, "confidence": result.confidence}).encode())
                    for i in todo[k]:
                        out[i] = result
            if self._down:
                log.info("critic at %s answers again", self.base_url)
                self._down = False
            return out

    def _post(self, body: dict, n: int) -> list[CriticResult | str]:
        """One request; a list of results (or, per malformed record, the reason), or _Unavailable."""
        try:
            resp = self._http.post(f"{self.base_url}/v1/critic/verify", content=json.dumps(body).encode())
        except httpx.HTTPError as e:
            raise _Unavailable(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None
        if resp.status_code != 200:
            raise _Unavailable(f"HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            payload = resp.json()
        except ValueError as e:
            raise _Unavailable(f"malformed JSON reply: {e}") from None
        results = payload.get("results") if isinstance(payload, dict) else None
        if not isinstance(results, list) or len(results) != n:
            got = len(results) if isinstance(results, list) else type(results).__name__
            raise _Unavailable(f'expected {{"results": [...]}} with {n} entries, got {got}')
        parsed: list[CriticResult | str] = []
        for k, raw in enumerate(results):
            try:
                parsed.append(_parse_result(raw, k))
            except _Unavailable as e:
                parsed.append(str(e))
        return parsed

    def _give_up(self, todo: dict[str, list[int]], reason: str | None, *, outage: bool = True) -> None:
        """Count the items left None; with a ``reason``, record it (an outage also warns and cools down)."""
        self.stats.unavailable += sum(len(v) for v in todo.values())
        if reason is None:
            return
        self.last_error = reason
        if outage:
            if not self._down:
                log.warning("critic at %s unavailable (%s); its reward term is dropped until it answers",
                            self.base_url, reason)
            self._down = True
            self._down_until = self._clock() + self.cooldown_s

    def close(self) -> None:
        self._http.close()
        self.cache.close()

    def __enter__(self) -> CriticClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
