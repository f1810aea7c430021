"""What every benchmark script here shares: its child processes, free ports, logs, a raw INSTREAM."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


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


@dataclass
class Service:
    """A `messenger serve` started by a benchmark."""

    proc: subprocess.Popen[Any]
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextlib.contextmanager
def messenger_serve(
    children: Children,
    scratch: Path,
    name: str,
    *,
    secret: str,
    env: dict[str, str],
    timeout: float,
    cpu: int | None = None,
    checkout: Path = REPO,
) -> Iterator[Service]:
    """Start `messenger serve` on a free port, wait until /readyz says every part answers, stop it after.

    `checkout`: the source tree whose code runs (another worktree, to compare before and after)."""
    port = free_port()
    log_path = scratch / f"{name}.log"
    environment = {
        **os.environ,
        "JWT_SECRET": secret,
        "MESSENGER_DATA_DIR": str(scratch / f"{name}-data"),
        "MESSENGER_LOG_LEVEL": "WARNING",
        **env,
    }
    with open(log_path, "wb") as log_file:
        proc = children.spawn(
            [sys.executable, "-m", "messenger", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cpu=cpu,
            cwd=checkout,
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    service = Service(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_ready(service, timeout)
        yield service
    finally:
        children.stop(proc)


def wait_ready(service: Service, timeout: float) -> None:
    """/readyz: the database, S3 and clamd all answer (the embedded ones are started by then)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise BenchError(f"messenger serve exited with {service.proc.returncode}:\n{tail(service.log_path)}")
        try:
            with urllib.request.urlopen(service.url + "/readyz", timeout=3) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = exc.read().decode(errors="replace")[:300]
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise BenchError(f"messenger serve not ready after {timeout:.0f} s ({last}):\n{tail(service.log_path)}")


@contextlib.contextmanager
def moto_server(children: Children, scratch: Path) -> Iterator[tuple[str, int]]:
    """moto's S3 API server as a process of its own (its objects are not the measured process's memory)."""
    port = free_port()
    log_path = scratch / "moto.log"
    with open(log_path, "wb") as log_file:
        proc = children.spawn(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise BenchError(f"moto_server exited: {tail(log_path)}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"moto_server did not listen: {tail(log_path)}") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        children.stop(proc)
