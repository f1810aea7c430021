"""GET /api/v1/openapi.json describes exactly the routes the app serves, with bodies, answers and error codes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestClient

from core.openapi import ERROR_STATUS
from messenger.app import ROUTES, create_app
from tests.conftest import make_settings


async def test_the_description_and_the_router_are_in_step(aiohttp_client: Any) -> None:
    app = create_app(make_settings())
    client: TestClient = await aiohttp_client(app)
    response = await client.get("/api/v1/openapi.json")  # public: no token
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.1")

    described = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    served = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None
        and r.method != "HEAD"
        and (r.resource.canonical.startswith("/api/v1") or r.resource.canonical in ("/healthz", "/readyz", "/metrics"))
    }
    served.discard(("GET", "/api/v1/openapi.json"))
    assert described == served
    assert {(r.method, r.url) for r in app[ROUTES].routes} == served

    for path, ops in document["paths"].items():
        for method, op in ops.items():
            where = f"{method} {path}"
            assert op["summary"] and op["responses"], where
            if method == "post" and "requestBody" not in op:
                assert not any(c in op["x-error-codes"] for c in ("invalid_payload",)), where
            if path.startswith("/api/v1"):
                assert op["security"] and "401" in op["responses"], where
            for code in op["x-error-codes"]:
                assert str(ERROR_STATUS[code]) in op["responses"], (where, code)
    schemas = document["components"]["schemas"]
    assert {"Conversation", "Message", "Attachment", "Delivery", "ErrorBody", "SendMessageBody"} <= set(schemas)
    assert "client_id" in schemas["SendMessageBody"]["properties"]


def test_every_documented_error_code_is_in_the_docs() -> None:
    from pathlib import Path

    api = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    missing = [code for code in ERROR_STATUS if f"`{code}`" not in api]
    assert not missing


async def test_a_wrong_method_is_405_with_allow_and_limits_are_in_the_schema(
    aiohttp_client: Any, token_for: Callable[..., str]
) -> None:
    client: TestClient = await aiohttp_client(create_app(make_settings()))
    headers = {"Authorization": f"Bearer {token_for('alice')}"}
    response = await client.request("TRACE", "/api/v1/conversations", headers=headers)
    assert response.status == 405 and (await response.json())["error"]["code"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(",")) >= {"GET", "POST"}
    document = await (await client.get("/api/v1/openapi.json")).json()
    [limit] = [p for p in document["paths"]["/api/v1/conversations"]["get"]["parameters"] if p["name"] == "limit"]
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 100}
    [path] = document["paths"]["/api/v1/conversations/{conversation_id}"]["get"]["parameters"]
    assert path["schema"]["pattern"] and path["schema"]["maxLength"] == 128
