"""The embedded engine's equality look-ups give exactly what a full scan gives, and uniqueness still holds."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import pytest
from mongomock.filtering import filter_applies
from pymongo.errors import DuplicateKeyError

from tests.support import embedded_mongo

embedded_mongo.install()

from mongomock_motor import AsyncMongoMockClient  # noqa: E402 (after install, as the Mongo tests do)


def stored(collection: Any) -> list[Any]:
    return list(collection._store.documents)  # the wrapped mongomock collection's own store


def scan(collection: Any, spec: dict[str, Any]) -> list[Any]:
    """What mongomock itself would answer: every stored document tested against the filter."""
    return sorted(d["_id"] for d in stored(collection) if filter_applies(spec, d))


async def test_random_writes_and_queries_agree_with_a_full_scan() -> None:
    rng = random.Random(1234)
    coll = AsyncMongoMockClient()["t"]["docs"]
    await coll.create_index([("a", 1), ("b", 1)], unique=True, name="ab")
    await coll.create_index("c", unique=True, sparse=True, name="c")
    values: list[Any] = ["x", "y", 1, 2, None]
    live: set[str] = set()
    for step in range(1500):
        op = rng.random()
        doc_id = f"d{rng.randrange(60)}"
        fields = {k: rng.choice(values) for k in ("a", "b", "c") if rng.random() < 0.9}
        if op < 0.45:
            try:
                await coll.insert_one({"_id": doc_id, **fields})
                live.add(doc_id)
            except DuplicateKeyError:
                pass
        elif op < 0.75:
            with contextlib.suppress(DuplicateKeyError):
                await coll.update_one({"_id": doc_id}, {"$set": fields} if fields else {"$unset": {"c": ""}})
        elif op < 0.85:
            await coll.delete_one({"_id": doc_id})
            live.discard(doc_id)
        spec: dict[str, Any] = rng.choice(
            [
                {"_id": doc_id},
                {"_id": {"$in": [doc_id, f"d{rng.randrange(60)}"]}},
                {"a": rng.choice(values), "b": rng.choice(values)},
                {"a": rng.choice(values), "b": rng.choice(values), "c": rng.choice(values)},
                {"c": rng.choice(values)},
                {"a": rng.choice(values)},
            ]
        )
        got = sorted([d["_id"] async for d in coll.find(spec)])
        assert got == scan(coll, spec), (step, spec)
    # uniqueness holds over what is stored now: no two documents share (a, b), nor a non-null c
    docs = stored(coll)
    pairs = [(d.get("a"), d.get("b")) for d in docs]
    assert len(pairs) == len(set(pairs))
    cs = [d["c"] for d in docs if d.get("c") is not None]
    assert len(cs) == len(set(cs))


async def test_duplicates_are_refused_with_the_index_named() -> None:
    coll = AsyncMongoMockClient()["t"]["m"]
    await coll.create_index([("conversation_id", 1), ("seq", 1)], unique=True)
    await coll.insert_one({"_id": "1", "conversation_id": "c", "seq": 1})
    with pytest.raises(DuplicateKeyError) as error:
        await coll.insert_one({"_id": "2", "conversation_id": "c", "seq": 1})
    assert error.value.details["keyPattern"] == {"conversation_id": 1, "seq": 1}
    await coll.delete_one({"_id": "1"})
    await coll.insert_one({"_id": "2", "conversation_id": "c", "seq": 1})  # free again once deleted
    await coll.insert_one({"_id": "3", "conversation_id": "c", "seq": 2})
    with pytest.raises(DuplicateKeyError):
        await coll.update_one({"_id": "3"}, {"$set": {"seq": 1}})
    assert await coll.find_one({"conversation_id": "c", "seq": 2}) == {"_id": "3", "conversation_id": "c", "seq": 2}


async def test_arrays_in_an_indexed_field_fall_back_to_the_full_scan() -> None:
    coll = AsyncMongoMockClient()["t"]["arr"]
    await coll.create_index("tag", unique=True)
    await coll.insert_one({"_id": "1", "tag": ["red", "blue"]})
    assert [d["_id"] async for d in coll.find({"tag": "blue"})] == ["1"]
