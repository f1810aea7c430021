"""The responsiveness read model: per seller, the share of buyer-started conversations answered in time
and the median time to the first answer, over a window of days.

A projection of `message.sent` from the event log with its own checkpoint (the pattern of
attachments/moderation's queue): rebuildable at any time by clearing it and reading the log again.
It publishes `user.response_stats` for the sellers a batch touched, so other services (a gig page)
keep their own copy; the seller's own view reads the model after catching up, so it is current.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from collections.abc import Sequence
from datetime import datetime, timedelta

from chat.service import ChatService
from config.settings import InboxSettings
from core.clock import Clock, SystemClock, from_iso
from core.events import Event, EventLog, new_event
from core.views import View
from inbox.model import FirstAnswer
from inbox.store import ResponseStatsStore

log = logging.getLogger(__name__)

EVENT_TYPES = ["message.sent"]


def response_stats(
    user_id: str, rows: Sequence[FirstAnswer], *, now: datetime, deadline: timedelta, window_days: int
) -> View:
    """The figures from the model's rows: a conversation still inside its deadline and unanswered is undecided."""
    decided = [r for r in rows if r.answered_at is not None or now - r.started_at >= deadline]
    in_time = [r for r in decided if r.answered_at is not None and r.answered_at - r.started_at <= deadline]
    delays = [(r.answered_at - r.started_at).total_seconds() for r in rows if r.answered_at is not None]
    return {
        "user_id": user_id,
        "first_response_seconds_median": statistics.median(delays) if delays else None,
        "response_rate": round(len(in_time) / len(decided), 4) if decided else None,
        "window_days": window_days,
        "conversations": len(rows),
    }


class ResponseStats:
    def __init__(
        self,
        settings: InboxSettings,
        store: ResponseStatsStore,
        events: EventLog,
        chat: ChatService,
        clock: Clock | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._events = events
        self._chat = chat
        self._clock = clock or SystemClock()
        self._lock = asyncio.Lock()

    async def catch_up(self, *, publish: bool = True) -> int:
        """Fold new `message.sent` events in; publish the touched sellers' figures. Returns events applied."""
        async with self._lock:
            applied = 0
            while True:
                after = await self._store.checkpoint()
                batch = await self._events.read(after=after, limit=500, types=EVENT_TYPES)
                if not batch:
                    return applied
                touched: set[str] = set()
                for event in batch:
                    seller = await self._apply(event)
                    if seller:
                        touched.add(seller)
                if publish and touched:
                    # At least once: a crash before the checkpoint publishes these figures again.
                    await self._events.append([await self._published(seller) for seller in sorted(touched)])
                await self._store.save_checkpoint(int(batch[-1].position or after))
                applied += len(batch)

    async def _published(self, seller_id: str) -> Event:
        return new_event(
            "user.response_stats", seller_id, await self._figures(seller_id), occurred_at=self._clock.now()
        )

    async def _apply(self, event: Event) -> str | None:
        data = event.data
        conversation_id, sender = data.get("conversation_id"), data.get("sender_id")
        if not conversation_id or not sender:
            return None
        pair = await self._chat.participants(conversation_id)
        if pair is None:
            return None
        buyer, seller = pair
        at = from_iso(data["created_at"]) if data.get("created_at") else event.occurred_at
        if int(data.get("seq", 0)) == 1:
            if sender == buyer:
                await self._store.started(conversation_id, seller, buyer, at)
                return seller
            return None
        if sender == seller:
            await self._store.answered(conversation_id, at)
            return seller
        return None

    async def _figures(self, seller_id: str) -> View:
        now = self._clock.now()
        rows = await self._store.of_seller(seller_id, since=now - timedelta(days=self._settings.response_window_days))
        return response_stats(
            seller_id,
            rows,
            now=now,
            deadline=timedelta(hours=self._settings.response_deadline_hours),
            window_days=self._settings.response_window_days,
        )

    async def of(self, user_id: str) -> View:
        """A user's figures as of now (the model caught up first)."""
        await self.catch_up()
        return await self._figures(user_id)

    async def rebuild(self) -> int:
        """Forget the model and fold the whole log in again (publishing nothing)."""
        await self._store.clear()
        return await self.catch_up(publish=False)

    async def run_forever(self, interval_seconds: float = 5.0) -> None:
        while True:
            try:
                await self.catch_up()
            except Exception:
                log.exception("response stats projection failed; will retry")
            await asyncio.sleep(interval_seconds)
