"""Two people chat through `messenger serve`, driven by python-socketio's AsyncClient over websocket."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest
import socketio

from tests.e2e.conftest import RunningService, rest
from tests.support.polling import eventually

pytestmark = pytest.mark.e2e


class Person:
    """One connected session (a tab or a device) and everything the server pushed to it."""

    def __init__(self, service: RunningService, user_id: str, token: str | None = None) -> None:
        self.user_id = user_id
        self.service = service
        self.token = token if token is not None else service.token(user_id)
        self.sio = socketio.AsyncClient(reconnection=False)
        self.received: dict[str, list[Any]] = defaultdict(list)
        self.connect_error: Any = None
        for event in ("message:new", "message:updated", "receipt", "typing", "presence", "moderation:queue_changed"):
            self.sio.on(event, self._recorder(event))
        self.sio.on("connect_error", self._on_connect_error)

    def _recorder(self, event: str) -> Any:
        async def record(data: Any) -> None:
            self.received[event].append(data)

        return record

    async def _on_connect_error(self, data: Any) -> None:
        self.connect_error = data

    async def connect(self) -> Person:
        await self.sio.connect(self.service.url, auth={"token": self.token}, transports=["websocket"], wait_timeout=10)
        return self

    async def call(self, event: str, payload: Any) -> Any:
        return await self.sio.call(event, payload, timeout=20)

    async def send(self, conversation_id: str, text: str, client_id: str) -> dict[str, Any]:
        ack = await self.call(
            "message:send", {"conversation_id": conversation_id, "client_id": client_id, "text": text}
        )
        assert ack["ok"], ack
        return dict(ack["message"])

    def texts(self, event: str = "message:new") -> list[str]:
        return [m["message"]["text"] for m in self.received[event]]

    async def close(self) -> None:
        await self.sio.disconnect()


def open_conversation(service: RunningService, buyer: str, seller: str, order_id: str | None = None) -> str:
    return str(
        rest(service, buyer, "POST", "/conversations", {"buyer_id": buyer, "seller_id": seller, "order_id": order_id})[
            "id"
        ]
    )


async def test_two_users_chat_and_every_session_of_both_receives_it(service: RunningService) -> None:
    cid = open_conversation(service, "ann", "ben")
    ann = await Person(service, "ann").connect()
    ann_phone = await Person(service, "ann").connect()
    ben = await Person(service, "ben").connect()
    eve = await Person(service, "eve").connect()
    try:
        await ann.send(cid, "hi ben", "a1")
        await ben.send(cid, "hi ann", "b1")
        for session in (ann, ann_phone, ben):
            await eventually(lambda s=session: s.texts() == ["hi ben", "hi ann"])  # type: ignore[misc]
        await asyncio.sleep(0.2)
        assert eve.received["message:new"] == []
        await ann.send(cid, "are you there?", "a2")
        await eventually(lambda: len(ben.received["message:new"]) == 3)
        ack = await ben.call("read", {"conversation_id": cid, "seq": 3})
        assert ack == {"ok": True}
        await eventually(lambda: any(r["user_id"] == "ben" and r["seq"] == 3 for r in ann_phone.received["receipt"]))
        assert (await ann.call("typing", {"conversation_id": cid, "typing": True}))["ok"]
        await eventually(lambda: ben.received["typing"] == [{"conversation_id": cid, "user_id": "ann", "typing": True}])
        await asyncio.sleep(0.1)
        assert ann.received["typing"] == [] and ann_phone.received["typing"] == []
    finally:
        for p in (ann, ann_phone, ben, eve):
            await p.close()


async def test_reconnecting_client_syncs_exactly_what_it_missed(service: RunningService) -> None:
    cid = open_conversation(service, "cat", "dan")
    cat = await Person(service, "cat").connect()
    dan = await Person(service, "dan").connect()
    try:
        first = await cat.send(cid, "one", "c1")
        second = await cat.send(cid, "two", "c2")
        await eventually(lambda: len(dan.received["message:new"]) == 2)
        highest_seen = max(m["message"]["seq"] for m in dan.received["message:new"])
        await dan.close()

        await cat.send(cid, "three", "c3")
        edit = await cat.call("message:edit", {"message_id": first["id"], "text": "one (edited)"})
        delete = await cat.call("message:delete", {"message_id": second["id"]})
        assert edit["ok"] and delete["ok"]
        await cat.send(cid, "four", "c4")

        dan = await Person(service, "dan").connect()
        ack = await dan.call("sync", {"conversation_id": cid, "after_seq": highest_seen})
        assert ack["ok"] and ack["has_more"] is False
        got = {(m["seq"], m["text"], m["deleted"]) for m in ack["messages"]}
        assert got == {(1, "one (edited)", False), (2, "", True), (3, "three", False), (4, "four", False)}
        assert [m["seq"] for m in ack["messages"]] == [1, 2, 3, 4]  # in order
    finally:
        await cat.close()
        await dan.close()


async def test_connections_without_a_valid_token_are_refused_with_a_code(service: RunningService) -> None:
    for token, code in [
        ("", "token_missing"),
        ("garbage", "token_invalid"),
        (service.token("x", ttl=-100), "token_expired"),
    ]:
        person = Person(service, "x", token=token)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await person.connect()
        assert person.connect_error["data"]["code"] == code, person.connect_error


async def test_a_stranger_cannot_read_or_write_a_conversation(service: RunningService) -> None:
    cid = open_conversation(service, "fay", "gus")
    eve = await Person(service, "eve2").connect()
    try:
        for event, payload in [
            ("message:send", {"conversation_id": cid, "client_id": "e1", "text": "hi"}),
            ("sync", {"conversation_id": cid, "after_seq": 0}),
            ("read", {"conversation_id": cid, "seq": 1}),
            ("typing", {"conversation_id": cid, "typing": True}),
        ]:
            ack = await eve.call(event, payload)
            assert ack["ok"] is False and ack["error"]["code"] == "conversation_not_found", (event, ack)
    finally:
        await eve.close()


async def test_duplicate_client_id_creates_nothing(service: RunningService) -> None:
    cid = open_conversation(service, "hal", "ida")
    hal = await Person(service, "hal").connect()
    ida = await Person(service, "ida").connect()
    try:
        first = await hal.send(cid, "only once", "same-id")
        again = await hal.send(cid, "only once", "same-id")
        assert first["id"] == again["id"]
        await asyncio.sleep(0.3)
        assert ida.texts() == ["only once"]
        history = rest(service, "ida", "GET", f"/conversations/{cid}/messages")
        assert len(history["messages"]) == 1
    finally:
        await hal.close()
        await ida.close()


async def test_200_concurrent_sends_get_seq_1_to_200_and_arrive_in_order(service: RunningService) -> None:
    cid = open_conversation(service, "jon", "kim")
    jon = await Person(service, "jon").connect()
    kim = await Person(service, "kim").connect()
    try:
        acks = await asyncio.gather(*((jon if i % 2 else kim).send(cid, f"m{i}", f"k{i}") for i in range(200)))
        assert sorted(m["seq"] for m in acks) == list(range(1, 201))
        await eventually(lambda: len(kim.received["message:new"]) == 200 and len(jon.received["message:new"]) == 200)
        assert [m["message"]["seq"] for m in kim.received["message:new"]] == list(range(1, 201))
        assert [m["message"]["seq"] for m in jon.received["message:new"]] == list(range(1, 201))
    finally:
        await jon.close()
        await kim.close()


async def test_malformed_payloads_get_error_acks_and_the_connection_survives(service: RunningService) -> None:
    cid = open_conversation(service, "lea", "max")
    lea = await Person(service, "lea").connect()
    try:
        for payload in [
            None,
            "text",
            42,
            [1, 2],
            {"conversation_id": cid},
            {"conversation_id": {"$gt": ""}, "client_id": "x", "text": "x"},
            {"conversation_id": cid, "client_id": "x", "text": "y" * 6000},
        ]:
            ack = await lea.call("message:send", payload)
            assert ack["ok"] is False and ack["error"]["code"] in {"invalid_payload", "text_too_long"}, (payload, ack)
        assert (await lea.call("sync", {"conversation_id": cid, "after_seq": -5}))["error"]["code"] == "invalid_payload"
        assert (await lea.send(cid, "still connected", "ok-1"))["seq"] == 1
    finally:
        await lea.close()


async def test_presence_follows_the_last_session(service: RunningService) -> None:
    open_conversation(service, "ned", "ola")
    ola = await Person(service, "ola").connect()
    ned1 = await Person(service, "ned").connect()
    ned2 = await Person(service, "ned").connect()
    try:
        await eventually(lambda: [p["online"] for p in ola.received["presence"]] == [True])
        await ned1.close()
        await asyncio.sleep(0.2)
        assert [p["online"] for p in ola.received["presence"]] == [True]
        await ned2.close()
        await eventually(lambda: [p["online"] for p in ola.received["presence"]] == [True, False])
        assert ola.received["presence"][-1]["last_seen"]
        ack = await ola.call("presence:query", {"user_ids": ["ned", "stranger"]})
        assert [(p["user_id"], p["online"]) for p in ack["presence"]] == [("ned", False)]
    finally:
        await ola.close()
