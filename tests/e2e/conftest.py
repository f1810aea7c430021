"""End-to-end fixtures: the service started as the README starts it (`messenger serve`), in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from config.settings import AuthSettings
from core.identity import issue_token
from tests.conftest import TEST_SECRET

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningService:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def token(self, user_id: str, *, moderator: bool = False, ttl: int = 3600) -> str:
        return issue_token(AuthSettings(secret=TEST_SECRET), user_id, moderator=moderator, ttl_seconds=ttl)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_service(
    tmp: Path, *, env: dict[str, str] | None = None, port: int | None = None, name: str = "service"
) -> RunningService:
    port = port or free_port()
    log_path = tmp / f"{name}.log"
    environment = {
        **os.environ,
        "JWT_SECRET": TEST_SECRET,
        "MESSENGER_DATA_DIR": str(tmp / f"{name}-data"),
        # e2e tests send bursts on purpose; the limiter has its own tests
        "CHAT_SEND_RATE_PER_SECOND": "10000",
        "CHAT_SEND_BURST": "10000",
        **(env or {}),
    }
    # Appended to: a restart on the same data dir keeps the log of the run before it, which is what
    # explains a failure after the restart.
    with log_path.open("ab") as log_file:
        log_file.write(f"--- messenger serve on port {port} ---\n".encode())
        log_file.flush()
        process = subprocess.Popen(
            [sys.executable, "-m", "messenger", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    service = RunningService(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"messenger serve exited with {process.returncode}:\n{service.log()}")
        try:
            with urllib.request.urlopen(service.url + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return service
        except OSError:
            time.sleep(0.1)
    stop_service(service)
    raise RuntimeError(f"messenger serve did not become healthy:\n{service.log()}")


def stop_service(service: RunningService) -> None:
    if service.process.poll() is None:
        service.process.terminate()
        try:
            service.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    running = start_service(tmp_path_factory.mktemp("e2e"))
    yield running
    stop_service(running)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., RunningService]]:
    started: list[RunningService] = []

    def launch(**kwargs: Any) -> RunningService:
        running = start_service(tmp_path, **kwargs)
        started.append(running)
        return running

    yield launch
    for running in started:
        stop_service(running)


def rest(
    service: RunningService, user_id: str, method: str, path: str, body: Any = None, *, moderator: bool = False
) -> Any:
    """A REST call to the service as `user_id` would make it; the JSON answer (None for an empty one)."""
    request = urllib.request.Request(
        service.url + "/api/v1" + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Authorization": f"Bearer {service.token(user_id, moderator=moderator)}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
        return json.loads(raw) if raw else None
