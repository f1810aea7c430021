"""The Notifier port: how any part pushes a server→client event to users' sessions, and its fake."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol


class Notifier(Protocol):
    """Pushes a server→client event to every connected session of the given users, or of every moderator."""

    async def emit(self, event: str, payload: Mapping[str, Any], user_ids: Iterable[str]) -> None: ...

    async def emit_to_moderators(self, event: str, payload: Mapping[str, Any]) -> None:
        """To every session whose token carried the moderator role when it connected, and to nobody else."""
        ...


class RecordingNotifier:
    """An in-memory Notifier for fast tests: keeps what each user, and the moderators, would have received."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], frozenset[str]]] = []
        self.to_moderators: list[tuple[str, dict[str, Any]]] = []

    async def emit(self, event: str, payload: Mapping[str, Any], user_ids: Iterable[str]) -> None:
        self.sent.append((event, dict(payload), frozenset(user_ids)))

    async def emit_to_moderators(self, event: str, payload: Mapping[str, Any]) -> None:
        self.to_moderators.append((event, dict(payload)))

    def received_by(self, user_id: str, event: str | None = None) -> list[dict[str, Any]]:
        return [payload for name, payload, users in self.sent if user_id in users and (event is None or name == event)]

    def received_by_moderators(self, event: str | None = None) -> list[dict[str, Any]]:
        return [payload for name, payload in self.to_moderators if event is None or name == event]
