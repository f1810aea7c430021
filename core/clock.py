"""Time as the service stores and shows it: UTC, millisecond precision (what MongoDB keeps)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


def utc_now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # drivers without tz_aware hand back naive UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_iso(text: str) -> datetime:
    """The time `iso` wrote, back as an aware datetime (text without an offset is taken as UTC)."""
    moment = datetime.fromisoformat(text)  # Python 3.11 reads the trailing "Z" itself
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class Clock(Protocol):
    """Where use cases read the time, so tests can move it instead of sleeping."""

    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return utc_now()


class FakeClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
