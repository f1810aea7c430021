"""ClamdClient against a fake clamd written here: INSTREAM framing byte for byte, reply
parsing, and every way the connection can fail."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from scanner import ClamdClient, ClamdError, ScanResult, Verdict, parse_instream_reply


@dataclass
class Session:
    """What one client connection sent to the fake clamd."""

    command: bytes = b""
    raw: bytearray = field(default_factory=bytearray)
    frames: list[int] = field(default_factory=list)
    payload: bytearray = field(default_factory=bytearray)
    terminated: bool = False


class FakeClamd:
    """Speaks just enough of clamd's protocol to record and script conversations.

    reply: what to answer after the stream (None: never answer).
    refuse_after: like clamd's StreamMaxLength, answer "size limit exceeded" and close as soon
    as more than this many payload bytes arrived, leaving the rest unread.
    """

    def __init__(self) -> None:
        self.reply: bytes | None = b"stream: OK\0"
        self.refuse_after: int | None = None
        self.sessions: list[Session] = []
        self.server: asyncio.Server | None = None
        self.release = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []

    async def start_tcp(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"tcp://127.0.0.1:{port}"

    async def start_unix(self, path: Path) -> str:
        self.server = await asyncio.start_unix_server(self._handle, str(path))
        return str(path)

    async def close(self) -> None:
        self.release.set()
        for writer in self._writers:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        session = Session()
        self.sessions.append(session)
        try:
            session.command = await reader.readuntil(b"\0")
            session.raw += session.command
            if session.command == b"zPING\0":
                writer.write(b"PONG\0")
            elif session.command == b"zVERSION\0":
                writer.write(b"ClamAV 1.4.6/27000/Fake\0")
            elif session.command == b"zINSTREAM\0":
                if await self._read_stream(reader, session):
                    writer.write(b"INSTREAM size limit exceeded. ERROR\0")
                    await writer.drain()
                    return
                if self.reply is None:
                    await self.release.wait()
                    return
                writer.write(self.reply)
            else:
                writer.write(b"UNKNOWN COMMAND\0")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _read_stream(self, reader: asyncio.StreamReader, session: Session) -> bool:
        """Read frames up to the terminator; True if refused for size like clamd does."""
        while True:
            header = await reader.readexactly(4)
            session.raw += header
            (length,) = struct.unpack(">I", header)
            if length == 0:
                session.terminated = True
                return False
            data = await reader.readexactly(length)
            session.raw += data
            session.frames.append(length)
            session.payload += data
            if self.refuse_after is not None and len(session.payload) > self.refuse_after:
                return True


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeClamd]:
    server = FakeClamd()
    yield server
    await server.close()


async def pieces(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


def frame(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


@pytest.mark.asyncio
async def test_framing_byte_for_byte(fake: FakeClamd) -> None:
    address = await fake.start_tcp()
    client = ClamdClient(address, chunk_size=10)
    parts = [b"abc", b"d" * 25, b"", b"efghijk", b"l"]
    data = b"".join(parts)

    result = await client.scan_stream(pieces(parts))

    assert result == ScanResult(Verdict.CLEAN, bytes_scanned=36)
    session = fake.sessions[0]
    assert session.frames == [10, 10, 10, 6]
    assert bytes(session.raw) == (
        b"zINSTREAM\0" + frame(data[0:10]) + frame(data[10:20]) + frame(data[20:30]) + frame(data[30:36]) + b"\0\0\0\0"
    )


@pytest.mark.asyncio
async def test_large_piece_is_split_into_chunk_size_frames(fake: FakeClamd) -> None:
    address = await fake.start_tcp()
    client = ClamdClient(address, chunk_size=1 << 20)
    data = bytes(range(256)) * (5 * 4096 + 7)  # 5 MiB + 1792 bytes, one piece

    result = await client.scan_bytes(data)

    assert result.verdict is Verdict.CLEAN
    assert result.bytes_scanned == len(data)
    session = fake.sessions[0]
    assert session.frames == [1 << 20] * 5 + [1792]
    assert session.payload == data
    assert session.terminated


@pytest.mark.asyncio
async def test_empty_content_sends_only_the_terminator(fake: FakeClamd) -> None:
    address = await fake.start_tcp()

    result = await ClamdClient(address).scan_bytes(b"")

    assert result.verdict is Verdict.CLEAN
    assert bytes(fake.sessions[0].raw) == b"zINSTREAM\0\0\0\0\0"


@pytest.mark.parametrize(
    ("reply", "verdict", "signature", "reason_part"),
    [
        (b"stream: OK\0", Verdict.CLEAN, None, None),
        (b"stream: Eicar-Signature FOUND\0", Verdict.INFECTED, "Eicar-Signature", None),
        (
            b"stream: Test.EICAR.HDB.UNOFFICIAL FOUND\0",
            Verdict.INFECTED,
            "Test.EICAR.HDB.UNOFFICIAL",
            None,
        ),
        (b"INSTREAM size limit exceeded. ERROR\0", Verdict.UNSCANNABLE, None, "StreamMaxLength"),
        (b"stream: Heuristics.Encrypted.Zip FOUND\0", Verdict.UNSCANNABLE, None, "Encrypted.Zip"),
        (b"stream: Heuristics.Encrypted.PDF FOUND\0", Verdict.UNSCANNABLE, None, "Encrypted.PDF"),
        (
            b"stream: Heuristics.Limits.Exceeded.MaxFileSize FOUND\0",
            Verdict.UNSCANNABLE,
            None,
            "Limits.Exceeded.MaxFileSize",
        ),
        # A real heuristic detection is malware, not a limit.
        (
            b"stream: Heuristics.Phishing.Email.SpoofedDomain FOUND\0",
            Verdict.INFECTED,
            "Heuristics.Phishing.Email.SpoofedDomain",
            None,
        ),
        (b"stream: Can't allocate memory ERROR\0", Verdict.ERROR, None, "allocate memory"),
        (b"stream: OK", Verdict.CLEAN, None, None),  # closed without the NUL: still a reply
        (b"HELLO\0", Verdict.ERROR, None, "unexpected reply"),
        (b"stream:  FOUND\0", Verdict.ERROR, None, "unexpected reply"),
        (b"\xff\xfe\x00", Verdict.ERROR, None, "not text"),
        (b"", Verdict.ERROR, None, "without a reply"),
        (b"x" * 70_000, Verdict.ERROR, None, "reply longer"),
    ],
)
@pytest.mark.asyncio
async def test_reply_parsing(
    fake: FakeClamd,
    reply: bytes,
    verdict: Verdict,
    signature: str | None,
    reason_part: str | None,
) -> None:
    fake.reply = reply
    address = await fake.start_tcp()

    result = await ClamdClient(address, timeout=2).scan_bytes(b"some content")

    assert result.verdict is verdict
    assert result.signature == signature
    if reason_part is None:
        assert result.reason is None
    else:
        assert result.reason is not None and reason_part in result.reason
    if verdict in (Verdict.CLEAN, Verdict.INFECTED):
        assert result.bytes_scanned == len(b"some content")


def test_parse_instream_reply_directly() -> None:
    assert parse_instream_reply("stream: OK", 5) == ScanResult(Verdict.CLEAN, bytes_scanned=5)
    found = parse_instream_reply("stream: Win.Test.EICAR_HDB-1 FOUND", 68)
    assert found == ScanResult(Verdict.INFECTED, signature="Win.Test.EICAR_HDB-1", bytes_scanned=68)


@pytest.mark.asyncio
async def test_clamd_refusing_mid_stream_is_unscannable_not_an_error(fake: FakeClamd) -> None:
    # clamd answers "size limit exceeded" and closes while we are still writing; the reply
    # must be read even though our writes fail. Small frames make the race likely.
    fake.refuse_after = 200_000
    address = await fake.start_tcp()
    client = ClamdClient(address, chunk_size=16 * 1024, stream_max_length=50 << 20)

    for _ in range(10):
        result = await client.scan_bytes(bytes(3 << 20))
        assert result.verdict is Verdict.UNSCANNABLE, result
        assert result.reason is not None and "StreamMaxLength" in result.reason


@pytest.mark.asyncio
async def test_over_client_limit_is_unscannable_and_never_terminated(fake: FakeClamd) -> None:
    address = await fake.start_tcp()
    client = ClamdClient(address, chunk_size=1000, stream_max_length=5000)

    result = await client.scan_stream(pieces([b"a" * 3000, b"b" * 3000, b"c" * 3000]))

    assert result.verdict is Verdict.UNSCANNABLE
    assert result.reason == "larger than the scan limit of 5000 bytes"
    assert result.bytes_scanned == 0
    await asyncio.sleep(0.05)  # let the fake read what was sent before the close
    session = fake.sessions[0]
    # clamd never saw the terminator, so it cannot have answered on partial content.
    assert not session.terminated
    assert len(session.payload) <= 5000


@pytest.mark.asyncio
async def test_exactly_at_the_limit_is_scanned(fake: FakeClamd) -> None:
    address = await fake.start_tcp()
    client = ClamdClient(address, chunk_size=1000, stream_max_length=5000)

    result = await client.scan_stream(pieces([b"a" * 2500, b"b" * 2500]))

    assert result.verdict is Verdict.CLEAN
    assert fake.sessions[0].frames == [1000] * 5


@pytest.mark.asyncio
async def test_connection_refused_is_error_and_ping_false() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = ClamdClient(f"tcp://127.0.0.1:{port}", timeout=2)

    result = await client.scan_bytes(b"data")

    assert result.verdict is Verdict.ERROR
    assert result.reason is not None and "cannot connect" in result.reason
    assert await client.ping() is False
    with pytest.raises(ClamdError):
        await client.version()


@pytest.mark.asyncio
async def test_missing_unix_socket_is_error(tmp_path: Path) -> None:
    client = ClamdClient(str(tmp_path / "nothing.sock"))

    assert (await client.scan_bytes(b"data")).verdict is Verdict.ERROR
    assert await client.ping() is False


@pytest.mark.asyncio
async def test_server_that_never_answers_times_out(fake: FakeClamd) -> None:
    fake.reply = None
    address = await fake.start_tcp()
    client = ClamdClient(address, timeout=0.3)

    started = time.monotonic()
    result = await client.scan_bytes(b"data")
    elapsed = time.monotonic() - started

    assert result.verdict is Verdict.ERROR
    assert result.reason is not None and "TimeoutError" in result.reason
    assert elapsed < 2


@pytest.mark.asyncio
async def test_server_that_stops_reading_times_out() -> None:
    # A peer that accepts but never reads: the writes stall and must time out too.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = ClamdClient(f"tcp://127.0.0.1:{port}", timeout=0.3, stream_max_length=1 << 30)

        started = time.monotonic()
        result = await client.scan_bytes(bytes(64 << 20))

    assert result.verdict is Verdict.ERROR
    assert time.monotonic() - started < 5


@pytest.mark.asyncio
async def test_ping_and_version(fake: FakeClamd) -> None:
    address = await fake.start_tcp()
    client = ClamdClient(address)

    assert await client.ping() is True
    assert await client.version() == "ClamAV 1.4.6/27000/Fake"
    assert [s.command for s in fake.sessions] == [b"zPING\0", b"zVERSION\0"]


@pytest.mark.asyncio
async def test_unix_socket_address_forms(fake: FakeClamd, tmp_path: Path) -> None:
    path = await fake.start_unix(tmp_path / "c.sock")

    assert await ClamdClient(path).ping()
    assert await ClamdClient(f"unix://{path}").ping()
    result = await ClamdClient(f"unix://{path}").scan_bytes(b"x")
    assert result.verdict is Verdict.CLEAN


@pytest.mark.parametrize(
    "address", ["", "tcp://127.0.0.1", "tcp://:3310", "http://x:1", "unix://relative", "tcp://h:x"]
)
def test_bad_addresses_are_rejected(address: str) -> None:
    with pytest.raises(ValueError):
        ClamdClient(address)


@pytest.mark.asyncio
async def test_source_errors_propagate(fake: FakeClamd) -> None:
    address = await fake.start_tcp()

    async def failing() -> AsyncIterator[bytes]:
        yield b"first"
        raise ConnectionResetError("S3 went away")

    with pytest.raises(ConnectionResetError, match="S3 went away"):
        await ClamdClient(address).scan_stream(failing())


@pytest.mark.asyncio
async def test_cancellation_closes_the_connection(fake: FakeClamd) -> None:
    fake.reply = None
    address = await fake.start_tcp()
    task = asyncio.create_task(ClamdClient(address).scan_bytes(b"data"))
    await asyncio.sleep(0.1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()
