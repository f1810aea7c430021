"""Unread reminders: `conversation.unread_reminder` once per unread streak, from durable timers in the store.

A streak starts with the first message a user has not read (noted by the arrivals projection,
inbox/arrivals.py) and ends when they have read every
message of it. Its timer is a row in the store (not a sleeping task), so a restart loses none; the
row is marked fired in the same write as the event, so no streak is reminded twice.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from chat.service import ChatService
from config.settings import InboxSettings
from core.clock import Clock, SystemClock, iso
from core.events import new_event
from inbox.arrivals import Arrivals
from inbox.store import ReminderStore

log = logging.getLogger(__name__)


class UnreadReminders:
    def __init__(
        self,
        settings: InboxSettings,
        store: ReminderStore,
        chat: ChatService,
        clock: Clock | None = None,
        arrivals: Arrivals | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._chat = chat
        self._clock = clock or SystemClock()
        self._delay = timedelta(seconds=settings.unread_reminder_delay_seconds)
        # The streaks are started by the arrivals projection (inbox/arrivals.py), off the send path.
        self._arrivals = arrivals

    async def read(self, user_id: str, conversation_id: str, seq: int) -> None:
        await self._store.note_read(user_id, conversation_id, seq)

    async def fire_due(self) -> int:
        """Emit the reminders whose time has come; returns how many were emitted."""
        emitted = 0
        if self._arrivals is not None:
            await self._arrivals.caught_up()  # every streak this process's sends started
        for reminder in await self._store.due(self._clock.now()):
            unread = await self._chat.unread_count(reminder.conversation_id, reminder.user_id)
            if unread <= 0:  # read by a path that did not tell us (another node's old version, say)
                await self._store.note_read(reminder.user_id, reminder.conversation_id, reminder.last_seq)
                continue
            event = new_event(
                "conversation.unread_reminder",
                reminder.conversation_id,
                {
                    "conversation_id": reminder.conversation_id,
                    "user_id": reminder.user_id,
                    "unread_count": unread,
                    "oldest_unread_at": iso(reminder.oldest_unread_at),
                },
                occurred_at=self._clock.now(),
            )
            if await self._store.fire(reminder, [event]):
                emitted += 1
        return emitted

    async def run_forever(self) -> None:
        while True:
            try:
                fired = await self.fire_due()
                if fired:
                    log.info("unread reminders emitted", extra={"count": fired})
            except Exception:
                log.exception("unread reminders failed; will retry")
            await asyncio.sleep(self._settings.reminder_poll_seconds)
