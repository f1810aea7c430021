"""Asyncio client for clamd: streams content of any size through INSTREAM in constant memory
and turns clamd's replies into a ScanResult."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import AsyncIterable, AsyncIterator
from urllib.parse import urlsplit

from scanner.verdict import ScanResult, Verdict

logger = logging.getLogger(__name__)

_Bytes = bytes | bytearray | memoryview

_FRAME_HEADER = struct.Struct(">I")
_TERMINATOR = _FRAME_HEADER.pack(0)
# clamd's replies are one short line; anything longer is not clamd.
_MAX_REPLY = 64 * 1024
# After a failed write clamd's reply, if it sent one, is already in our receive buffer.
_REPLY_GRACE = 2.0
# Frames below this size go out in one write with their header; larger ones are not copied.
_COALESCE_BELOW = 64 * 1024
# One non-blocking send() to a clamd that reads as fast as we write can copy a whole 1 MiB
# frame and hold the event loop ~20 ms (measured); writing slices and yielding between them
# keeps each stall near 1 ms.
_MAX_WRITE = 128 * 1024
# Heuristic "detections" that mean clamd gave up on the content, not that it found malware.
_UNSCANNABLE_PREFIXES = ("Heuristics.Encrypted", "Heuristics.Limits.Exceeded")


class ClamdError(Exception):
    """clamd could not be reached or did not answer as clamd does."""


class _SendFailed(Exception):
    """A write to clamd failed; kept apart from errors raised by the caller's chunk iterator."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause) or type(cause).__name__)
        self.cause = cause


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def parse_instream_reply(reply: str, bytes_scanned: int) -> ScanResult:
    """Map one INSTREAM reply line (without its NUL) to a ScanResult."""
    if reply == "stream: OK":
        return ScanResult(Verdict.CLEAN, bytes_scanned=bytes_scanned)
    if reply.startswith("stream: ") and reply.endswith(" FOUND"):
        signature = reply[len("stream: ") : -len(" FOUND")].strip()
        if not signature:
            return ScanResult(Verdict.ERROR, reason=f"unexpected reply from clamd: {reply!r}")
        if signature.startswith(_UNSCANNABLE_PREFIXES) or "Exceeded" in signature:
            return ScanResult(
                Verdict.UNSCANNABLE,
                reason=f"clamd could not scan the content fully ({signature})",
                bytes_scanned=bytes_scanned,
            )
        return ScanResult(Verdict.INFECTED, signature=signature, bytes_scanned=bytes_scanned)
    if "size limit exceeded" in reply.lower():
        return ScanResult(
            Verdict.UNSCANNABLE,
            reason=f"larger than clamd's StreamMaxLength (clamd: {reply})",
        )
    if reply.endswith("ERROR"):
        return ScanResult(Verdict.ERROR, reason=f"clamd: {reply}")
    return ScanResult(Verdict.ERROR, reason=f"unexpected reply from clamd: {reply[:200]!r}")


class ClamdClient:
    """Talks to one clamd over TCP or a unix socket, one connection per request.

    It drives a plain non-blocking socket with loop.sock_* rather than asyncio streams:
    when clamd refuses a stream it writes its reply and closes, and our next write fails.
    A stream transport then drops the connection, reply unread (measured: lost on 56 of
    300 refused streams with 64 KiB frames), while the socket keeps the reply readable.
    """

    def __init__(
        self,
        address: str,
        *,
        chunk_size: int = 1 << 20,
        timeout: float = 30.0,
        stream_max_length: int = 100 * 1024 * 1024,
    ) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if stream_max_length <= 0:
            raise ValueError("stream_max_length must be positive")
        self._address = address
        self._unix_path, self._tcp = _parse_address(address)
        self._chunk_size = chunk_size
        self._timeout = timeout
        self._stream_max_length = stream_max_length

    @property
    def address(self) -> str:
        return self._address

    def __repr__(self) -> str:
        return f"ClamdClient({self._address!r})"

    async def ping(self) -> bool:
        try:
            return await self._command(b"PING") == "PONG"
        except (OSError, ClamdError) as exc:
            logger.debug("clamd at %s did not answer PING: %s", self._address, _describe(exc))
            return False

    async def version(self) -> str:
        try:
            return await self._command(b"VERSION")
        except OSError as exc:
            raise ClamdError(f"clamd at {self._address}: {_describe(exc)}") from exc

    async def scan_bytes(self, data: bytes) -> ScanResult:
        async def one_piece() -> AsyncIterator[bytes]:
            yield data

        return await self.scan_stream(one_piece())

    async def scan_stream(self, chunks: AsyncIterable[bytes]) -> ScanResult:
        """Scan everything `chunks` yields.

        Exceptions raised by `chunks` itself propagate: a failing source is the caller's
        to report, not a scanner error. If the content outgrows stream_max_length we stop
        iterating and answer UNSCANNABLE; closing the iterator stays with the caller.
        """
        try:
            sock = await self._connect()
        except OSError as exc:
            return self._error(f"cannot connect to clamd at {self._address}: {_describe(exc)}")
        try:
            return await self._instream(sock, chunks)
        finally:
            sock.close()

    async def _instream(self, sock: socket.socket, chunks: AsyncIterable[bytes]) -> ScanResult:
        total = 0
        send_failure: _SendFailed | None = None
        try:
            await self._send(sock, b"zINSTREAM\0")
            pending = bytearray()
            async for piece in chunks:
                if not piece:
                    continue
                total += len(piece)
                if total > self._stream_max_length:
                    # Closing without the terminator makes clamd drop what it has so far, so
                    # nothing is half-scanned and nobody can mistake the result for clean.
                    logger.info("stream exceeds %d bytes, not scanned", self._stream_max_length)
                    return ScanResult(
                        Verdict.UNSCANNABLE,
                        reason=f"larger than the scan limit of {self._stream_max_length} bytes",
                    )
                view = memoryview(piece)
                if pending:
                    take = self._chunk_size - len(pending)
                    pending += view[:take]
                    view = view[take:]
                    if len(pending) < self._chunk_size:
                        continue
                    await self._send_frame(sock, pending)
                    # A fresh buffer, since the sent one may still be exported to a view.
                    pending = bytearray()
                while len(view) >= self._chunk_size:
                    await self._send_frame(sock, view[: self._chunk_size])
                    view = view[self._chunk_size :]
                if view:
                    pending = bytearray(view)
            if pending:
                await self._send_frame(sock, pending)
            await self._send(sock, _TERMINATOR)
        except _SendFailed as failure:
            # clamd closes the connection after answering a stream it refuses (size limit);
            # its reply is waiting in the socket, so read it before calling this an error.
            logger.debug("write to clamd failed (%s), reading its reply", failure)
            send_failure = failure

        wait = min(self._timeout, _REPLY_GRACE) if send_failure else self._timeout
        try:
            reply = await self._read_reply(sock, wait)
        except (OSError, ClamdError) as exc:
            if send_failure is not None:
                return self._error(
                    "clamd closed the connection during the stream "
                    f"({_describe(send_failure.cause)}) without a reply ({_describe(exc)})"
                )
            return self._error(f"no verdict from clamd at {self._address}: {_describe(exc)}")
        result = parse_instream_reply(reply, total)
        logger.debug("clamd reply %r for %d bytes -> %s", reply, total, result.verdict)
        if result.verdict is Verdict.ERROR:
            logger.warning("clamd scan failed: %s", result.reason)
        return result

    def _error(self, reason: str) -> ScanResult:
        logger.warning("clamd scan failed: %s", reason)
        return ScanResult(Verdict.ERROR, reason=reason)

    async def _command(self, command: bytes) -> str:
        sock = await self._connect()
        try:
            try:
                await self._send(sock, b"z" + command + b"\0")
            except _SendFailed as failure:
                raise failure.cause from failure
            return await self._read_reply(sock, self._timeout)
        finally:
            sock.close()

    async def _connect(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        if self._unix_path is not None:
            return await self._connect_one(socket.AF_UNIX, 0, self._unix_path)
        assert self._tcp is not None
        host, port = self._tcp
        async with asyncio.timeout(self._timeout):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        last_error: OSError = OSError(f"no address found for {host}:{port}")
        for family, _type, proto, _canonname, sockaddr in infos:
            try:
                sock = await self._connect_one(family, proto, sockaddr)
            except OSError as exc:
                last_error = exc
                continue
            # The 4-byte terminator must not wait behind Nagle and delayed ACKs.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        raise last_error

    async def _connect_one(self, family: int, proto: int, sockaddr: str | tuple[object, ...]) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM, proto)
        try:
            sock.setblocking(False)
            async with asyncio.timeout(self._timeout):
                await asyncio.get_running_loop().sock_connect(sock, sockaddr)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _send_frame(self, sock: socket.socket, payload: _Bytes) -> None:
        view = memoryview(payload)
        header = _FRAME_HEADER.pack(view.nbytes)
        if view.nbytes < _COALESCE_BELOW:
            await self._send(sock, header + bytes(view))
        else:
            await self._send(sock, header)
            for start in range(0, view.nbytes, _MAX_WRITE):
                await self._send(sock, view[start : start + _MAX_WRITE])
                # sock_sendall returns without yielding when the kernel takes everything.
                await asyncio.sleep(0)

    async def _send(self, sock: socket.socket, data: _Bytes) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                # sock_sendall returns once the kernel took every byte: that is the
                # backpressure, and nothing queues up in user space.
                await asyncio.get_running_loop().sock_sendall(sock, data)
        except OSError as exc:  # TimeoutError included
            raise _SendFailed(exc) from exc

    async def _read_reply(self, sock: socket.socket, wait: float) -> str:
        loop = asyncio.get_running_loop()
        buf = bytearray()
        async with asyncio.timeout(wait):
            while b"\0" not in buf:
                data = await loop.sock_recv(sock, 4096)
                if not data:
                    break
                buf += data
                if len(buf) > _MAX_REPLY:
                    raise ClamdError(f"reply longer than {_MAX_REPLY} bytes, not clamd")
        end = buf.find(b"\0")
        raw = bytes(buf if end < 0 else buf[:end])
        if not raw.strip():
            raise ClamdError("connection closed without a reply")
        try:
            return raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise ClamdError(f"reply is not text: {raw[:80]!r}") from exc


def _parse_address(address: str) -> tuple[str | None, tuple[str, int] | None]:
    """Split "tcp://host:port", "unix:///path" or a bare socket path."""
    if address.startswith("tcp://"):
        parts = urlsplit(address)
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad clamd address {address!r}: {exc}") from exc
        if not parts.hostname or port is None:
            raise ValueError(f"bad clamd address {address!r}: expected tcp://host:port")
        return None, (parts.hostname, port)
    if address.startswith("unix://"):
        path = address[len("unix://") :]
        if not path.startswith("/"):
            raise ValueError(f"bad clamd address {address!r}: expected unix:///absolute/path")
        return path, None
    if "://" in address or not address:
        raise ValueError(f"bad clamd address {address!r}: use tcp://, unix:// or a socket path")
    return address, None
