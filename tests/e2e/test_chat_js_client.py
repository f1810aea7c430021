"""The official JavaScript client (socket.io-client 4.8, as the web chat uses it) against `messenger serve`.

Each test opens a conversation over REST, runs one scenario of tests/e2e/js/chat_scenario.mjs in Node
and checks the values it printed. The Node side needs `npm ci --prefix tests/e2e/js` (CI runs it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import RunningService
from tests.e2e.test_chat_python_client import open_conversation

pytestmark = pytest.mark.e2e

JS_DIR = Path(__file__).resolve().parent / "js"
SCRIPT = JS_DIR / "chat_scenario.mjs"


def run_scenario(scenario: str, config: dict[str, Any]) -> dict[str, Any]:
    # A missing toolchain is a broken checkout, not a reason to skip: say how to fix it.
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed; install Node.js 18+ and run `npm ci --prefix tests/e2e/js`")
    if not (JS_DIR / "node_modules" / "socket.io-client").is_dir():
        pytest.fail("socket.io-client is not installed: run `npm ci --prefix tests/e2e/js`")
    try:
        done = subprocess.run(
            [node, str(SCRIPT), scenario, json.dumps(config)],
            capture_output=True,
            text=True,
            timeout=40,  # the script stops itself after 20 s; this only guards against node itself hanging
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"node {scenario} hung: stdout={exc.stdout!r} stderr={exc.stderr!r}")
    if done.returncode != 0:
        pytest.fail(f"node {scenario} exited {done.returncode}\nstderr:\n{done.stderr}\nstdout:\n{done.stdout}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    result: dict[str, Any] = json.loads(lines[-1])
    assert result["ok"] is True and result["scenario"] == scenario, result
    return result


def people(service: RunningService, *user_ids: str) -> dict[str, Any]:
    return {"url": service.url} | {
        role: {"id": user_id, "token": service.token(user_id)}
        for role, user_id in zip(("buyer", "seller", "stranger"), user_ids, strict=False)
    }


def test_websocket_and_polling_sessions_chat_type_and_read(service: RunningService) -> None:
    cid = open_conversation(service, "js-buyer", "js-seller")
    result = run_scenario("chat", people(service, "js-buyer", "js-seller") | {"conversation_id": cid})

    assert result["transports"] == {"buyer": "websocket", "buyer_tab": "polling", "seller": "websocket"}
    assert result["ack_seqs"] == [1, 2, 3]
    assert result["ack_senders"] == ["js-buyer", "js-seller", "js-buyer"]
    expected = [
        {"seq": 1, "text": "hello from the buyer"},
        {"seq": 2, "text": "hello from the seller"},
        {"seq": 3, "text": "the buyer again, from a polling tab"},
    ]
    # Every session of both users, the sender's own tabs included, gets each message exactly once.
    assert result["received"] == {"buyer": expected, "buyer_tab": expected, "seller": expected}
    assert result["typing"] == {
        "buyer": [],
        "buyer_tab": [],
        "seller": [{"conversation_id": cid, "user_id": "js-buyer", "typing": True}],
    }
    receipt = {"conversation_id": cid, "user_id": "js-seller", "seq": 3}
    assert receipt in result["receipts"]["buyer"] and receipt in result["receipts"]["buyer_tab"]


def test_reconnecting_client_syncs_missed_new_edited_and_deleted_messages(service: RunningService) -> None:
    cid = open_conversation(service, "js-rc-buyer", "js-rc-seller")
    result = run_scenario("reconnect", people(service, "js-rc-buyer", "js-rc-seller") | {"conversation_id": cid})

    assert result["highest_seen"] == 3
    assert result["has_more"] is False
    # The seller saw 1..3; it must get 4 and 5 (new), 1 (edited) and 2 (deleted), in seq order, nothing else.
    assert [(m["seq"], m["text"], m["deleted"]) for m in result["messages"]] == [
        (1, "one (edited)", False),
        (2, "", True),
        (4, "four", False),
        (5, "five", False),
    ]
    assert result["messages"][0]["edited"] is True  # edited_at is set
    changed = {m["seq"]: m["updated_seq"] for m in result["messages"]}
    assert changed[1] == result["edit_updated_seq"] > 3
    assert changed[2] == result["delete_updated_seq"] > 3


def test_refused_connections_carry_a_code_and_strangers_cannot_write(service: RunningService) -> None:
    cid = open_conversation(service, "js-ref-buyer", "js-ref-seller")
    config = people(service, "js-ref-buyer", "js-ref-seller", "js-stranger")
    config |= {"conversation_id": cid, "expired_token": service.token("js-ref-buyer", ttl=-100)}
    result = run_scenario("refused", config)

    errors = result["connect_errors"]
    assert {name: error["code"] for name, error in errors.items()} == {
        "no_token": "token_missing",
        "garbage": "token_invalid",
        "expired": "token_expired",
    }
    assert all(isinstance(error["message"], str) and error["message"] for error in errors.values()), errors
    ack = result["stranger_ack"]
    assert ack["ok"] is False and ack["error"]["code"] == "conversation_not_found", ack


def test_a_repeated_client_id_returns_the_stored_message_and_pushes_it_once(service: RunningService) -> None:
    cid = open_conversation(service, "js-dup-buyer", "js-dup-seller")
    result = run_scenario("duplicate", people(service, "js-dup-buyer", "js-dup-seller") | {"conversation_id": cid})

    retry_first, retry_again = result["retry_ids"]
    tap_first, tap_again = result["tap_ids"]
    assert retry_first == retry_again
    assert tap_first == tap_again != retry_first
    assert result["seller_received"] == [{"id": retry_first, "seq": 1}, {"id": tap_first, "seq": 2}]


def test_200_concurrent_sends_get_gap_free_seqs_and_arrive_in_order(service: RunningService) -> None:
    cid = open_conversation(service, "js-many-buyer", "js-many-seller")
    result = run_scenario("concurrent", people(service, "js-many-buyer", "js-many-seller") | {"conversation_id": cid})

    every = list(range(1, 201))
    assert result["ack_seqs"] == every
    assert result["buyer_received"] == every
    assert result["seller_received"] == every
