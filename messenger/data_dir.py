"""MESSENGER_DATA_DIR: one service at a time. An flock on `<data_dir>/lock`, held for the process's
lifetime, refuses a second service on the same directory (it would break the first one's clamd and
S3 server); the kernel drops it when the process dies, kill -9 included, so it never goes stale."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


class DataDirInUse(Exception):
    """Another process holds the data dir; the message names the dir, the pid and what to do."""


@contextlib.contextmanager
def data_dir_claimed(data_dir: Path) -> Iterator[Path]:
    directory = data_dir.absolute()
    directory.mkdir(parents=True, exist_ok=True)
    lock_path = directory / "lock"
    handle = lock_path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise DataDirInUse(
                f"the data directory {directory} is in use by another messenger (pid {holder}); stop it,"
                " or give this one its own directory with MESSENGER_DATA_DIR"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        log.info("data dir %s (%s)", directory, _human(directory_size(directory)), extra={"data_dir": str(directory)})
        yield directory
    finally:
        handle.close()  # releases the lock


def directory_size(directory: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
