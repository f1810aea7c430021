"""MongoDB adapter of the relay checkpoints: the `relay_checkpoints` collection, one document per relay.

The lease is claimed and renewed with single-document atomic updates (no transactions needed).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

CHECKPOINTS_COLLECTION = "relay_checkpoints"


class MongoRelayCheckpoints:
    def __init__(self, db: Any) -> None:
        self._checkpoints = db[CHECKPOINTS_COLLECTION]

    async def ensure(self, name: str) -> None:
        with contextlib.suppress(DuplicateKeyError):  # already there: resume from it
            await self._checkpoints.insert_one(
                {"_id": name, "position": 0, "lease_owner": None, "lease_until": 0.0, "updated_at": time.time()}
            )

    async def claim(self, name: str, owner: str, *, now: float, lease_seconds: float) -> int | None:
        doc = await self._checkpoints.find_one_and_update(
            {"_id": name, "$or": [{"lease_owner": owner}, {"lease_until": {"$lt": now}}]},
            {"$set": {"lease_owner": owner, "lease_until": now + lease_seconds}},
            return_document=ReturnDocument.AFTER,
        )
        return int(doc["position"]) if doc else None

    async def advance(
        self, name: str, owner: str, position: int, sent: int, *, now: float, lease_seconds: float
    ) -> bool:
        result = await self._checkpoints.update_one(
            {"_id": name, "lease_owner": owner},
            {
                "$max": {"position": position},
                "$set": {"lease_until": now + lease_seconds, "updated_at": now},
                "$inc": {"relayed": sent},
            },
        )
        return bool(result.matched_count)

    async def release(self, name: str, owner: str) -> None:
        await self._checkpoints.update_one({"_id": name, "lease_owner": owner}, {"$set": {"lease_until": 0.0}})

    async def position(self, name: str) -> int | None:
        doc = await self._checkpoints.find_one({"_id": name})
        return int(doc["position"]) if doc else None
