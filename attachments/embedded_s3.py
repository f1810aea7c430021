"""The embedded default's S3: an S3 API server (nanio, see embedded_s3_server.py) in a process of its
own, storing under `<data_dir>/s3`, with credentials made for this install on first start.

Layout of `root` (`<data_dir>/s3`): `objects/` (nanio's buckets: one file per object, written with
fsync and rename, so a completed upload survives kill -9), `credentials.json` (mode 0600),
`port` (reused on the next start so URLs granted before a restart still work), `server.pid`
and `server.log`. The server dies with the service, even on kill -9 of the service
(PR_SET_PDEATHSIG); a server left running by an older start is stopped before a new one starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import secrets
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from core.children import POLL_INTERVAL_SECONDS, die_with_parent, read_int, stop_child, stop_stale_process, tail

log = logging.getLogger(__name__)

SERVER_MODULE = "attachments.embedded_s3_server"


class EmbeddedS3Unavailable(Exception):
    """The embedded S3 server could not be started; the message says why and where its log is."""


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: str


class EmbeddedS3:
    def __init__(
        self, root: Path, *, port: int = 0, cors_origins: Sequence[str] = (), region: str = "us-east-1"
    ) -> None:
        self._root = Path(root)
        self._wanted_port = port
        self._origins = list(dict.fromkeys(cors_origins))
        self._region = region
        self._port: int | None = None
        self._credentials: S3Credentials | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def root(self) -> Path:
        return self._root

    @property
    def objects_dir(self) -> Path:
        return self._root / "objects"

    @property
    def endpoint_url(self) -> str:
        if self._port is None:
            raise RuntimeError("EmbeddedS3 has not been started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def credentials(self) -> S3Credentials:
        if self._credentials is None:
            raise RuntimeError("EmbeddedS3 has not been started")
        return self._credentials

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def cors_origins(self) -> list[str]:
        return list(self._origins)

    def allow_origins(self, origins: Sequence[str]) -> None:
        """Add web page origins for CORS (the service's own, known once it knows where it serves)."""
        self._origins = list(dict.fromkeys([*self._origins, *origins]))

    async def start(self, timeout: float = 20.0) -> str:  # noqa: ASYNC109 (part of the API)
        if self._process is not None and self._process.returncode is None:
            return self.endpoint_url
        self._root.mkdir(parents=True, exist_ok=True)
        marks = (SERVER_MODULE, str(self.objects_dir.resolve()))
        stop_stale_process(self._root / "server.pid", is_ours=lambda argv: all(m in " ".join(argv) for m in marks))
        self._credentials = load_or_create_credentials(self._root / "credentials.json")
        listener = self._bind()
        self._port = int(listener.getsockname()[1])
        (self._root / "port").write_text(f"{self._port}\n")
        log_path = self._root / "server.log"
        self._log = log_path.open("ab")
        command = [
            sys.executable,
            "-m",
            SERVER_MODULE,
            "--objects",
            str(self.objects_dir.resolve()),
            "--credentials",
            str((self._root / "credentials.json").resolve()),
            "--fd",
            str(listener.fileno()),
            "--region",
            self._region,
            *[arg for origin in self._origins for arg in ("--origin", origin)],
        ]
        try:
            self._process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                pass_fds=(listener.fileno(),),
                preexec_fn=die_with_parent(),
            )
        except OSError as exc:
            listener.close()
            await self.stop()
            raise EmbeddedS3Unavailable(f"cannot run the embedded S3 server: {exc}") from exc
        # The child has its own copy; ours would keep accepting connections nobody serves.
        listener.close()
        (self._root / "server.pid").write_text(f"{self._process.pid}\n")
        deadline = asyncio.get_running_loop().time() + timeout
        while not await answers_http(self._port):
            if self._process.returncode is not None or asyncio.get_running_loop().time() > deadline:
                code = self._process.returncode
                await self.stop()
                why = f"exited with status {code}" if code is not None else f"did not answer within {timeout:g} s"
                raise EmbeddedS3Unavailable(f"the embedded S3 server {why}: {tail(log_path)} (log: {log_path})")
            await asyncio.sleep(POLL_INTERVAL_SECONDS)
        log.info(
            "embedded S3 server pid %d ready at %s, files in %s",
            self._process.pid,
            self.endpoint_url,
            self.objects_dir,
            extra={"cors_origins": self._origins},
        )
        return self.endpoint_url

    async def stop(self) -> None:
        process, self._process = self._process, None
        await stop_child(process, "embedded S3 server")
        if process is not None:
            with contextlib.suppress(FileNotFoundError):
                (self._root / "server.pid").unlink()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _bind(self) -> socket.socket:
        """Listen on the configured port, else the one used last time, else any free one."""
        remembered = read_int(self._root / "port")
        candidates = [self._wanted_port] if self._wanted_port else [p for p in (remembered, 0) if p is not None]
        for index, port in enumerate(candidates):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind(("127.0.0.1", port))
            except OSError as exc:
                listener.close()
                if exc.errno != errno.EADDRINUSE or index == len(candidates) - 1:
                    raise EmbeddedS3Unavailable(f"cannot listen on 127.0.0.1:{port}: {exc}") from exc
                log.warning(
                    "port %d of the last start is taken; upload URLs granted before the restart must be"
                    " asked for again (POST /attachments/{id}/resume)",
                    port,
                )
                continue
            listener.listen(128)
            return listener
        raise AssertionError("unreachable")  # pragma: no cover


def load_or_create_credentials(path: Path) -> S3Credentials:
    """This install's key pair: made once with a CSPRNG, readable by this user only."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
            log.warning("%s was readable by others; it is now mode 0600", path)
        data = json.loads(path.read_text())
        return S3Credentials(data["access_key_id"], data["secret_access_key"])
    credentials = S3Credentials("MSG" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))
    with os.fdopen(fd, "w") as out:
        json.dump({"access_key_id": credentials.access_key_id, "secret_access_key": credentials.secret_access_key}, out)
        out.flush()
        os.fsync(out.fileno())
    log.info("made credentials for the embedded S3 server in %s", path)
    return credentials


async def answers_http(port: int) -> bool:
    """True once anything answers HTTP on the port (an unsigned request gets nanio's 403)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 1.0)
        return line.startswith(b"HTTP/")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
