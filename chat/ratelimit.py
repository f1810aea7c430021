"""Per-key token buckets: a steady rate with a small burst, kept in this process's memory."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from core.errors import RateLimited


class TokenBuckets:
    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate_per_second
        self._burst = float(burst)
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, *, what: str = "requests") -> None:
        now = self._clock()
        tokens, stamp = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - stamp) * self._rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            retry_after = (1.0 - tokens) / self._rate
            raise RateLimited(
                f"too many {what}; slow down",
                retry_after_ms=int(retry_after * 1000) + 1,
            )
        self._buckets[key] = (tokens - 1.0, now)
        # Bounded memory: the least recently used keys are full buckets by now, or close to it.
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)


class MinInterval:
    """At most one event per key per interval (typing indicators)."""

    def __init__(
        self, interval_seconds: float, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval = interval_seconds
        self._max_keys = max_keys
        self._clock = clock
        self._last: OrderedDict[str, float] = OrderedDict()

    def allow(self, key: str) -> bool:
        now = self._clock()
        last = self._last.pop(key, None)
        if last is not None and now - last < self._interval:
            self._last[key] = last
            return False
        self._last[key] = now
        while len(self._last) > self._max_keys:
            self._last.popitem(last=False)
        return True
