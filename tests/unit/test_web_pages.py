"""The web app's pages as served: which pages may be framed, by whom, and where the socket.io client is found."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from config.settings import ConfigError, load_settings
from messenger import web as web_module
from messenger.web import WebClient

S3 = "http://127.0.0.1:9000"
HOST = "https://market.example"


async def client_for(aiohttp_client: Any, **kwargs: Any) -> Any:
    app = web.Application()
    WebClient(s3_origins=[S3], socketio_client=Path(__file__), **kwargs).register(app)
    return await aiohttp_client(app)


async def test_only_the_embed_page_may_be_framed_and_only_by_the_configured_hosts(aiohttp_client: object) -> None:
    client = await client_for(aiohttp_client, embed_origins=[HOST])
    for path in ("/", "/moderation"):
        response = await client.get(path)
        assert response.status == 200
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY"
    embed = await client.get("/embed?conversation=c1")
    assert embed.status == 200 and "X-Frame-Options" not in embed.headers
    assert f"frame-ancestors {HOST}" in embed.headers["Content-Security-Policy"]
    assert "script-src 'self'" in embed.headers["Content-Security-Policy"]
    # The page learns which parent may hand it a token.
    assert f'<meta name="messenger-embed-origins" content="{HOST}">' in await embed.text()


async def test_without_configured_hosts_nobody_may_frame_the_embed_page(aiohttp_client: object) -> None:
    client = await client_for(aiohttp_client, embed_origins=[])
    embed = await client.get("/embed")
    assert "frame-ancestors 'none'" in embed.headers["Content-Security-Policy"]


def test_embed_origins_come_from_the_environment_and_must_be_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESSENGER_EMBED_ORIGINS", "https://a.example, http://localhost:3000/")
    assert load_settings().runtime.embed_origins == ["https://a.example", "http://localhost:3000"]
    monkeypatch.setenv("MESSENGER_EMBED_ORIGINS", 'https://a.example/path "><script>')
    with pytest.raises(ConfigError, match=r"MESSENGER_EMBED_ORIGINS: .*not an origin .*https://a.example/path"):
        load_settings()
    monkeypatch.delenv("MESSENGER_EMBED_ORIGINS")
    assert load_settings().runtime.embed_origins == []


async def test_the_page_is_framed_by_the_configured_embed_origins(
    aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESSENGER_EMBED_ORIGINS", HOST)
    app = web.Application()
    WebClient.for_settings(load_settings()).register(app)
    embed = await (await aiohttp_client(app)).get("/embed")
    assert f"frame-ancestors {HOST}" in embed.headers["Content-Security-Policy"]


def test_the_socketio_client_is_found_in_the_checkout_it_is_run_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESSENGER_SOCKETIO_JS", raising=False)
    monkeypatch.setattr(web_module, "REPO", tmp_path / "site-packages")
    monkeypatch.chdir(tmp_path)
    assert web_module.find_socketio_client() is None
    built = tmp_path / web_module.WEB_SOCKETIO_CLIENT
    built.parent.mkdir(parents=True)
    built.write_text("/* socket.io */")
    assert web_module.find_socketio_client() == built
