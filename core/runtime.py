"""The event loop and JSON codec the service runs on: uvloop and orjson when installed (the default),
the standard library's otherwise, and either can be turned off (`MESSENGER_EVENT_LOOP=asyncio`,
`MESSENGER_JSON=json`). bench/chat measures what each is worth (bench/README.md); its bare
python-socketio relay uses this same module, so the ratio against it compares like with like.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

try:  # pragma: no cover - which branch runs depends on what is installed
    import orjson
except ImportError:  # pragma: no cover
    orjson = None  # type: ignore[assignment]

EVENT_LOOPS = ("uvloop", "asyncio")
JSON_LIBRARIES = ("orjson", "json")


def chosen_event_loop() -> str:
    """uvloop unless MESSENGER_EVENT_LOOP=asyncio, or uvloop is not installed."""
    if os.environ.get("MESSENGER_EVENT_LOOP", "uvloop").lower() == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover
        return "asyncio"
    return "uvloop"


def install_event_loop() -> str:
    """Make new event loops (aiohttp's run_app makes one) uvloop's, if chosen; returns the name used."""
    name = chosen_event_loop()
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return name


def chosen_json() -> str:
    if orjson is None or os.environ.get("MESSENGER_JSON", "orjson").lower() == "json":
        return "json"
    return "orjson"


class _StdlibJson:
    """The standard library's json, compact, as python-socketio's packets call it."""

    name = "json"

    @staticmethod
    def dumps(obj: Any, **_: Any) -> str:
        return json.dumps(obj, separators=(",", ":"))

    loads = staticmethod(json.loads)


class _Orjson:
    """orjson for writing; reading stays with the standard library.

    Reading is where the edge's contract lives: what the standard library refuses (nesting as deep
    as Python's recursion limit, which orjson accepts up to 1,024 levels) is `invalid_json`, and lone
    surrogates reach the command layer to be answered `invalid_text`; a client packet is small, so
    reading is the cheap half. A value orjson cannot write falls back to the standard library.
    """

    name = "orjson"

    @staticmethod
    def dumps(obj: Any, **_: Any) -> str:
        try:
            return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            return json.dumps(obj, separators=(",", ":"))

    loads = staticmethod(json.loads)


def json_codec() -> type[_StdlibJson] | type[_Orjson]:
    """The JSON codec chosen for socket packets and client payloads."""
    return _Orjson if chosen_json() == "orjson" else _StdlibJson


__all__ = ["EVENT_LOOPS", "JSON_LIBRARIES", "chosen_event_loop", "chosen_json", "install_event_loop", "json_codec"]
