"""The soak's workload and its verdict, shared by the python-socketio and the JavaScript runs.

Two devices per side; each device is given its share of sends, with edits and deletes of its
own earlier messages between them. The verdict compares what every device ended with against
the server's history: every message exactly once, in seq order, every edit and delete applied.
"""

from __future__ import annotations

import random
from typing import Any

DEVICES = [("buyer", "b1"), ("buyer", "b2"), ("seller", "s1"), ("seller", "s2")]


def make_plan(sends: int, *, seed: int = 9) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(seed)
    plan: dict[str, list[dict[str, Any]]] = {device: [] for _, device in DEVICES}
    alive: dict[str, list[str]] = {device: [] for _, device in DEVICES}
    for n in range(sends):
        device = DEVICES[n % len(DEVICES)][1]
        client_id = f"soak-{device}-{n}"
        plan[device].append({"op": "send", "client_id": client_id, "text": f"{device} says {n}"})
        alive[device].append(client_id)
        roll = rng.random()
        if roll < 0.12 and alive[device]:
            target = rng.choice(alive[device])
            plan[device].append({"op": "edit", "client_id": target, "text": f"edited {target} at {n}"})
        elif roll < 0.2 and len(alive[device]) > 1:
            target = rng.choice(alive[device][:-1])
            alive[device].remove(target)
            plan[device].append({"op": "delete", "client_id": target})
    return plan


def expected_state(plan: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """client_id -> {text, deleted} once every operation has been applied."""
    state: dict[str, dict[str, Any]] = {}
    for ops in plan.values():
        for op in ops:
            if op["op"] == "send":
                state[op["client_id"]] = {"text": op["text"], "deleted": False}
            elif op["op"] == "edit":
                state[op["client_id"]]["text"] = op["text"]
            else:
                state[op["client_id"]] = {"text": "", "deleted": True}
    return state


def verdict(
    plan: dict[str, list[dict[str, Any]]], history: list[dict[str, Any]], devices: dict[str, dict[str, Any]]
) -> list[str]:
    """Every problem found; empty when the soak passed."""
    problems: list[str] = []
    expected = expected_state(plan)
    seqs = [m["seq"] for m in history]
    if seqs != list(range(1, len(history) + 1)):
        problems.append(f"server seqs are not 1..{len(history)}")
    by_client = {m["client_id"]: m for m in history}
    if len(by_client) != len(history) or set(by_client) != set(expected):
        problems.append(f"server holds {len(history)} messages for {len(expected)} sends")
    for client_id, want in expected.items():
        got = by_client.get(client_id)
        if got is None or (got["text"], got["deleted"]) != (want["text"], want["deleted"]):
            problems.append(f"server: {client_id} is {got and (got['text'], got['deleted'])}, want {want}")
    truth = [(m["id"], m["seq"], m["text"], m["deleted"]) for m in history]
    for device, seen in devices.items():
        messages = seen["messages"]
        mine = [(m["id"], m["seq"], m["text"], m["deleted"]) for m in messages]
        if len({m["id"] for m in messages}) != len(messages) or len({m["seq"] for m in messages}) != len(messages):
            problems.append(f"{device}: a message twice")
        if [m["seq"] for m in messages] != sorted(m["seq"] for m in messages):
            problems.append(f"{device}: not in seq order")
        if mine != truth:
            missing = {t[1] for t in truth} - {m[1] for m in mine}
            stale = [m[1] for m, t in zip(mine, truth, strict=False) if m != t]
            problems.append(f"{device}: missing seqs {sorted(missing)[:10]}, differing seqs {stale[:10]}")
        if seen.get("out_of_order_pushes"):
            problems.append(f"{device}: {seen['out_of_order_pushes']} pushes arrived out of seq order")
    return problems
