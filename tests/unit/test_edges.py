"""The edge's input checks in milliseconds: JSON reading, Unicode in commands, socket packets, the route table."""

from __future__ import annotations

import pytest
from socketio import packet

from attachments.files.rest import CompleteUpload
from chat.commands import PresenceQuery, SendMessage
from core.commands import loads_client_json, parse
from core.errors import InvalidInput
from core.openapi import Route, RouteTable
from core.sockets import ClientPacket

DEEP = "[" * 50_000 + "]" * 50_000


@pytest.mark.parametrize("text", [DEEP, '{"a": ' * 30_000 + "1" + "}" * 30_000, "{", b"\xff\xfe"])
def test_unreadable_json_is_invalid_json(text: str | bytes) -> None:
    with pytest.raises(InvalidInput) as caught:
        loads_client_json(text)
    assert caught.value.code == "invalid_json" and caught.value.status == 422


@pytest.mark.parametrize(
    ("command", "payload"),
    [
        (SendMessage, {"conversation_id": "c", "client_id": "k", "text": "x\ud800"}),
        (SendMessage, {"conversation_id": "c", "client_id": "\udfff", "text": "x"}),
        (PresenceQuery, {"user_ids": ["ok", "\ud800"]}),
        (CompleteUpload, {"parts": [{"part_number": 1, "etag": "\ud800"}]}),
    ],
)
def test_a_lone_surrogate_in_any_field_is_invalid_text(command: type, payload: dict[str, object]) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse(command, payload)
    assert caught.value.code == "invalid_text"


def test_valid_unicode_passes() -> None:
    command = parse(SendMessage, {"conversation_id": "c", "client_id": "ключ", "text": "héllo 😀 \u202e"})
    assert command.text == "héllo 😀 \u202e"


def test_an_unreadable_event_keeps_its_ack_id() -> None:
    deep = ClientPacket(encoded_packet='25["sync",' + DEEP + "]")
    assert deep.packet_type == packet.EVENT and deep.id == 5
    assert deep.data[0].error.code == "invalid_json"
    connect = ClientPacket(encoded_packet="0{" + DEEP)
    assert connect.packet_type == packet.CONNECT and connect.data is None  # read as a connect without auth
    fine = ClientPacket(encoded_packet='27["sync",{"a":1}]')
    assert fine.id == 7 and fine.data == ["sync", {"a": 1}]


def test_a_route_cannot_declare_an_unknown_error_code() -> None:
    async def handler(request: object) -> None: ...

    with pytest.raises(ValueError, match="no_such_code"):
        RouteTable().add(Route("GET", "/x", handler, "x", errors=("no_such_code",)))  # type: ignore[arg-type]
