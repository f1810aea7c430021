"""Ids: 32 hex digits whose 80 random bits nobody else gets (across calls, threads and a fork), in creation order."""

from __future__ import annotations

import os
import re
import threading
import time

from core.ids import new_id


def test_ids_are_32_hex_characters_and_never_repeat() -> None:
    ids = [new_id() for _ in range(50_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids[:1000])
    assert len(set(ids)) == len(ids)


def test_threads_drawing_at_once_get_distinct_ids() -> None:
    drawn: list[list[str]] = [[] for _ in range(8)]

    def draw(into: list[str]) -> None:
        into.extend(new_id() for _ in range(5_000))

    threads = [threading.Thread(target=draw, args=(into,)) for into in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [i for ids in drawn for i in ids]
    assert len(set(everything)) == len(everything) == 40_000


def test_a_forked_child_does_not_reuse_the_parents_bytes() -> None:
    new_id()  # the parent holds a partly used draw
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        os.write(write, " ".join(new_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {new_id() for _ in range(100)}
    assert len(child) == 100 and not child & parent


def test_ids_made_later_sort_later() -> None:
    # New rows then land at the right edge of the unique indexes on ids (core/ids.py says why).
    first = new_id()
    time.sleep(0.002)
    assert new_id()[:12] > first[:12]
