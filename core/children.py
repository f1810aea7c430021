"""Child processes the service starts (the embedded clamd, the embedded S3 server): one way to run them.

A child must never outlive the service, even when the service is killed with kill -9, and one
left behind by an older start must not keep a newer one from starting.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 5.0
POLL_INTERVAL_SECONDS = 0.05
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when the thread that started it dies, even by kill -9.

    Run the spawn on the thread that lives as long as the service (the event loop's): Linux sends
    the signal when that thread exits. If the parent died before prctl took effect, exit at once.
    """
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: nothing may be loaded after fork
    prctl = getattr(libc, "prctl", None)  # looked up before fork too; None off Linux (stale-pid cleanup only)
    parent = os.getpid()

    def in_child() -> None:
        if prctl is None:
            return
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return in_child


def stop_stale_process(pid_file: Path, *, is_ours: Callable[[Sequence[str]], bool]) -> int | None:
    """Kill a process left by an earlier start, if the pid file names one whose command line is ours.

    The data dir lock guarantees no live service owns it, so such a process is an orphan; `is_ours`
    (given the process's argv) keeps a reused pid of an unrelated process safe. Returns the pid stopped.
    """
    pid = read_int(pid_file)
    if pid is None or pid == os.getpid():
        return None
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None  # gone already
    if not is_ours(argv):
        return None
    log.warning("stopping pid %d left running by an earlier start (%s)", pid, pid_file)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
        except (OSError, IndexError):
            break
        if state == "Z":  # dead; its new parent (init, or a subreaper) reaps it
            break
        time.sleep(POLL_INTERVAL_SECONDS)
    return pid


async def stop_child(process: asyncio.subprocess.Process | None, name: str) -> None:
    """SIGTERM, a grace period, then SIGKILL; returns once the process is gone."""
    if process is None or process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), STOP_GRACE_SECONDS)
    except TimeoutError:
        log.warning("%s pid %d ignored SIGTERM, killing it", name, process.pid)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def tail(path: Path, lines: int = 5) -> str:
    """The last lines of a child's log, for the error that says why it did not start."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    last = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(last) if last else "(empty log)"
