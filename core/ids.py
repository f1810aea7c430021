"""Identifiers: 128 random bits as hex, unguessable, so an id in a URL is no key to anything else.

The bits are the kernel's (os.urandom), drawn 4 KiB at a time. os.urandom lets go of the GIL for
its syscall, and in a process whose SQLite thread is busy every let-go became a thread hand-off:
one draw per id cost `POST /attachments` a third of its throughput (2,800-3,400 against 4,300
grants per core, measured by bench/attachments.py). Each id still takes 16 bytes no other id
takes; a forked child starts with an empty buffer, so parent and child never share one.
"""

from __future__ import annotations

import os
import threading

ID_BYTES = 16
DRAW_BYTES = 4096

_lock = threading.Lock()
_pool = b""
_taken = 0


def new_id() -> str:
    global _pool, _taken
    with _lock:  # one id's bytes for one caller, whichever thread asks
        if _taken + ID_BYTES > len(_pool):
            _pool, _taken = os.urandom(DRAW_BYTES), 0
        start = _taken
        _taken += ID_BYTES
        return _pool[start : start + ID_BYTES].hex()


def _forget_pool() -> None:
    global _pool, _taken
    _pool, _taken = b"", 0


os.register_at_fork(after_in_child=_forget_pool)
