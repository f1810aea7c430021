"""MongoDB adapter of the moderation store: `reports`, `moderation_items`, `moderation_decisions`, `projections`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING

from attachments.moderation.model import Action, Decision, ModerationItem, Report, TargetKind
from core.clock import epoch_ms
from core.events import Event
from core.mongo import OUTBOX_FIELD, Doc, Outbox, aware, event_doc

REPORTS = "reports"


def item_from_doc(doc: Mapping[str, Any]) -> ModerationItem:
    return ModerationItem(
        kind=TargetKind(doc["kind"]),
        target_id=doc["target_id"],
        reasons=tuple(doc.get("reasons") or ()),
        opened_at=aware(doc["opened_at"]) or doc["opened_at"],
        conversation_id=doc.get("conversation_id"),
        open=doc.get("state") == "open",
        decision_id=doc.get("decision_id"),
    )


def decision_from_doc(doc: Mapping[str, Any]) -> Decision:
    return Decision(
        id=doc["_id"],
        moderator_id=doc["moderator_id"],
        moderator_name=doc.get("moderator_name"),
        kind=TargetKind(doc["kind"]),
        target_id=doc["target_id"],
        action=Action(doc["action"]),
        note=doc["note"],
        status_before=doc["status_before"],
        status_after=doc["status_after"],
        at=aware(doc["at"]) or doc["at"],
    )


class MongoModerationStore:
    def __init__(self, db: Any, outbox: Outbox) -> None:
        self._reports = db[REPORTS]
        self._items = db["moderation_items"]
        self._decisions = db["moderation_decisions"]
        self._projections = db["projections"]
        self._outbox = outbox
        outbox.serve(REPORTS)

    async def ensure_schema(self) -> None:
        await self._items.create_index(
            [("state", ASCENDING), ("opened_ms", ASCENDING), ("_id", ASCENDING)], name="queue"
        )
        await self._decisions.create_index([("target_id", ASCENDING), ("at", ASCENDING)], name="by_target")

    async def insert_report(self, report: Report, events: Sequence[Event]) -> None:
        await self._reports.insert_one(
            {
                "_id": report.id,
                "kind": str(report.kind),
                "target_id": report.target_id,
                "conversation_id": report.conversation_id,
                "reporter_id": report.reporter_id,
                "reason": report.reason,
                "created_at": report.created_at,
                OUTBOX_FIELD: [event_doc(e) for e in events],
            }
        )
        await self._outbox.flush(REPORTS, report.id, events)

    async def open_item(
        self, kind: TargetKind, target_id: str, reason: str, opened_at: datetime, conversation_id: str | None
    ) -> None:
        await self._items.update_one(
            {"_id": f"{kind}:{target_id}"},
            {
                "$setOnInsert": {
                    "kind": str(kind),
                    "target_id": target_id,
                    "opened_at": opened_at,
                    "opened_ms": epoch_ms(opened_at),
                    "conversation_id": conversation_id,
                },
                "$addToSet": {"reasons": reason},
                "$set": {"state": "open"},
            },
            upsert=True,
        )

    async def close_item(self, kind: TargetKind, target_id: str, decision_id: str) -> None:
        await self._items.update_one(
            {"_id": f"{kind}:{target_id}"}, {"$set": {"state": "decided", "decision_id": decision_id}}
        )

    async def open_items(
        self, *, kind: TargetKind | None, limit: int, after: tuple[int, str] | None
    ) -> list[ModerationItem]:
        query: Doc = {"state": "open"}
        if kind:
            query["kind"] = str(kind)
        if after is not None:
            opened_ms, item_id = after
            query["$or"] = [{"opened_ms": {"$gt": opened_ms}}, {"opened_ms": opened_ms, "_id": {"$gt": item_id}}]
        cursor = self._items.find(query).sort([("opened_ms", ASCENDING), ("_id", ASCENDING)]).limit(limit)
        return [item_from_doc(doc) async for doc in cursor]

    async def record_decision(self, decision: Decision) -> None:
        await self._decisions.insert_one(
            {
                "_id": decision.id,
                "moderator_id": decision.moderator_id,
                "moderator_name": decision.moderator_name,
                "kind": str(decision.kind),
                "target_id": decision.target_id,
                "action": str(decision.action),
                "note": decision.note,
                "status_before": decision.status_before,
                "status_after": decision.status_after,
                "at": decision.at,
            }
        )

    async def decisions(self, *, target_id: str | None, limit: int) -> list[Decision]:
        query: Doc = {"target_id": target_id} if target_id else {}
        cursor = self._decisions.find(query).sort("at", DESCENDING).limit(limit)
        return [decision_from_doc(doc) async for doc in cursor]

    async def checkpoint(self, projection: str) -> int:
        doc = await self._projections.find_one({"_id": projection})
        return int(doc["position"]) if doc else 0

    async def save_checkpoint(self, projection: str, position: int) -> None:
        await self._projections.update_one({"_id": projection}, {"$max": {"position": position}}, upsert=True)
