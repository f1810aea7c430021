"""The outcome of one scan: a verdict plus the signature or reason behind it."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.StrEnum):
    """What a scan concluded about the content.

    Only CLEAN means the whole content was scanned and nothing matched; every other
    verdict must keep the content away from recipients.
    """

    CLEAN = "clean"
    INFECTED = "infected"
    # Content clamd could not judge (too large, encrypted, beyond its limits): not
    # proven bad, but not proven clean either.
    UNSCANNABLE = "unscannable"
    # The scan itself failed (clamd down, timeout, protocol error): retrying may help.
    ERROR = "error"


@dataclass(frozen=True)
class ScanResult:
    verdict: Verdict
    signature: str | None = None  # for INFECTED, e.g. "Test.EICAR.HDB.UNOFFICIAL"
    reason: str | None = None  # for UNSCANNABLE / ERROR, human readable
    bytes_scanned: int = 0  # bytes clamd judged; 0 when it gave no verdict on them

    @property
    def is_clean(self) -> bool:
        return self.verdict is Verdict.CLEAN
