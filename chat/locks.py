"""Per-conversation write locks: within one process, or across every node when Redis is configured.

A send or an edit holds its conversation's lock from taking the seq until the fan-out is published,
so every client receives a conversation's changes in seq order, whichever node made them. That is
what lets a reconnecting client sync from the highest seq it has seen and miss nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

# Striped, so memory stays bounded however many conversations there are.
LOCK_STRIPES = 1024


class ConversationLocks(Protocol):
    def hold(self, conversation_id: str) -> contextlib.AbstractAsyncContextManager[None]: ...


class LocalLocks:
    def __init__(self) -> None:
        self._stripes = [asyncio.Lock() for _ in range(LOCK_STRIPES)]

    def stripe(self, conversation_id: str) -> asyncio.Lock:
        return self._stripes[zlib.crc32(conversation_id.encode()) % LOCK_STRIPES]

    @contextlib.asynccontextmanager
    async def hold(self, conversation_id: str) -> AsyncIterator[None]:
        async with self.stripe(conversation_id):
            yield


class RedisLocks:
    """A Redis lock per conversation, taken after the local one so a node queues its own writers in memory."""

    # Long enough for a write and a publish, short enough that a crashed holder frees it soon.
    LEASE_SECONDS = 10.0
    WAIT_SECONDS = 15.0
    POLL_SECONDS = 0.002

    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._local = LocalLocks()

    @contextlib.asynccontextmanager
    async def hold(self, conversation_id: str) -> AsyncIterator[None]:
        async with self._local.stripe(conversation_id):
            lock = self._redis.lock(
                f"messenger:conversation-lock:{conversation_id}",
                timeout=self.LEASE_SECONDS,
                sleep=self.POLL_SECONDS,
                blocking_timeout=self.WAIT_SECONDS,
            )
            async with lock:
                yield
