"""A strict S3 for tests: LocalStack's S3 runtime with signature validation, run as a subprocess.

moto accepts any signature, any expiry and any POST policy, so it cannot prove that a limit the
service signs into a URL holds. LocalStack's S3 provider checks SigV4 query signatures, expiry and
POST policy conditions. It pins a botocore other than aioboto3's, so it lives in a venv of its own
(made once, reused), and runs as a separate process on a free loopback port.

The venv is made by `make test-deps` (`python -m tests.integration.strict_s3`), not by the tests.
If it is missing, or LocalStack does not come up, the fixture fails with the reason and the tail
of the relevant log: these tests must never silently skip.

Use it from a test module with `from tests.integration.strict_s3 import strict_s3_fixture  # noqa: F401`
and a `strict_s3` argument.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

# localstack-core 4.13.1 is the newest release that runs on Python 3.11 (later ones use 3.12 syntax);
# the other pins keep its dependencies importable together. Measured: about 25 s and 200 MB, once.
REQUIREMENTS = (
    "localstack-core[base-runtime]==4.13.1",
    "cbor2<6",
    "pyopenssl==25.3.0",
    "cryptography>=45.0.7,<47",
)
VENV_ENV_VAR = "MESSENGER_LOCALSTACK_VENV"
DEFAULT_VENV = Path.home() / ".cache" / "messenger" / "localstack-venv"
# Written last, after a successful install: a venv without it is a broken earlier attempt.
READY_MARKER = ".messenger-localstack-ready"
INSTALL_TIMEOUT_SECONDS = 240
LOCK_TIMEOUT_SECONDS = INSTALL_TIMEOUT_SECONDS + 60
START_TIMEOUT_SECONDS = 60
# LocalStack hung on SIGTERM about once in ten runs; after this it is killed.
STOP_GRACE_SECONDS = 10
LOG_TAIL_LINES = 40


class StrictS3Endpoint(str):
    """The endpoint URL (a plain str), plus where LocalStack logs, for failure messages."""

    log_path: Path

    def __new__(cls, url: str, log_path: Path) -> StrictS3Endpoint:
        endpoint = super().__new__(cls, url)
        endpoint.log_path = log_path
        return endpoint

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return _tail(self.log_path, lines)


def venv_dir() -> Path:
    return Path(os.environ.get(VENV_ENV_VAR) or DEFAULT_VENV).expanduser()


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log at {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def _exclusive(lock_path: Path, timeout: float) -> Iterator[None]:
    """An flock shared by every pytest process on the machine, so parallel runs install only once."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"waited {timeout:.0f} s for {lock_path}: another run seems stuck installing LocalStack",
                        pytrace=False,
                    )
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_venv() -> Path:
    """The venv's python, creating the venv if it is missing or a previous install did not finish."""
    venv = venv_dir()
    marker = venv / READY_MARKER
    wanted = "\n".join(REQUIREMENTS)
    with _exclusive(venv.parent / f"{venv.name}.lock", LOCK_TIMEOUT_SECONDS):
        if marker.is_file() and marker.read_text() == wanted and venv_python(venv).exists():
            return venv_python(venv)
        shutil.rmtree(venv, ignore_errors=True)  # a half-made venv would fail in confusing ways
        log_path = venv.parent / f"{venv.name}-install.log"
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            # Short network timeouts so a machine without the registry fails in seconds, not minutes.
            [str(venv_python(venv)), "-m", "pip", "install", "--retries", "1", "--timeout", "30", *REQUIREMENTS],
        ]
        with log_path.open("w") as log:
            for step in steps:
                log.write(f"$ {' '.join(step)}\n")
                log.flush()
                try:
                    result = subprocess.run(
                        step, stdout=log, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_SECONDS, check=False
                    )
                    failure = f"exit status {result.returncode}" if result.returncode else ""
                except subprocess.TimeoutExpired:
                    failure = f"no result after {INSTALL_TIMEOUT_SECONDS} s"
                if failure:
                    log.close()
                    shutil.rmtree(venv, ignore_errors=True)
                    pytest.fail(
                        f"could not make the LocalStack venv at {venv} ({failure}) running: {' '.join(step)}\n"
                        f"These tests need the Python package registry once, to install {', '.join(REQUIREMENTS)};"
                        f" set {VENV_ENV_VAR} to reuse a venv made elsewhere. Install log {log_path}, last lines:\n"
                        f"{_tail(log_path)}",
                        pytrace=False,
                    )
        marker.write_text(wanted)
        return venv_python(venv)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _s3_running(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/_localstack/health", timeout=2) as response:
            health = json.load(response)
    except (OSError, ValueError):  # not listening yet, or mid-start: try again
        return False
    return health.get("services", {}).get("s3") in ("running", "available")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        # It runs in a session of its own: kill its whole group, which holds only what it started.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_GRACE_SECONDS)


def installed_venv() -> Path:
    """The venv's python, as `make test-deps` made it; the tests install nothing themselves."""
    venv = venv_dir()
    marker = venv / READY_MARKER
    wanted = "\n".join(REQUIREMENTS)
    if not (marker.is_file() and marker.read_text() == wanted and venv_python(venv).exists()):
        raise RuntimeError(f"the LocalStack venv at {venv} is missing or out of date: run `make test-deps`")
    return venv_python(venv)


@contextlib.contextmanager
def run_localstack(workdir: Path) -> Iterator[StrictS3Endpoint]:
    python = installed_venv()
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    tmp = workdir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "localstack.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(workdir)),
        "LANG": "C.UTF-8",
        # Objects go under TMPDIR, not under FILESYSTEM_ROOT: both point into this run's directory.
        "TMPDIR": str(tmp),
        "SERVICES": "s3",
        # hypercorn binds the loopback address only; the default server listens on every interface.
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "GATEWAY_SERVER": "hypercorn",
        "S3_SKIP_SIGNATURE_VALIDATION": "0",  # the whole point: check presigned URLs
        "DISABLE_EVENTS": "1",
        "DNS_ADDRESS": "0",
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        "FILESYSTEM_ROOT": str(workdir / "root"),
        "EAGER_SERVICE_LOADING": "1",
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(python), "-m", "localstack.runtime.main"],
            env=env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            while not _s3_running(endpoint):
                if process.poll() is not None:
                    pytest.fail(
                        f"LocalStack exited with status {process.returncode} before S3 was ready;"
                        f" log {log_path}, last lines:\n{_tail(log_path)}",
                        pytrace=False,
                    )
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"LocalStack S3 not ready at {endpoint} after {START_TIMEOUT_SECONDS} s;"
                        f" log {log_path}, last lines:\n{_tail(log_path)}",
                        pytrace=False,
                    )
                time.sleep(0.2)
            yield StrictS3Endpoint(endpoint, log_path)
        finally:
            _stop(process)


@pytest.fixture(scope="module", name="strict_s3")
def strict_s3_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StrictS3Endpoint]:
    """The endpoint URL of a LocalStack S3 that validates signatures, for the whole test module."""
    with run_localstack(tmp_path_factory.mktemp("localstack")) as endpoint:
        yield endpoint


if __name__ == "__main__":  # `make test-deps`: make (or confirm) the venv once
    print(f"LocalStack venv ready: {ensure_venv()}")
