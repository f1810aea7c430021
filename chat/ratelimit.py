"""Per-key token buckets (a steady rate, a small burst) and the in-flight budget, in this process's memory."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from core.errors import Overloaded, RateLimited


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

    def try_take(self, key: str) -> bool:
        """Take a token if there is one; False (and nothing taken) if not."""
        now = self._clock()
        tokens, stamp = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - stamp) * self._rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return True

    def give_back(self, key: str) -> None:
        """Return a token taken for something that turned out not to count (a retry)."""
        if key in self._buckets:
            tokens, stamp = self._buckets[key]
            self._buckets[key] = (min(self._burst, tokens + 1.0), stamp)

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


class InFlightBudget:
    """At most `limit` operations in hand at once; one more is refused at once with a retry hint.

    Past saturation a queue only grows: every queued send still costs its full CPU, its ack comes
    later and later, and clients time out and retry work the node is still doing. Refusing at the
    door costs almost nothing and tells the client when to come back: about the time the work in
    hand takes to finish (a moving average of recent durations).
    """

    def __init__(self, limit: int, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self.limit = limit
        self.in_flight = 0
        self._clock = clock
        self._average_seconds = 0.05

    def refusal(self, what: str = "requests") -> Overloaded | None:
        """The error to answer with if no slot is free now, else None (takes nothing)."""
        if self.in_flight < self.limit:
            return None
        retry_after_ms = min(5000, max(10, int(self._average_seconds * 1000)))
        return Overloaded(f"too many {what} in hand on this node; send again later", retry_after_ms=retry_after_ms)

    def enter(self, what: str = "requests") -> float:
        """Take a slot (raises Overloaded when none is free); returns the start time for `leave`."""
        refused = self.refusal(what)
        if refused is not None:
            raise refused
        self.in_flight += 1
        return self._clock()

    def leave(self, started: float) -> None:
        self.in_flight -= 1
        self._average_seconds += (self._clock() - started - self._average_seconds) * 0.05


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
