"""What a stored message means for the inbox, as a projection of `message.sent` from the event log.

The recipient's archive gives the conversation back; the sender has read up to their own message
and the recipient has it unread (the unread-reminder streaks, inbox/reminders.py). Kept off the
send path: the log is read after a leased checkpoint, in batches, one store call per batch
(core/projection.py). At least once, so noting a message again must change nothing that a read
or a reminder would see (ReminderStore.note_messages). Reads that depend on it await `caught_up`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from config.settings import InboxSettings
from core.checkpoints import Checkpoints
from core.clock import from_iso
from core.events import Event, EventLog
from core.projection import ProjectionRunner
from inbox.model import MessageNote
from inbox.store import ReminderStore

PROJECTION = "inbox.arrivals"
EVENT_TYPES = ["message.sent"]


class Arrivals:
    def __init__(
        self,
        settings: InboxSettings,
        store: ReminderStore,
        events: EventLog,
        checkpoints: Checkpoints,
        *,
        owner_id: str | None = None,
    ) -> None:
        self._store = store
        self._delay = timedelta(seconds=settings.unread_reminder_delay_seconds)
        self.runner = ProjectionRunner(
            PROJECTION, events, checkpoints, self.apply, types=EVENT_TYPES, owner_id=owner_id
        )

    def message_stored(self) -> None:
        self.runner.wake()

    async def caught_up(self) -> None:
        await self.runner.caught_up()

    async def apply(self, events: Sequence[Event]) -> None:
        notes = [note for note in (self._note(e) for e in events) if note is not None]
        await self._store.note_messages(notes)

    def _note(self, event: Event) -> MessageNote | None:
        data = event.data
        try:
            at = from_iso(data["created_at"])
            return MessageNote(
                conversation_id=data["conversation_id"],
                sender_id=data["sender_id"],
                recipient_id=data["recipient_id"],
                seq=int(data["seq"]),
                at=at,
                due_at=at + self._delay,
            )
        except (KeyError, TypeError, ValueError):  # not a message.sent this version wrote: nothing to note
            return None
