"""Attachment use cases: presigned direct-to-S3 uploads, verification of what landed, safe downloads.

No file byte passes through this service. It hands out narrow, short-lived presigned URLs, then
checks what actually arrived in S3 (size by HEAD, real type by sniffing the first bytes) before
an attachment may move on to the scanner; anything that does not match is rejected and deleted.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from pymongo.errors import DuplicateKeyError

from attachments.content_check import SNIFF_BYTES, ContentMismatch, extension_type, normalise_type, verify_content
from attachments.models import DOWNLOADABLE, NOT_ATTACHABLE, AttachmentStatus, attachment_view
from attachments.storage import ObjectStorage, StoredPart, UploadGone
from attachments.store import AttachmentStore, Doc
from chat.auth import Identity
from chat.clock import epoch_ms, iso, utc_now
from chat.errors import Conflict, Forbidden, InvalidInput, NotFound, PayloadTooLarge
from chat.events import Outbox, new_event
from chat.ports import Notifier
from chat.service import ChatService
from chat.store import new_id
from config.settings import AttachmentSettings

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_PARTS = 10_000
MAX_FILENAME_BYTES = 255
_CONTENT_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")


class AttachmentService:
    def __init__(
        self,
        settings: AttachmentSettings,
        store: AttachmentStore,
        storage: ObjectStorage,
        chat: ChatService,
        outbox: Outbox,
        notifier: Notifier,
    ) -> None:
        self._settings = settings
        self._store = store
        self._storage = storage
        self._chat = chat
        self._outbox = outbox
        self._notifier = notifier
        self._on_claimable: Callable[[], None] = lambda: None

    def when_work_is_ready(self, callback: Callable[[], None]) -> None:
        """Called whenever an attachment becomes work for the pipeline (the in-process pipeline's wake)."""
        self._on_claimable = callback

    # --- upload ----------------------------------------------------------------------------

    async def request_upload(
        self, caller: Identity, conversation_id: str, *, filename: str, size: int, content_type: str
    ) -> dict[str, Any]:
        conversation = await self._chat.conversation_for(caller, conversation_id)
        filename = checked_filename(filename)
        content_type = self._checked_type(content_type, filename)
        self._check_size(size)
        attachment_id = new_id()
        # Unguessable and under the conversation's prefix; the user's filename is only metadata.
        key = f"conversations/{conversation_id}/{attachment_id}"
        now = utc_now()
        expires_in = self._settings.upload_url_ttl_seconds
        doc: Doc = {
            "_id": attachment_id,
            "conversation_id": conversation_id,
            "participants": list(conversation["participants"]),
            "uploader_id": caller.user_id,
            "filename": filename,
            "size": size,
            "declared_type": content_type,
            "content_type": content_type,
            "status": str(AttachmentStatus.AWAITING_UPLOAD),
            "key": key,
            "created_at": now,
            "created_ms": epoch_ms(now),
            "expires_at": now + timedelta(seconds=self._settings.upload_expiry_seconds),
            "message_id": None,
            "scan": None,
            "preview_key": None,
        }
        if size <= self._settings.multipart_threshold:
            upload: dict[str, Any] = await self._single_part_grant(key, size, content_type, expires_in)
            doc["upload"] = {"method": upload["method"]}
        else:
            part_size = self.part_size_for(size)
            upload_id = await self._storage.start_multipart(key, content_type=content_type)
            part_count = math.ceil(size / part_size)
            doc["upload"] = {
                "method": "MULTIPART",
                "upload_id": upload_id,
                "part_size": part_size,
                "part_count": part_count,
            }
            upload = {
                "method": "MULTIPART",
                "upload_id": upload_id,
                "part_size": part_size,
                "parts": await self._part_urls(doc, range(1, part_count + 1)),
            }
        upload["expires_at"] = iso(now + timedelta(seconds=expires_in))
        try:
            await self._store.insert(doc)
        except DuplicateKeyError:  # pragma: no cover - 128 random bits
            raise Conflict("try again", code="id_collision") from None
        return {"attachment": attachment_view(doc), "upload": upload}

    async def _single_part_grant(self, key: str, size: int, content_type: str, expires_in: int) -> dict[str, Any]:
        """A POST policy where S3 has one, else a PUT with the size and type signed into the URL."""
        if self._storage.supports_post_policy:
            post = await self._storage.presign_post(key, size=size, content_type=content_type, expires_in=expires_in)
            return {"method": "POST", "url": post["url"], "fields": post["fields"]}
        put = await self._storage.presign_put(key, size=size, content_type=content_type, expires_in=expires_in)
        return {"method": "PUT", "url": put["url"], "headers": put["headers"]}

    def part_size_for(self, size: int) -> int:
        """The smallest whole-MiB part size that keeps the part count within S3's 10,000."""
        needed = math.ceil(size / MAX_PARTS)
        part_size = max(self._settings.min_part_size, math.ceil(needed / MiB) * MiB)
        return min(part_size, self._settings.max_part_size)

    async def _part_urls(self, doc: Doc, numbers: Sequence[int] | range) -> list[dict[str, Any]]:
        spec = doc["upload"]
        expires_in = self._settings.upload_url_ttl_seconds
        parts = []
        for n in numbers:
            size = self._expected_part_size(doc, n)
            url = await self._storage.presign_part(doc["key"], spec["upload_id"], n, size=size, expires_in=expires_in)
            parts.append({"part_number": n, "size": size, "url": url})
        return parts

    async def resume(self, caller: Identity, attachment_id: str) -> dict[str, Any]:
        """Fresh URLs for what has not landed yet (every part of a POST upload, missing parts of multipart)."""
        doc = await self._own_pending_upload(caller, attachment_id)
        upload_spec = doc["upload"]
        now = utc_now()
        expires_in = self._settings.upload_url_ttl_seconds
        if upload_spec["method"] != "MULTIPART":
            upload: dict[str, Any] = await self._single_part_grant(
                doc["key"], doc["size"], doc["content_type"], expires_in
            )
        else:
            try:
                landed = await self._storage.list_parts(doc["key"], upload_spec["upload_id"])
            except UploadGone:
                raise Conflict("the upload can no longer be resumed; start a new one", code="upload_gone") from None
            good = {p.part_number for p in landed if p.size == self._expected_part_size(doc, p.part_number)}
            missing = [n for n in range(1, upload_spec["part_count"] + 1) if n not in good]
            upload = {
                "method": "MULTIPART",
                "upload_id": upload_spec["upload_id"],
                "part_size": upload_spec["part_size"],
                "parts": await self._part_urls(doc, missing),
                "uploaded_parts": [
                    {"part_number": p.part_number, "etag": p.etag} for p in landed if p.part_number in good
                ],
            }
        upload["expires_at"] = iso(now + timedelta(seconds=expires_in))
        return {"attachment": attachment_view(doc), "upload": upload}

    async def abort(self, caller: Identity, attachment_id: str) -> dict[str, Any]:
        doc = await self._own_pending_upload(caller, attachment_id)
        rejected = await self._reject(doc, "aborted", "the upload was aborted by the uploader")
        return attachment_view(rejected or doc)

    async def complete(
        self, caller: Identity, attachment_id: str, client_parts: Sequence[Mapping[str, Any]] | None
    ) -> dict[str, Any]:
        doc = await self._visible(caller, attachment_id)
        if doc["uploader_id"] != caller.user_id:
            raise Forbidden("only the uploader can complete an upload", code="not_the_uploader")
        if doc["status"] != AttachmentStatus.AWAITING_UPLOAD:
            return self._already_completed(doc)
        if doc["upload"]["method"] == "MULTIPART":
            await self._complete_multipart(doc, client_parts)
        stored = await self._storage.head(doc["key"])
        if stored is None:
            current = await self._store.get(attachment_id)
            if current and current["status"] != AttachmentStatus.AWAITING_UPLOAD:
                return self._already_completed(current)  # a concurrent complete got there first
            raise Conflict("nothing has been uploaded yet", code="upload_missing")
        if stored.size != doc["size"]:
            await self._reject_and_raise(
                doc, "size_mismatch", f"{stored.size} bytes arrived, {doc['size']} were declared"
            )
        head = await self._storage.read_range(doc["key"], 0, min(SNIFF_BYTES, doc["size"]))
        try:
            verified_type = verify_content(head, declared_type=doc["declared_type"], filename=doc["filename"])
        except ContentMismatch as exc:
            await self._reject_and_raise(doc, "content_mismatch", str(exc))
        now = utc_now()
        event = new_event(
            "attachment.uploaded",
            doc["conversation_id"],
            {
                "attachment_id": doc["_id"],
                "conversation_id": doc["conversation_id"],
                "uploader_id": doc["uploader_id"],
                "filename": doc["filename"],
                "size": doc["size"],
                "content_type": verified_type,
            },
            occurred_at=now,
        )
        updated = await self._store.transition(
            doc["_id"],
            from_statuses=[AttachmentStatus.AWAITING_UPLOAD],
            changes={"status": str(AttachmentStatus.UPLOADED), "content_type": verified_type, "uploaded_at": now},
            events=[event],
        )
        if updated is None:
            current = await self._store.get(attachment_id)
            return self._already_completed(current or doc)
        await self.publish(updated)
        return attachment_view(updated)

    async def _complete_multipart(self, doc: Doc, client_parts: Sequence[Mapping[str, Any]] | None) -> None:
        spec = doc["upload"]
        try:
            landed = await self._storage.list_parts(doc["key"], spec["upload_id"])
        except UploadGone:
            return  # already completed (a concurrent complete) or aborted: the HEAD below decides
        by_number = {p.part_number: p for p in landed}
        missing = [n for n in range(1, spec["part_count"] + 1) if n not in by_number]
        if missing:
            raise Conflict(
                f"{len(missing)} part(s) have not been uploaded", code="upload_incomplete", missing_parts=missing[:100]
            )
        extra = sorted(n for n in by_number if n > spec["part_count"])
        wrong = [n for n in range(1, spec["part_count"] + 1) if by_number[n].size != self._expected_part_size(doc, n)]
        if extra or wrong:
            total = sum(p.size for p in landed)
            await self._reject_and_raise(
                doc,
                "size_mismatch",
                f"the parts add up to {total} bytes in {len(landed)} parts, {doc['size']} were declared",
            )
        if client_parts:
            claimed = {int(p["part_number"]): str(p["etag"]).strip('"') for p in client_parts}
            differing = [n for n, etag in claimed.items() if n not in by_number or by_number[n].etag.strip('"') != etag]
            if differing:
                raise Conflict(
                    "some parts differ from what S3 holds; upload them again",
                    code="part_mismatch",
                    parts=differing[:100],
                )
        parts: list[StoredPart] = [by_number[n] for n in range(1, spec["part_count"] + 1)]
        try:
            await self._storage.complete_multipart(doc["key"], spec["upload_id"], parts)
        except UploadGone:
            return

    def _expected_part_size(self, doc: Doc, part_number: int) -> int:
        spec = doc["upload"]
        if part_number < spec["part_count"]:
            return int(spec["part_size"])
        return int(doc["size"] - spec["part_size"] * (spec["part_count"] - 1))

    def _already_completed(self, doc: Doc) -> dict[str, Any]:
        if doc["status"] == AttachmentStatus.REJECTED:
            raise Conflict(
                f"the upload was rejected: {doc.get('reason')}", code="attachment_rejected", status=doc["status"]
            )
        return attachment_view(doc)

    async def _reject_and_raise(self, doc: Doc, code: str, why: str) -> None:
        await self._reject(doc, code, why)
        raise InvalidInput(
            f"upload rejected: {why}; the file was deleted", code=code, status=str(AttachmentStatus.REJECTED)
        )

    async def _reject(self, doc: Doc, code: str, why: str) -> Doc | None:
        rejected = await self.discard(doc, reason=code, detail=why)
        if rejected is not None:
            await self.publish(rejected)
        return rejected

    async def discard(
        self, doc: Doc, *, reason: str, detail: str, events: Sequence[Doc] = (), **event_data: Any
    ) -> Doc | None:
        """Reject a file for good, with `attachment.rejected` (after `events`) in the same write.

        Its bytes, preview and any unfinished multipart upload are deleted once the rejection is
        stored, so a file that changed meanwhile keeps them (and None is returned); when two
        rejections race, the one that stored it deletes. Callers publish the result.
        """
        data = {"attachment_id": doc["_id"], "conversation_id": doc["conversation_id"], "reason": reason}
        rejected_event = new_event(
            "attachment.rejected", doc["conversation_id"], {**data, "detail": detail, **event_data}
        )
        rejected = await self._store.transition(
            doc["_id"],
            from_statuses=[doc["status"]],
            changes={
                "status": str(AttachmentStatus.REJECTED),
                "reason": reason,
                "reason_detail": detail,
                "preview_key": None,
                "preview_url": None,
            },
            events=[*events, rejected_event],
        )
        if rejected is None:
            return None
        if doc["status"] == AttachmentStatus.AWAITING_UPLOAD and doc["upload"]["method"] == "MULTIPART":
            await self._storage.abort_multipart(doc["key"], doc["upload"]["upload_id"])
        for key in {doc["key"], doc.get("preview_key")} - {None}:
            await self._storage.delete(str(key))
        return rejected

    async def expire_stale_uploads(self) -> int:
        expired = 0
        for doc in await self._store.expired_uploads(utc_now()):
            if await self._reject(doc, "upload_expired", "the upload was not completed in time"):
                expired += 1
        return expired

    # --- reading ---------------------------------------------------------------------------

    async def get(self, caller: Identity, attachment_id: str) -> dict[str, Any]:
        return await self.view(await self._visible(caller, attachment_id, moderators_too=True))

    async def download_url(self, caller: Identity, attachment_id: str) -> str:
        doc = await self._visible(caller, attachment_id)
        if doc["status"] not in DOWNLOADABLE:
            raise Conflict(
                f"the file cannot be downloaded while it is {doc['status']}",
                code="attachment_not_ready",
                status=doc["status"],
            )
        return await self._storage.presign_get(
            doc["key"],
            expires_in=self._settings.download_url_ttl_seconds,
            filename=doc["filename"],
            content_type=doc["content_type"],
        )

    async def _visible(self, caller: Identity, attachment_id: str, *, moderators_too: bool = False) -> Doc:
        doc = await self._store.get(attachment_id)
        # Strangers learn nothing: the same answer as for an id that does not exist.
        if doc is None or (caller.user_id not in doc["participants"] and not (moderators_too and caller.is_moderator)):
            raise NotFound("no such attachment", code="attachment_not_found")
        return doc

    async def _own_pending_upload(self, caller: Identity, attachment_id: str) -> Doc:
        doc = await self._visible(caller, attachment_id)
        if doc["uploader_id"] != caller.user_id:
            raise Forbidden("only the uploader can do this", code="not_the_uploader")
        if doc["status"] != AttachmentStatus.AWAITING_UPLOAD:
            raise Conflict(f"the upload is already {doc['status']}", code="upload_not_pending", status=doc["status"])
        return doc

    # --- the AttachmentDirectory port of chat/ ----------------------------------------------

    async def check_attachable(self, user_id: str, conversation_id: str, attachment_ids: Sequence[str]) -> None:
        if not attachment_ids:
            return
        if len(attachment_ids) > self._settings.max_per_message:
            raise InvalidInput(
                f"at most {self._settings.max_per_message} attachments per message", code="too_many_attachments"
            )
        docs = {d["_id"]: d for d in await self._store.get_many(attachment_ids)}
        for attachment_id in attachment_ids:
            doc = docs.get(attachment_id)
            # Someone else's attachment, or one in another conversation, is as good as unknown.
            if doc is None or doc["uploader_id"] != user_id or doc["conversation_id"] != conversation_id:
                raise InvalidInput(f"no such attachment of yours here: {attachment_id}", code="attachment_not_found")
            if doc["status"] in NOT_ATTACHABLE:
                raise Conflict(
                    f"attachment {attachment_id} is {doc['status']}",
                    code="attachment_not_attachable",
                    status=doc["status"],
                )
            if doc.get("message_id"):
                raise Conflict(f"attachment {attachment_id} was already sent", code="attachment_already_sent")

    async def withdraw(self, attachment_ids: Sequence[str], reason: str) -> None:
        """Make files unavailable for good: rejected, their bytes and previews deleted."""
        for doc in await self._store.get_many(attachment_ids):
            if doc["status"] in (AttachmentStatus.REJECTED, AttachmentStatus.AWAITING_UPLOAD):
                continue
            withdrawn = await self.discard(doc, reason=reason, detail="the message carrying it was deleted")
            if withdrawn is not None:
                await self.publish(withdrawn)

    async def link_to_message(self, attachment_ids: Sequence[str], message_id: str) -> None:
        await self._store.link_to_message(attachment_ids, message_id)

    async def describe(self, attachment_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not attachment_ids:
            return {}
        return {doc["_id"]: await self.view(doc) for doc in await self._store.get_many(attachment_ids)}

    async def view(self, doc: Doc) -> dict[str, Any]:
        preview_url = None
        if doc.get("preview_key") and doc["status"] in DOWNLOADABLE:
            preview_url = await self._storage.presign_get(
                doc["preview_key"], expires_in=self._settings.download_url_ttl_seconds, filename=None, content_type=None
            )
        elif doc.get("preview_url"):
            preview_url = doc["preview_url"]
        return attachment_view(doc, preview_url)

    async def publish(self, doc: Doc) -> None:
        """Flush the attachment's events and tell both participants its new status."""
        if doc["status"] in (AttachmentStatus.UPLOADED, AttachmentStatus.CLEAN):
            self._on_claimable()
        await self._outbox.flush("attachments", doc["_id"])
        await self._notifier.emit("attachment:updated", {"attachment": await self.view(doc)}, doc["participants"])

    # --- validation ------------------------------------------------------------------------

    def _check_size(self, size: int) -> None:
        if size <= 0:
            raise InvalidInput("empty files cannot be sent", code="file_empty")
        if size > self._settings.max_file_size:
            raise PayloadTooLarge(
                f"the file is larger than {self._settings.max_file_size} bytes",
                code="file_too_large",
                max_size=self._settings.max_file_size,
            )

    def _checked_type(self, content_type: str, filename: str) -> str:
        normalised = normalise_type(content_type)
        if not _CONTENT_TYPE.match(normalised):
            raise InvalidInput("content_type must look like type/subtype", code="invalid_content_type")
        allowed = [normalise_type(t) for t in self._settings.allowed_types]
        denied = {normalise_type(t) for t in self._settings.denied_types}
        if normalised in denied or (allowed and not any(_type_matches(normalised, pattern) for pattern in allowed)):
            raise InvalidInput(f"files of type {normalised} are not accepted", code="type_not_allowed")
        by_extension = extension_type(filename)
        if by_extension in denied:
            raise InvalidInput(f"files named like {filename!r} are not accepted", code="type_not_allowed")
        return normalised


def _type_matches(content_type: str, pattern: str) -> bool:
    if pattern.endswith("/*"):
        return content_type.startswith(pattern[:-1])
    return content_type == pattern


def checked_filename(filename: str) -> str:
    """A display name: no paths, no control or bidi-override characters, at most 255 UTF-8 bytes."""
    name = unicodedata.normalize("NFC", filename).strip()
    if not name or name in (".", ".."):
        raise InvalidInput("filename must not be empty", code="invalid_filename")
    if "/" in name or "\\" in name:
        raise InvalidInput("filename must be a name, not a path", code="invalid_filename")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise InvalidInput("filename must not contain control or formatting characters", code="invalid_filename")
    if len(name.encode()) > MAX_FILENAME_BYTES:
        raise InvalidInput(f"filename must be at most {MAX_FILENAME_BYTES} bytes", code="invalid_filename")
    return name
