"""ClamdClient and EmbeddedClamd against a real clamd with the bundled signatures.

These tests need Debian's clamav-daemon and clamav-testfiles; without them they fail,
never skip, because CI installs both.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

import scanner.embedded
from scanner import ClamdClient, ClamdUnavailable, EmbeddedClamd, Verdict

pytestmark = pytest.mark.asyncio(loop_scope="module")

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
TESTFILES_DIR = Path("/usr/share/clamav-testfiles")
INSTALL_HINT = "apt-get install -y clamav-daemon clamav-testfiles (CI installs them)"
SMALL_STREAM_LIMIT = 1 << 20
MISSING_TESTFILES = "<clamav-testfiles not installed>"


def _testfiles() -> list[str]:
    if not TESTFILES_DIR.is_dir():
        # A sentinel case, so the missing package shows up as a failure, not as 0 tests.
        return [MISSING_TESTFILES]
    return sorted(p.name for p in TESTFILES_DIR.iterdir() if p.is_file())


async def _start(workdir: Path, **kwargs: object) -> EmbeddedClamd:
    clamd = EmbeddedClamd(workdir, official_db_dir=None, **kwargs)  # type: ignore[arg-type]
    try:
        await clamd.start(timeout=20)
    except ClamdUnavailable as exc:
        pytest.fail(f"{exc}; these tests need a real clamd: {INSTALL_HINT}")
    return clamd


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def clamd(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedClamd]:
    # Bundled signatures only (official_db_dir=None): fast to start and the same on every
    # machine, whether or not an official database happens to be installed.
    server = await _start(tmp_path_factory.mktemp("clamd"))
    yield server
    await server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def small_clamd(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedClamd]:
    server = await _start(
        tmp_path_factory.mktemp("clamd-small"),
        stream_max_length=SMALL_STREAM_LIMIT,
        max_scan_size=2 * SMALL_STREAM_LIMIT,
    )
    yield server
    await server.stop()


@pytest.fixture
def client(clamd: EmbeddedClamd) -> ClamdClient:
    return ClamdClient(clamd.address, timeout=10)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


async def _generated(total: int, piece: int = 256 * 1024) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        size = min(piece, total - sent)
        sent += size
        yield os.urandom(size)


async def test_ping_and_version(client: ClamdClient) -> None:
    assert await client.ping() is True
    assert (await client.version()).startswith("ClamAV ")


async def test_eicar_plain(client: ClamdClient) -> None:
    result = await client.scan_bytes(EICAR)

    assert result.verdict is Verdict.INFECTED
    assert result.signature in ("Test.EICAR.HDB.UNOFFICIAL", "Test.EICAR.NDB.UNOFFICIAL")
    assert result.bytes_scanned == len(EICAR)


async def test_eicar_inside_a_zip(client: ClamdClient) -> None:
    data = _zip({"readme.txt": b"nothing to see\n", "dir/eicar.com": EICAR})

    result = await client.scan_bytes(data)

    assert result.verdict is Verdict.INFECTED
    assert result.signature is not None and "EICAR" in result.signature


async def test_eicar_at_an_offset_across_frames(clamd: EmbeddedClamd) -> None:
    # The string straddles a frame boundary, in the middle of random bytes.
    client = ClamdClient(clamd.address, chunk_size=64 * 1024)
    data = os.urandom(64 * 1024 - 30) + EICAR + os.urandom(200_000)

    result = await client.scan_bytes(data)

    assert result.verdict is Verdict.INFECTED
    assert result.signature == "Test.EICAR.NDB.UNOFFICIAL"


async def test_testfiles_package_is_complete() -> None:
    names = _testfiles()
    assert names != [MISSING_TESTFILES], f"{TESTFILES_DIR} missing: {INSTALL_HINT}"
    assert len(names) >= 40


@pytest.mark.parametrize("name", _testfiles())
async def test_every_clamav_testfile_is_infected(client: ClamdClient, name: str) -> None:
    path = TESTFILES_DIR / name
    assert path.is_file(), f"{path} missing: {INSTALL_HINT}"

    result = await client.scan_bytes(path.read_bytes())

    assert result.verdict is Verdict.INFECTED, result
    assert result.signature is not None


def _png() -> bytes:
    try:
        from PIL import Image
    except ImportError:
        return b"\x89PNG\r\n\x1a\n" + os.urandom(4096)
    image = Image.frombytes("RGB", (128, 128), os.urandom(128 * 128 * 3))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "kind",
    ["random", "png", "text", "empty", "zip of text", "eicar name without the string"],
)
async def test_clean_content(client: ClamdClient, kind: str) -> None:
    makers: dict[str, Callable[[], bytes]] = {
        "random": lambda: os.urandom(3 * 1024 * 1024 + 17),
        "png": _png,
        "text": lambda: ("Hello, this is a plain message.\n" * 2000).encode(),
        "empty": lambda: b"",
        "zip of text": lambda: _zip({"a.txt": b"hello\n" * 1000}),
        "eicar name without the string": lambda: b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE is a test",
    }
    data = makers[kind]()

    result = await client.scan_bytes(data)

    assert result.verdict is Verdict.CLEAN, result
    assert result.bytes_scanned == len(data)


async def test_streamed_generator_is_scanned(client: ClamdClient) -> None:
    result = await client.scan_stream(_generated(5 * 1024 * 1024 + 3))

    assert result.verdict is Verdict.CLEAN
    assert result.bytes_scanned == 5 * 1024 * 1024 + 3


async def test_concurrent_scans(client: ClamdClient) -> None:
    payloads = [EICAR if i % 2 else os.urandom(100_000) for i in range(20)]

    results = await asyncio.gather(*(client.scan_bytes(p) for p in payloads))

    assert [r.verdict for r in results] == [Verdict.INFECTED if i % 2 else Verdict.CLEAN for i in range(20)]


@pytest.mark.parametrize("chunk_size", [16 * 1024, 64 * 1024, 1 << 20])
async def test_clamd_stream_limit_is_unscannable(small_clamd: EmbeddedClamd, chunk_size: int) -> None:
    # Our limit is larger, so clamd itself refuses and closes mid-stream; its reply must be
    # read every time, whatever the frame size.
    client = ClamdClient(small_clamd.address, chunk_size=chunk_size, stream_max_length=100 * 1024 * 1024)
    for _ in range(5):
        result = await client.scan_stream(_generated(3 * SMALL_STREAM_LIMIT))

        assert result.verdict is Verdict.UNSCANNABLE, result
        assert result.reason is not None and "StreamMaxLength" in result.reason


async def test_just_under_clamd_stream_limit_is_scanned(small_clamd: EmbeddedClamd) -> None:
    client = ClamdClient(small_clamd.address)

    result = await client.scan_stream(_generated(SMALL_STREAM_LIMIT - 100))

    assert result.verdict is Verdict.CLEAN


async def test_client_limit_is_unscannable(client: ClamdClient, clamd: EmbeddedClamd) -> None:
    limited = ClamdClient(clamd.address, stream_max_length=SMALL_STREAM_LIMIT)

    result = await limited.scan_stream(_generated(2 * SMALL_STREAM_LIMIT))

    assert result.verdict is Verdict.UNSCANNABLE
    assert result.reason == f"larger than the scan limit of {SMALL_STREAM_LIMIT} bytes"
    assert await client.ping()  # clamd shrugged off the abandoned stream


async def test_eicar_beyond_the_extraction_limit_is_not_clean(small_clamd: EmbeddedClamd) -> None:
    # With clamd's default MaxFileSize below MaxScanSize this zip came back "OK": the inner
    # file was cut at MaxFileSize and EICAR, past the cut, never scanned.
    data = _zip({"zeros.bin": bytes(3 * SMALL_STREAM_LIMIT) + EICAR})
    assert len(data) < SMALL_STREAM_LIMIT

    result = await ClamdClient(small_clamd.address).scan_bytes(data)

    assert result.verdict is Verdict.UNSCANNABLE, result
    assert result.reason is not None and "Heuristics.Limits.Exceeded" in result.reason


@pytest.fixture
def encrypted_zip(tmp_path: Path) -> bytes:
    # zipfile cannot write encrypted archives, so this needs Info-ZIP's zip.
    zip_binary = shutil.which("zip")
    if zip_binary is None:
        pytest.skip("the zip binary is not installed (apt-get install zip); cannot make one")
    (tmp_path / "secret.txt").write_bytes(b"attack at dawn\n" * 100)
    subprocess.run([zip_binary, "-q", "-P", "password", "enc.zip", "secret.txt"], cwd=tmp_path, check=True)
    return (tmp_path / "enc.zip").read_bytes()


async def test_encrypted_zip_is_unscannable(client: ClamdClient, encrypted_zip: bytes) -> None:
    result = await client.scan_bytes(encrypted_zip)

    assert result.verdict is Verdict.UNSCANNABLE, result
    assert result.reason is not None and "Heuristics.Encrypted" in result.reason


async def test_stop_then_ping_false_and_scan_error(tmp_path: Path) -> None:
    server = await _start(tmp_path / "w")
    client = ClamdClient(server.address, timeout=2)
    assert (await client.scan_bytes(EICAR)).verdict is Verdict.INFECTED

    await server.stop()
    await server.stop()  # idempotent

    assert await client.ping() is False
    result = await client.scan_bytes(EICAR)
    assert result.verdict is Verdict.ERROR
    assert result.reason is not None and "cannot connect" in result.reason


async def test_long_workdir_uses_a_short_socket_path(tmp_path: Path) -> None:
    workdir = tmp_path / ("d" * 60) / ("e" * 60)
    server = await _start(workdir)
    try:
        socket_path = server.address.removeprefix("unix://")
        assert len(socket_path) < 100
        assert not socket_path.startswith(str(workdir))
        assert await ClamdClient(server.address).ping()
    finally:
        await server.stop()
    assert not Path(socket_path).parent.exists()


async def test_missing_binary_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scanner.embedded, "find_clamd_binary", lambda: None)

    with pytest.raises(ClamdUnavailable, match="apt-get install clamav-daemon"):
        await EmbeddedClamd(tmp_path).start()


async def test_missing_bundled_signatures_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without signatures clamd would exit at once ("No supported database files found").
    monkeypatch.setattr(scanner.embedded, "SIGNATURES_DIR", tmp_path / "empty")
    (tmp_path / "empty").mkdir()

    with pytest.raises(ClamdUnavailable, match="no bundled signatures"):
        await EmbeddedClamd(tmp_path / "w", official_db_dir=None).start()


async def test_clamd_exiting_at_start_is_reported(tmp_path: Path) -> None:
    official = tmp_path / "official"
    official.mkdir()
    (official / "main.cvd").write_bytes(b"this is not a cvd\n" * 100)

    with pytest.raises(ClamdUnavailable, match="exited with status"):
        await EmbeddedClamd(tmp_path / "w", official_db_dir=official).start(timeout=10)
