"""Watching the processes a test started (or that a service started for itself) from outside."""

from __future__ import annotations

import time
from pathlib import Path


def process_gone(pid: int, within: float = 5) -> bool:
    """True once `pid` has exited (or is a zombie nobody reaped yet) within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False
