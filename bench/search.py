"""`GET /search` at 100k messages: the store query and the whole use case, SQLite FTS5 (embedded default).

Fills a fresh database through the real store (every message indexed per participant, as a send
does), then times searches for one user across their conversations and inside one. The MongoDB
adapter is timed too, on the in-process engine and with fewer messages (`--mongo-messages`): there
is no MongoDB server on this machine, so that figure says nothing about a replica set.

    python -m bench.search --messages 100000   (from the checkout; bench/chat would shadow the chat package)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from chat.model import Message, MessageKind
from chat.search import query_terms
from core.ids import new_id
from core.sqlite import SqliteEngine
from messenger.database import Stores, mongo_stores, sqlite_stores

VOCABULARY = """
logo design draft revision invoice delivery order file brand colour font layout website banner poster
sketch vector print deadline budget feedback review approve change final version source illustration
mockup icon palette typography photo edit resize format export preview thanks hello please update
question answer meeting call schedule week monday friday tomorrow today urgent
"""
WORDS = VOCABULARY.split()
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def sentence(rng: random.Random) -> str:
    # Zipf-like: a few words are in most messages, most words in few.
    return " ".join(WORDS[min(int(rng.paretovariate(1.2)) - 1, len(WORDS) - 1)] for _ in range(rng.randint(4, 16)))


async def fill(stores: Stores, messages: int, conversations: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    ids = []
    # "buyer-0" takes part in a tenth of all conversations: the heavy user the searches are for.
    for i in range(conversations):
        buyer = "buyer-0" if i % 10 == 0 else f"buyer-{i}"
        found, _ = await stores.conversations.get_or_create(buyer, f"seller-{i % 50}", f"o{i}", now=T0)
        ids.append(found.id)
    started = time.perf_counter()
    seqs = dict.fromkeys(ids, 0)
    for n in range(messages):
        cid = ids[n % conversations]
        seqs[cid] += 1
        text = sentence(rng)
        masked = None
        if n % 50 == 0:  # some with contact details, masked for the recipient
            text += " call 415 555 0100"
            masked = text.replace("415 555 0100", "[phone removed]")
        await stores.messages.insert(
            Message(
                id=new_id(),
                conversation_id=cid,
                seq=seqs[cid],
                sender_id=f"seller-{ids.index(cid) % 50}" if n % 2 else "someone",
                client_id=f"c{n}",
                kind=MessageKind.TEXT,
                text=text,
                created_at=T0 + timedelta(seconds=n),
                masked_text=masked,
                updated_seq=seqs[cid],
            ),
            [],
        )
        if (n + 1) % 20_000 == 0:
            rate = (n + 1) / (time.perf_counter() - started)
            print(f"  stored {n + 1:,} messages ({rate:,.0f}/s, indexed for both participants)", flush=True)
    return ids


async def timed(label: str, stores: Stores, viewer: str, query: str, conversation_id: str | None, runs: int) -> None:
    terms = query_terms(query)
    latencies, found = [], 0
    for _ in range(runs):
        t = time.perf_counter()
        hits = await stores.messages.search(viewer, terms, conversation_id=conversation_id, limit=21)
        latencies.append((time.perf_counter() - t) * 1000)
        found = len(hits)
    latencies.sort()
    p95 = latencies[int(len(latencies) * 0.95) - 1]
    print(
        f"  {label:<44} q={query!r:<22} p50 {statistics.median(latencies):6.2f} ms  p95 {p95:6.2f} ms"
        f"  ({found} on the first page)",
        flush=True,
    )


async def searches(stores: Stores, ids: list[str], runs: int) -> None:
    heavy = "buyer-0"
    await timed("one user, all conversations, common word", stores, heavy, "logo", None, runs)
    await timed("one user, all conversations, two words", stores, heavy, "logo design", None, runs)
    await timed("one user, all conversations, rare word", stores, heavy, "urgent", None, runs)
    await timed("one user, all conversations, no match", stores, heavy, "zebra", None, runs)
    await timed("one user, one conversation", stores, heavy, "logo", ids[0], runs)
    await timed("recipient, masked number (must find none)", stores, heavy, "415", None, runs)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--conversations", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--mongo-messages", type=int, default=10_000, help="0 to skip the in-process MongoDB run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        print(f"SQLite FTS5: {args.messages:,} messages in {args.conversations:,} conversations", flush=True)
        stores = sqlite_stores(SqliteEngine(Path(tmp) / "messenger.db"))
        await ensure(stores)
        ids = await fill(stores, args.messages, args.conversations)
        size = (Path(tmp) / "messenger.db").stat().st_size / 2**20
        print(f"  database {size:,.0f} MiB", flush=True)
        await searches(stores, ids, args.runs)
        await stores.database.close()

    if args.mongo_messages:
        from mongomock_motor import AsyncMongoMockClient

        from tests.support import embedded_mongo

        embedded_mongo.install()
        client: Any = AsyncMongoMockClient(tz_aware=True)
        print(f"MongoDB adapter on the in-process engine: {args.mongo_messages:,} messages", flush=True)
        stores = mongo_stores(client, "bench_search", "mongomock")
        await ensure(stores)
        conversations = max(10, args.conversations * args.mongo_messages // args.messages)
        ids = await fill(stores, args.mongo_messages, conversations)
        await searches(stores, ids, max(5, args.runs // 10))


async def ensure(stores: Stores) -> None:
    for store in (stores.events, stores.conversations, stores.messages):
        await store.ensure_schema()


if __name__ == "__main__":
    asyncio.run(main())
