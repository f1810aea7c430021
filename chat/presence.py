"""Who is online: a user is online while any of their sessions, on any node, is connected."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

from core.clock import iso, utc_now


class PresenceTracker(Protocol):
    async def connected(self, user_id: str) -> bool:
        """Count a new session; True if the user just came online."""

    async def disconnected(self, user_id: str) -> bool:
        """Count a session gone; True if the user just went offline."""

    async def status(self, user_ids: Iterable[str]) -> list[dict[str, Any]]: ...


class LocalPresence:
    """Presence for a single node, in memory."""

    def __init__(self) -> None:
        self._sessions: dict[str, int] = {}
        self._last_seen: dict[str, datetime] = {}

    async def connected(self, user_id: str) -> bool:
        self._sessions[user_id] = self._sessions.get(user_id, 0) + 1
        self._last_seen[user_id] = utc_now()
        return self._sessions[user_id] == 1

    async def disconnected(self, user_id: str) -> bool:
        remaining = self._sessions.get(user_id, 0) - 1
        self._last_seen[user_id] = utc_now()
        if remaining <= 0:
            self._sessions.pop(user_id, None)
            return True
        self._sessions[user_id] = remaining
        return False

    async def status(self, user_ids: Iterable[str]) -> list[dict[str, Any]]:
        return [
            {"user_id": user, "online": user in self._sessions, "last_seen": iso(self._last_seen.get(user))}
            for user in user_ids
        ]


class RedisPresence:
    """Presence shared by every node through Redis hashes (session counts and last-seen times)."""

    SESSIONS = "messenger:presence:sessions"
    LAST_SEEN = "messenger:presence:last_seen"

    def __init__(self, redis: Any) -> None:
        self._redis = redis

    async def connected(self, user_id: str) -> bool:
        pipe = self._redis.pipeline()
        pipe.hincrby(self.SESSIONS, user_id, 1)
        pipe.hset(self.LAST_SEEN, user_id, iso(utc_now()))
        count, _ = await pipe.execute()
        return int(count) == 1

    async def disconnected(self, user_id: str) -> bool:
        pipe = self._redis.pipeline()
        pipe.hincrby(self.SESSIONS, user_id, -1)
        pipe.hset(self.LAST_SEEN, user_id, iso(utc_now()))
        count, _ = await pipe.execute()
        if int(count) <= 0:
            await self._redis.hdel(self.SESSIONS, user_id)
            return True
        return False

    async def status(self, user_ids: Iterable[str]) -> list[dict[str, Any]]:
        users = list(user_ids)
        if not users:
            return []
        counts = await self._redis.hmget(self.SESSIONS, users)
        seen = await self._redis.hmget(self.LAST_SEEN, users)
        return [
            {"user_id": user, "online": bool(count) and int(count) > 0, "last_seen": _text(last)}
            for user, count, last in zip(users, counts, seen, strict=True)
        ]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
