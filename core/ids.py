"""Identifiers: 32 hex digits, unguessable, and in creation order.

The first 48 bits are the creation time in milliseconds, the other 80 random, as in UUIDv7: an id
in a URL is still no key to anything else (2^80 to guess from), and ids made one after another
sort together, so a new row lands at the right edge of each unique index instead of on a random
page of it (measured on the event log's id index: 6.5 against 14 us per insert, and the random
case grows slower as the table outgrows the cache). What the time part reveals, the record's own
`created_at` already says.

The random bits are the kernel's (os.urandom), drawn 4 KiB at a time. os.urandom lets go of the
GIL for its syscall, and in a process with a busy second thread every let-go became a thread
hand-off: one draw per id cost `POST /attachments` a third of its throughput (2,800-3,400 against
4,300 grants per core, measured by bench/attachments.py). Each id still takes bytes no other id
takes; a forked child starts with an empty buffer, so parent and child never share one.
"""

from __future__ import annotations

import os
import threading
import time

RANDOM_BYTES = 10
DRAW_BYTES = 4096

_lock = threading.Lock()
_pool = b""
_taken = 0


def new_id() -> str:
    global _pool, _taken
    with _lock:  # one id's bytes for one caller, whichever thread asks
        if _taken + RANDOM_BYTES > len(_pool):
            _pool, _taken = os.urandom(DRAW_BYTES), 0
        start = _taken
        _taken += RANDOM_BYTES
        random = _pool[start : start + RANDOM_BYTES]
    return f"{time.time_ns() // 1_000_000:012x}{random.hex()}"


def _forget_pool() -> None:
    global _pool, _taken
    _pool, _taken = b"", 0


os.register_at_fork(after_in_child=_forget_pool)
