"""What every benchmark script here shares: its child processes, free ports, logs, a raw INSTREAM."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
from pathlib import Path
from typing import Any


class BenchError(Exception):
    """Something a benchmark started misbehaved; the message says what."""


def log(text: str = "") -> None:
    print(text, flush=True)


class Children:
    """Every process a script starts, each in a session of its own so that it dies with the script."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[Any]] = []

    def spawn(self, cmd: list[str], *, cpu: int | None = None, **kwargs: Any) -> subprocess.Popen[Any]:
        if cpu is not None and shutil.which("taskset"):
            # taskset pins before exec, so threads the child starts (V8's, moto's) inherit it too.
            cmd = ["taskset", "-c", str(cpu), *cmd]
        # A session of its own: stopping the process group takes grandchildren (npm, taskset) along.
        proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream:
                with contextlib.suppress(OSError):
                    stream.close()
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self._procs)):
            self.stop(proc)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def raw_instream(socket_path: str, data: bytes, frame: int) -> str:
    """The least code that speaks INSTREAM: blocking socket, sendall, fixed-size frames (the baseline)."""
    view = memoryview(data)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(socket_path)
        sock.sendall(b"zINSTREAM\0")
        for start in range(0, len(view), frame):
            piece = view[start : start + frame]
            sock.sendall(struct.pack(">I", len(piece)))
            sock.sendall(piece)
        sock.sendall(b"\0\0\0\0")
        reply = b""
        while not reply.endswith(b"\0"):
            more = sock.recv(4096)
            if not more:
                break
            reply += more
    return reply.rstrip(b"\0").decode()
