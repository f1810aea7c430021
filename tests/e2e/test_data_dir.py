"""MESSENGER_DATA_DIR with a real `messenger serve`: kill -9 takes the embedded S3 server and clamd with
it, a restart on the same directory keeps the files and scans again, and a second service on the same
directory is refused.

Regression for issue 9 item 3: kill -9 of `serve` used to orphan clamd, and the next start ran with
/readyz 503 and never scanned ("Failed to lock the log file").
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from scanner.embedded import find_clamd_binary
from tests.e2e.conftest import REPO, RunningService, free_port, start_service, stop_service
from tests.e2e.test_chat_python_client import open_conversation, rest
from tests.support.processes import process_gone

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 120, 200)).save(out, format="PNG")
    return out.getvalue()


PNG = png()


def readyz(service: RunningService, within: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(service.url + "/readyz", timeout=5) as response:
                return dict(json.load(response))
        except urllib.error.HTTPError as exc:
            last = json.load(exc)
        time.sleep(0.1)
    pytest.fail(f"/readyz never 200: {last}\n{service.log()[-3000:]}")


def put(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, method="PUT", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def upload(service: RunningService, conversation_id: str, content: bytes, filename: str, content_type: str) -> str:
    grant = rest(
        service,
        "seller",
        "POST",
        "/attachments",
        {"conversation_id": conversation_id, "filename": filename, "size": len(content), "content_type": content_type},
    )
    assert grant["upload"]["method"] == "PUT"
    assert put(grant["upload"]["url"], content, grant["upload"]["headers"]) == 200
    done = rest(service, "seller", "POST", f"/attachments/{grant['attachment']['id']}/complete", {})
    assert done["status"] == "uploaded", done
    return str(grant["attachment"]["id"])


def status_becomes(service: RunningService, attachment_id: str, wanted: str, within: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + within
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        seen = rest(service, "seller", "GET", f"/attachments/{attachment_id}")
        if seen["status"] == wanted:
            return seen
        time.sleep(0.1)
    pytest.fail(f"attachment stayed {seen.get('status')}, wanted {wanted}: {seen}\n{service.log()[-3000:]}")


def pid_in(path: Path) -> int:
    return int(path.read_text().strip())


@pytest.fixture
def clamd_installed() -> None:
    if find_clamd_binary() is None:
        pytest.fail("clamd is not installed: apt-get install clamav-daemon (make test does)")


def test_kill_9_of_serve_takes_its_children_and_a_restart_keeps_files_and_scans(
    tmp_path: Path, clamd_installed: None
) -> None:
    data = tmp_path / "service-data"
    first = start_service(tmp_path)
    try:
        assert readyz(first)["checks"] == {"sqlite": "ok", "s3": "ok", "clamd": "ok"}
        conversation = open_conversation(first, "buyer", "seller")
        kept = upload(first, conversation, PNG, "logo.png", "image/png")
        status_becomes(first, kept, "ready")
        clamd_pid, s3_pid = pid_in(data / "clamd" / "clamd.pid"), pid_in(data / "s3" / "server.pid")

        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=5)
        assert process_gone(clamd_pid), "clamd outlived messenger serve (kill -9)"
        assert process_gone(s3_pid), "the embedded S3 server outlived messenger serve (kill -9)"
    finally:
        stop_service(first)

    second = start_service(tmp_path)
    try:
        assert readyz(second)["status"] == "ready"
        # The bytes of the upload completed before the kill are still there, served by the new S3 server.
        assert key_bytes(data, f"conversations/{conversation}/{kept}") == PNG
        # And the new clamd scans.
        conversation = open_conversation(second, "buyer", "seller")
        infected = status_becomes(second, upload(second, conversation, EICAR, "eicar.txt", "text/plain"), "infected")
        assert infected["scan"]["signature"]
        assert "Failed to lock" not in (data / "clamd" / "clamd.log").read_text(errors="replace")
    finally:
        stop_service(second)


def key_bytes(data: Path, key: str) -> bytes:
    """Read an object with the install's own credentials (what the service would do)."""
    import asyncio

    from attachments.storage import S3Storage
    from config.settings import S3Settings

    credentials = json.loads((data / "s3" / "credentials.json").read_text())
    endpoint = f"http://127.0.0.1:{(data / 's3' / 'port').read_text().strip()}"

    async def read() -> bytes:
        storage = S3Storage(S3Settings(bucket="messenger-attachments"))
        storage.use_endpoint(
            endpoint,
            access_key_id=credentials["access_key_id"],
            secret_access_key=credentials["secret_access_key"],
        )
        await storage.start()
        try:
            head = await storage.head(key)
            assert head is not None, f"{key} is gone"
            return await storage.read_range(key, 0, head.size)
        finally:
            await storage.close()

    return asyncio.run(read())


def test_a_clamd_left_by_an_earlier_start_is_stopped_and_scanning_works(tmp_path: Path, clamd_installed: None) -> None:
    data = tmp_path / "service-data"
    stop_service(start_service(tmp_path))  # writes clamd.conf
    binary = find_clamd_binary()
    assert binary is not None
    # What kill -9 of an older version left behind: a clamd nobody owns on the data dir's config.
    orphan = subprocess.Popen(
        [binary, f"--config-file={data / 'clamd' / 'clamd.conf'}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not (data / "clamd" / "clamd.pid").exists() or pid_in(data / "clamd" / "clamd.pid") != orphan.pid:
            assert time.monotonic() < deadline and orphan.poll() is None, "the stand-in orphan clamd did not start"
            time.sleep(0.05)
        service = start_service(tmp_path)
        try:
            assert readyz(service)["status"] == "ready"
            assert orphan.wait(timeout=5) == -signal.SIGKILL
            assert "left running by an earlier start" in service.log()
            conversation = open_conversation(service, "buyer", "seller")
            status_becomes(service, upload(service, conversation, EICAR, "eicar.txt", "text/plain"), "infected")
        finally:
            stop_service(service)
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


def test_a_second_serve_on_the_same_data_dir_is_refused(tmp_path: Path, clamd_installed: None) -> None:
    first = start_service(tmp_path)
    try:
        readyz(first)
        environment = {**os.environ, "MESSENGER_DATA_DIR": str(tmp_path / "service-data")}
        second = subprocess.run(
            [sys.executable, "-m", "messenger", "serve", "--port", str(free_port())],
            cwd=REPO,
            env=environment,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert second.returncode == 1, second.stderr
        assert str(tmp_path / "service-data") in second.stderr and f"pid {first.process.pid}" in second.stderr
        assert "MESSENGER_DATA_DIR" in second.stderr
        # The first one is untouched and still serves its files.
        assert readyz(first)["status"] == "ready"
    finally:
        stop_service(first)
