"""An unread reminder is a durable timer: `messenger serve` stopped before the delay is over and started
again on the same MESSENGER_DATA_DIR still emits `conversation.unread_reminder`, exactly once.

A real process and real time (a 2 s delay), since what is tested is the restart itself; the timing
rules are tested with a FakeClock in tests/unit/test_reminders_and_responsiveness.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.conftest import RunningService, rest, start_service, stop_service
from tests.e2e.test_restart_durability import all_events

pytestmark = pytest.mark.e2e
DELAY_SECONDS = 2.0
ENV = {"INBOX_UNREAD_REMINDER_DELAY_SECONDS": str(DELAY_SECONDS), "INBOX_REMINDER_POLL_SECONDS": "0.2"}


def reminders(service: RunningService) -> list[dict[str, object]]:
    return [e for e in all_events(service) if e["type"] == "conversation.unread_reminder"]


def test_a_reminder_due_while_the_service_was_down_fires_once_after_the_restart(tmp_path: Path) -> None:
    first = start_service(tmp_path, env=ENV)
    try:
        conversation = rest(first, "alice", "POST", "/conversations", {"buyer_id": "alice", "seller_id": "bob"})
        sent = time.monotonic()
        rest(first, "bob", "POST", f"/conversations/{conversation['id']}/messages", {"client_id": "b1", "text": "hi"})
    finally:
        stop_service(first)
    assert time.monotonic() - sent < DELAY_SECONDS, "the service must stop before the reminder is due"
    time.sleep(max(0.0, DELAY_SECONDS - (time.monotonic() - sent)) + 0.2)

    second = start_service(tmp_path, env=ENV)
    try:
        deadline = time.monotonic() + 15
        while not reminders(second) and time.monotonic() < deadline:
            time.sleep(0.2)
        found = reminders(second)
        assert [e["data"]["user_id"] for e in found] == ["alice"], second.log()  # type: ignore[index]
        time.sleep(1.0)  # several more polls
        assert len(reminders(second)) == 1
    finally:
        stop_service(second)
    third = start_service(tmp_path, env=ENV)
    try:
        time.sleep(1.0)
        assert len(reminders(third)) == 1
    finally:
        stop_service(third)
