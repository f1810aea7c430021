"""Supervises a private clamd (Debian's clamav-daemon binary) with a generated config and the
bundled test signatures, for the embedded default and for tests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

from core.children import POLL_INTERVAL_SECONDS, die_with_parent, stop_child, stop_stale_process, tail
from scanner.clamd_client import ClamdClient

logger = logging.getLogger(__name__)

SIGNATURES_DIR = Path(__file__).resolve().parent / "signatures"
# Text signature formats we ship; anything else in signatures/ (docs) stays out of the DB.
_BUNDLED_SUFFIXES = frozenset({".hdb", ".hsb", ".ndb", ".ldb", ".cdb", ".fp", ".sfp", ".ign2"})
_OFFICIAL_SUFFIXES = frozenset({".cvd", ".cld", ".cud"})
_CLAMD_PATHS = ("/usr/sbin/clamd",)
_INSTALL_HINT = "apt-get install clamav-daemon"
# sun_path holds 108 bytes with its NUL; stay clear of the edge.
_MAX_SOCKET_PATH = 100
# clamd clamps MaxFileSize to this itself ("technical design limitations", 2 GB).
_MAX_FILE_SIZE_CAP = 2_147_483_645
# Archives expand: allow several times the stream limit of extracted data, at least clamd's
# default.
_DEFAULT_MAX_SCAN_SIZE = 400 * 1024 * 1024


class ClamdUnavailable(Exception):
    """clamd cannot be started here; the message says what is missing."""


def find_clamd_binary() -> str | None:
    for path in _CLAMD_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("clamd")


class EmbeddedClamd:
    """Starts a private clamd (Debian's clamav-daemon binary) with a config it writes and the
    bundled test signatures, for the embedded default and tests.

    Everything lives in `workdir`: clamd.conf, db/ (bundled signatures plus links to the
    official database when one is installed), tmp/, clamd.log and clamd.stderr.log.
    max_scan_size (default: 4 x stream_max_length, at least 400 MiB, at most 2 GiB) bounds the
    data clamd extracts from one stream; content beyond it is reported UNSCANNABLE.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        stream_max_length: int = 100 * 1024 * 1024,
        official_db_dir: Path | None = Path("/var/lib/clamav"),
        max_scan_size: int | None = None,
    ) -> None:
        if stream_max_length <= 0:
            raise ValueError("stream_max_length must be positive")
        if max_scan_size is not None and max_scan_size <= 0:
            raise ValueError("max_scan_size must be positive")
        self._workdir = Path(workdir)
        self._stream_max_length = stream_max_length
        self._max_scan_size = max_scan_size
        self._official_db_dir = official_db_dir
        self._process: asyncio.subprocess.Process | None = None
        self._stderr: IO[bytes] | None = None
        self._socket_path: Path | None = None
        self._socket_tmpdir: Path | None = None

    @property
    def address(self) -> str:
        if self._socket_path is None:
            raise RuntimeError("EmbeddedClamd has not been started")
        return f"unix://{self._socket_path}"

    @property
    def workdir(self) -> Path:
        return self._workdir

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self, timeout: float = 30.0) -> str:  # noqa: ASYNC109 (part of the API)
        if self._process is not None and self._process.returncode is None:
            return self.address
        binary = find_clamd_binary()
        if binary is None:
            raise ClamdUnavailable(f"clamd not found: {_INSTALL_HINT}")
        # A clamd orphaned by an earlier start (its service killed before clamd died with it) still
        # holds clamd.log and the socket; a new one would start without scanning ("Failed to lock
        # the log file"). The caller holds the data dir, so such a clamd belongs to nobody.
        stop_stale_clamd(self._workdir.resolve())
        config = self._prepare()
        stderr_log = self._workdir / "clamd.stderr.log"
        self._stderr = stderr_log.open("ab")
        logger.info("starting %s with %s", binary, config)
        try:
            self._process = await asyncio.create_subprocess_exec(
                binary,
                f"--config-file={config}",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=self._stderr,
                stderr=self._stderr,
                # Dies with us, even on kill -9; spawned on the event loop's thread, whose exit is
                # what Linux takes as the parent's death.
                preexec_fn=die_with_parent(),
            )
        except OSError as exc:
            await self.stop()
            raise ClamdUnavailable(f"cannot run {binary}: {exc} ({_INSTALL_HINT})") from exc

        client = ClamdClient(self.address, timeout=1.0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await client.ping():
            if self._process.returncode is not None:
                code = self._process.returncode
                await self.stop()
                raise ClamdUnavailable(
                    f"clamd exited with status {code} before answering PING: "
                    f"{tail(stderr_log)} (full log: {stderr_log})"
                )
            if loop.time() >= deadline:
                await self.stop()
                raise ClamdUnavailable(
                    f"clamd did not answer PING within {timeout:g} s: {tail(stderr_log)} (full log: {stderr_log})"
                )
            await asyncio.sleep(POLL_INTERVAL_SECONDS)
        logger.info("clamd pid %d ready at %s", self._process.pid, self.address)
        return self.address

    async def stop(self) -> None:
        process, self._process = self._process, None
        await stop_child(process, "clamd")
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._socket_path.unlink()
        if self._socket_tmpdir is not None:
            shutil.rmtree(self._socket_tmpdir, ignore_errors=True)
            self._socket_tmpdir = None

    def _prepare(self) -> Path:
        """Write db/, tmp/ and clamd.conf into the workdir; return the config path."""
        workdir = self._workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        self._workdir = workdir
        db_dir = workdir / "db"
        # Start from an empty db/ so signatures from an earlier run cannot linger.
        shutil.rmtree(db_dir, ignore_errors=True)
        db_dir.mkdir()
        bundled = sorted(p for p in SIGNATURES_DIR.iterdir() if p.suffix in _BUNDLED_SUFFIXES)
        if not bundled:
            raise ClamdUnavailable(f"no bundled signatures in {SIGNATURES_DIR}")
        for path in bundled:
            shutil.copyfile(path, db_dir / path.name)
        official = self._official_files()
        for path in official:
            # A link, not a copy: the official database is hundreds of MB and freshclam
            # keeps it current in place; clamd's SelfCheck then reloads it.
            (db_dir / path.name).symlink_to(path)
        if official:
            logger.info("clamd uses the official database: %s", ", ".join(p.name for p in official))
        tmp_dir = workdir / "tmp"
        tmp_dir.mkdir(exist_ok=True)

        self._socket_path = self._choose_socket_path(workdir)
        with contextlib.suppress(FileNotFoundError):
            self._socket_path.unlink()

        scan_size = self._max_scan_size or max(_DEFAULT_MAX_SCAN_SIZE, 4 * self._stream_max_length)
        scan_size = min(scan_size, _MAX_FILE_SIZE_CAP)
        settings = {
            "Foreground": "yes",
            "DatabaseDirectory": str(db_dir),
            "TemporaryDirectory": str(tmp_dir),
            "LocalSocket": str(self._socket_path),
            # Only the user running us may connect to this private daemon.
            "LocalSocketMode": "600",
            "PidFile": str(workdir / "clamd.pid"),
            "LogFile": str(workdir / "clamd.log"),
            "LogTime": "yes",
            "LogFileMaxSize": "5M",
            "LogRotate": "yes",
            "StreamMaxLength": str(self._stream_max_length),
            # MaxFileSize equals MaxScanSize on purpose. clamd alerts (AlertExceedsMax) on a
            # stream over MaxFileSize and on extraction over MaxScanSize, but it silently cuts
            # a file inside an archive at MaxFileSize and says OK: with ClamAV 1.4.6 and the
            # default 100M, EICAR after 101 MiB of zeros in a zip came back "OK". With both
            # equal, extraction reaches MaxScanSize first and raises an alert instead.
            "MaxFileSize": str(scan_size),
            "MaxScanSize": str(scan_size),
            "AlertExceedsMax": "yes",
            "AlertEncrypted": "yes",
            "ScanArchive": "yes",
        }
        config = workdir / "clamd.conf"
        config.write_text("".join(f"{key} {value}\n" for key, value in settings.items()))
        return config

    def _official_files(self) -> list[Path]:
        directory = self._official_db_dir
        if directory is None or not directory.is_dir():
            return []
        return sorted(p.resolve() for p in directory.iterdir() if p.suffix in _OFFICIAL_SUFFIXES and p.is_file())

    def _choose_socket_path(self, workdir: Path) -> Path:
        candidate = workdir / "clamd.sock"
        if len(os.fsencode(candidate)) <= _MAX_SOCKET_PATH:
            return candidate
        if self._socket_tmpdir is None:
            self._socket_tmpdir = Path(tempfile.mkdtemp(prefix="clamd-", dir="/tmp"))
        return self._socket_tmpdir / "clamd.sock"


def stop_stale_clamd(workdir: Path) -> int | None:
    """Kill the clamd named by `workdir/clamd.pid` if it still runs on this workdir's config; its pid or None."""
    config = f"--config-file={workdir / 'clamd.conf'}"
    return stop_stale_process(workdir / "clamd.pid", is_ours=lambda argv: config in argv)
