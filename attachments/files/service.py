"""File use cases: presigned direct-to-S3 uploads, verification of what landed, safe downloads.

No file byte passes through this service. It hands out narrow, short-lived presigned URLs, then
checks what actually arrived in S3 (size by HEAD, real type by sniffing the first bytes) before a
file may move on to the scanner; anything that does not match is rejected and deleted.

The bytes that were scanned are the bytes that are served: a grant writes only to the upload key,
and `complete` copies what landed there (server-side, inside S3) to the file key, which no grant
can write; verification, scanning, previews and downloads all read the file key. A grant used
again after `complete` changes nothing anyone reads.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

from attachments.files.content_check import (
    SNIFF_BYTES,
    ContentMismatch,
    extension_type,
    normalise_type,
    verify_content,
)
from attachments.files.lifecycle import check_move
from attachments.files.model import (
    DOWNLOADABLE,
    NOT_ATTACHABLE,
    Attachment,
    AttachmentChanged,
    AttachmentStatus,
    UploadMethod,
    UploadPlan,
    attachment_view,
)
from attachments.files.store import AttachmentStore
from attachments.storage import ObjectStorage, StoredPart, UploadGone
from chat import ChatService
from config.settings import AttachmentSettings
from core.clock import Clock, SystemClock, iso
from core.dispatch import AfterCommit
from core.errors import Code, Conflict, Forbidden, InvalidInput, NotFound, PayloadTooLarge
from core.events import Event, new_event
from core.identity import Identity
from core.ids import new_id
from core.notify import Notifier
from core.views import View

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_PARTS = 10_000
MAX_FILENAME_BYTES = 255
UPLOAD_PREFIX = "uploads/"
_CONTENT_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")


class AttachmentService:
    def __init__(
        self,
        settings: AttachmentSettings,
        store: AttachmentStore,
        storage: ObjectStorage,
        chat: ChatService,
        reactions: AfterCommit,
        notifier: Notifier,
        clock: Clock | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._storage = storage
        self._chat = chat
        self._reactions = reactions
        self._notifier = notifier
        self._clock = clock or SystemClock()

    # --- the one way an attachment changes --------------------------------------------------

    async def move(
        self,
        attachment: Attachment,
        to: AttachmentStatus,
        changes: Mapping[str, Any] | None = None,
        events: Sequence[Event] = (),
        *,
        from_statuses: Iterable[AttachmentStatus] | None = None,
        lease_owner: str | None = None,
    ) -> Attachment | None:
        """Move `attachment` to `to` (checked against the lifecycle table) with its events.

        The write is conditional on the attachment still being in the status it was read in (or
        one of `from_statuses`) and, for the pipeline, on still holding its lease. None when
        someone else moved it first. After the commit, `AttachmentChanged` is dispatched.
        """
        sources = list(from_statuses) if from_statuses is not None else [attachment.status]
        for source in sources:
            check_move(source, to)
        moved = await self._store.move(
            attachment.id,
            from_statuses=sources,
            changes={**(changes or {}), "status": to},
            events=events,
            lease_owner=lease_owner,
        )
        if moved is not None and (moved.status != attachment.status or events):
            await self._reactions.dispatch(AttachmentChanged(moved, previous=attachment.status))
        return moved

    async def announce(self, changed: AttachmentChanged) -> None:
        """The reaction that tells both participants a file's new status (`attachment:updated`)."""
        attachment = changed.attachment
        await self._notifier.emit(
            "attachment:updated", {"attachment": await self.view(attachment)}, attachment.participants
        )

    # --- upload ----------------------------------------------------------------------------

    async def request_upload(
        self, caller: Identity, conversation_id: str, *, filename: str, size: int, content_type: str
    ) -> View:
        conversation = await self._chat.conversation_for(caller, conversation_id)
        await self._chat.ensure_can_send(caller, conversation)  # `blocked` while either side blocks the other
        filename = checked_filename(filename)
        content_type = self._checked_type(content_type, filename)
        self._check_size(size)
        attachment_id = new_id()
        # Unguessable and under the conversation's prefix; the user's filename is only metadata.
        key = f"conversations/{conversation_id}/{attachment_id}"
        now = self._clock.now()
        if size > self._settings.multipart_threshold:
            part_size = self.part_size_for(size)
            upload_id = await self._storage.start_multipart(UPLOAD_PREFIX + key, content_type=content_type)
            plan = UploadPlan(UploadMethod.MULTIPART, upload_id, part_size, math.ceil(size / part_size))
        else:
            plan = UploadPlan(UploadMethod.POST if self._storage.supports_post_policy else UploadMethod.PUT)
        attachment = Attachment(
            id=attachment_id,
            conversation_id=conversation_id,
            participants=conversation.participants,
            uploader_id=caller.user_id,
            filename=filename,
            size=size,
            declared_type=content_type,
            content_type=content_type,
            status=AttachmentStatus.AWAITING_UPLOAD,
            upload_key=UPLOAD_PREFIX + key,
            key=key,
            created_at=now,
            expires_at=now + timedelta(seconds=self._settings.upload_expiry_seconds),
            upload=plan,
        )
        upload = await self._grant(attachment, range(1, plan.part_count + 1))
        await self._store.insert(attachment)
        return {"attachment": attachment_view(attachment), "upload": upload}

    async def _grant(self, attachment: Attachment, part_numbers: Sequence[int] | range) -> View:
        """Presigned URLs for the browser to upload the whole file, or the given parts of it."""
        plan = attachment.upload
        expires_in = self._settings.upload_url_ttl_seconds
        upload: View
        if plan.method is UploadMethod.POST:
            post = await self._storage.presign_post(
                attachment.upload_key, size=attachment.size, content_type=attachment.content_type, expires_in=expires_in
            )
            upload = {"method": "POST", "url": post["url"], "fields": post["fields"]}
        elif plan.method is UploadMethod.PUT:
            put = await self._storage.presign_put(
                attachment.upload_key, size=attachment.size, content_type=attachment.content_type, expires_in=expires_in
            )
            upload = {"method": "PUT", "url": put["url"], "headers": put["headers"]}
        else:
            parts = []
            for n in part_numbers:
                size = plan.expected_part_size(n, attachment.size)
                url = await self._storage.presign_part(
                    attachment.upload_key, str(plan.upload_id), n, size=size, expires_in=expires_in
                )
                parts.append({"part_number": n, "size": size, "url": url})
            upload = {"method": "MULTIPART", "upload_id": plan.upload_id, "part_size": plan.part_size, "parts": parts}
        upload["expires_at"] = iso(self._clock.now() + timedelta(seconds=expires_in))
        return upload

    def part_size_for(self, size: int) -> int:
        """The smallest whole-MiB part size that keeps the part count within S3's 10,000."""
        needed = math.ceil(size / MAX_PARTS)
        part_size = max(self._settings.min_part_size, math.ceil(needed / MiB) * MiB)
        return min(part_size, self._settings.max_part_size)

    async def resume(self, caller: Identity, attachment_id: str) -> View:
        """Fresh URLs for what has not landed yet (the whole of a single-part upload, missing parts of multipart)."""
        attachment = await self._own_pending_upload(caller, attachment_id)
        plan = attachment.upload
        if plan.method is not UploadMethod.MULTIPART:
            return {"attachment": attachment_view(attachment), "upload": await self._grant(attachment, ())}
        try:
            landed = await self._storage.list_parts(attachment.upload_key, str(plan.upload_id))
        except UploadGone:
            raise Conflict("the upload can no longer be resumed; start a new one", code=Code.UPLOAD_GONE) from None
        good = {p.part_number for p in landed if p.size == plan.expected_part_size(p.part_number, attachment.size)}
        missing = [n for n in range(1, plan.part_count + 1) if n not in good]
        upload = await self._grant(attachment, missing)
        upload["uploaded_parts"] = [
            {"part_number": p.part_number, "etag": p.etag} for p in landed if p.part_number in good
        ]
        return {"attachment": attachment_view(attachment), "upload": upload}

    async def abort(self, caller: Identity, attachment_id: str) -> View:
        attachment = await self._own_pending_upload(caller, attachment_id)
        rejected = await self.discard(attachment, reason="aborted", detail="the upload was aborted by the uploader")
        return attachment_view(rejected or attachment)

    async def complete(
        self, caller: Identity, attachment_id: str, client_parts: Sequence[Mapping[str, Any]] | None
    ) -> View:
        attachment = await self._visible(caller, attachment_id)
        if attachment.uploader_id != caller.user_id:
            raise Forbidden("only the uploader can complete an upload", code=Code.NOT_THE_UPLOADER)
        if attachment.status is not AttachmentStatus.AWAITING_UPLOAD:
            return self._already_completed(attachment)
        if attachment.upload.method is UploadMethod.MULTIPART:
            await self._complete_multipart(attachment, client_parts)
        landed = await self._storage.head(attachment.upload_key)
        if landed is None:
            return await self._nothing_landed(attachment)
        if landed.size != attachment.size:
            await self._reject_and_raise(
                attachment, Code.SIZE_MISMATCH, f"{landed.size} bytes arrived, {attachment.size} were declared"
            )
        # From here on only the file key is read: no grant can write there.
        await self._storage.copy(attachment.upload_key, attachment.key, size=attachment.size)
        await self._storage.delete(attachment.upload_key)
        stored = await self._storage.head(attachment.key)
        if stored is None or stored.size != attachment.size:
            await self._reject_and_raise(
                attachment, Code.SIZE_MISMATCH, f"{stored.size if stored else 0} bytes, {attachment.size} were declared"
            )
        head = await self._storage.read_range(attachment.key, 0, min(SNIFF_BYTES, attachment.size))
        try:
            verified_type = verify_content(head, declared_type=attachment.declared_type, filename=attachment.filename)
        except ContentMismatch as exc:
            await self._reject_and_raise(attachment, Code.CONTENT_MISMATCH, str(exc))
        now = self._clock.now()
        event = new_event(
            "attachment.uploaded",
            attachment.conversation_id,
            {
                "attachment_id": attachment.id,
                "conversation_id": attachment.conversation_id,
                "uploader_id": attachment.uploader_id,
                "filename": attachment.filename,
                "size": attachment.size,
                "content_type": verified_type,
            },
            occurred_at=now,
        )
        uploaded = await self.move(
            attachment,
            AttachmentStatus.UPLOADED,
            {"content_type": verified_type, "uploaded_at": now},
            [event],
        )
        if uploaded is None:
            current = await self._store.get(attachment_id)
            return self._already_completed(current or attachment)
        return attachment_view(uploaded)

    async def _nothing_landed(self, attachment: Attachment) -> View:
        current = await self._store.get(attachment.id)
        if current and current.status is not AttachmentStatus.AWAITING_UPLOAD:
            return self._already_completed(current)  # a concurrent complete got there first
        raise Conflict("nothing has been uploaded yet", code=Code.UPLOAD_MISSING)

    async def _complete_multipart(
        self, attachment: Attachment, client_parts: Sequence[Mapping[str, Any]] | None
    ) -> None:
        plan = attachment.upload
        try:
            landed = await self._storage.list_parts(attachment.upload_key, str(plan.upload_id))
        except UploadGone:
            return  # already completed (a concurrent complete) or aborted: the HEAD after decides
        by_number = {p.part_number: p for p in landed}
        missing = [n for n in range(1, plan.part_count + 1) if n not in by_number]
        if missing:
            raise Conflict(
                f"{len(missing)} part(s) have not been uploaded",
                code=Code.UPLOAD_INCOMPLETE,
                missing_parts=missing[:100],
            )
        extra = sorted(n for n in by_number if n > plan.part_count)
        wrong = [
            n for n in range(1, plan.part_count + 1) if by_number[n].size != plan.expected_part_size(n, attachment.size)
        ]
        if extra or wrong:
            total = sum(p.size for p in landed)
            await self._reject_and_raise(
                attachment,
                Code.SIZE_MISMATCH,
                f"the parts add up to {total} bytes in {len(landed)} parts, {attachment.size} were declared",
            )
        if client_parts:
            claimed = {int(p["part_number"]): str(p["etag"]).strip('"') for p in client_parts}
            differing = [n for n, etag in claimed.items() if n not in by_number or by_number[n].etag.strip('"') != etag]
            if differing:
                raise Conflict(
                    "some parts differ from what S3 holds; upload them again",
                    code=Code.PART_MISMATCH,
                    parts=differing[:100],
                )
        parts: list[StoredPart] = [by_number[n] for n in range(1, plan.part_count + 1)]
        try:
            await self._storage.complete_multipart(attachment.upload_key, str(plan.upload_id), parts)
        except UploadGone:
            return

    def _already_completed(self, attachment: Attachment) -> View:
        if attachment.status is AttachmentStatus.REJECTED:
            raise Conflict(
                f"the upload was rejected: {attachment.reason}",
                code=Code.ATTACHMENT_REJECTED,
                status=str(attachment.status),
            )
        return attachment_view(attachment)

    async def _reject_and_raise(self, attachment: Attachment, code: Code, why: str) -> None:
        await self.discard(attachment, reason=str(code), detail=why)
        raise InvalidInput(
            f"upload rejected: {why}; the file was deleted", code=code, status=str(AttachmentStatus.REJECTED)
        )

    async def discard(
        self, attachment: Attachment, *, reason: str, detail: str, events: Sequence[Event] = (), **event_data: Any
    ) -> Attachment | None:
        """Reject a file for good, with `attachment.rejected` (after `events`) in the same write.

        Its bytes, preview and any unfinished multipart upload are deleted once the rejection is
        stored, so a file that changed meanwhile keeps them (and None is returned); when two
        rejections race, the one that stored it deletes.
        """
        data = {"attachment_id": attachment.id, "conversation_id": attachment.conversation_id, "reason": reason}
        rejected_event = new_event(
            "attachment.rejected", attachment.conversation_id, {**data, "detail": detail, **event_data}
        )
        rejected = await self.move(
            attachment,
            AttachmentStatus.REJECTED,
            {"reason": reason, "reason_detail": detail, "preview_key": None, "preview_url": None},
            [*events, rejected_event],
        )
        if rejected is None:
            return None
        if attachment.status is AttachmentStatus.AWAITING_UPLOAD and attachment.upload.method is UploadMethod.MULTIPART:
            await self._storage.abort_multipart(attachment.upload_key, str(attachment.upload.upload_id))
        for key in {attachment.key, attachment.upload_key, attachment.preview_key} - {None}:
            await self._storage.delete(str(key))
        return rejected

    async def expire_stale_uploads(self) -> int:
        expired = 0
        for attachment in await self._store.expired_uploads(self._clock.now()):
            if await self.discard(attachment, reason="upload_expired", detail="the upload was not completed in time"):
                expired += 1
        return expired

    # --- reading ---------------------------------------------------------------------------

    async def get(self, caller: Identity, attachment_id: str) -> View:
        return await self.view(await self._visible(caller, attachment_id, moderators_too=True))

    async def find(self, attachment_id: str) -> Attachment | None:
        return await self._store.get(attachment_id)

    async def download_url(self, caller: Identity, attachment_id: str) -> str:
        attachment = await self._visible(caller, attachment_id)
        if attachment.status not in DOWNLOADABLE:
            raise Conflict(
                f"the file cannot be downloaded while it is {attachment.status}",
                code=Code.ATTACHMENT_NOT_READY,
                status=str(attachment.status),
            )
        return await self._storage.presign_get(
            attachment.key,
            expires_in=self._settings.download_url_ttl_seconds,
            filename=attachment.filename,
            content_type=attachment.content_type,
        )

    async def _visible(self, caller: Identity, attachment_id: str, *, moderators_too: bool = False) -> Attachment:
        attachment = await self._store.get(attachment_id)
        # Strangers learn nothing: the same answer as for an id that does not exist.
        if attachment is None or (
            caller.user_id not in attachment.participants and not (moderators_too and caller.is_moderator)
        ):
            raise NotFound("no such attachment", code=Code.ATTACHMENT_NOT_FOUND)
        return attachment

    async def _own_pending_upload(self, caller: Identity, attachment_id: str) -> Attachment:
        attachment = await self._visible(caller, attachment_id)
        if attachment.uploader_id != caller.user_id:
            raise Forbidden("only the uploader can do this", code=Code.NOT_THE_UPLOADER)
        if attachment.status is not AttachmentStatus.AWAITING_UPLOAD:
            raise Conflict(
                f"the upload is already {attachment.status}",
                code=Code.UPLOAD_NOT_PENDING,
                status=str(attachment.status),
            )
        return attachment

    async def view(self, attachment: Attachment, *, with_preview: bool = True) -> View:
        preview_url = None
        if with_preview and attachment.preview_key and attachment.status in DOWNLOADABLE:
            preview_url = await self._storage.presign_get(
                attachment.preview_key,
                expires_in=self._settings.download_url_ttl_seconds,
                filename=None,
                content_type=None,
            )
        elif with_preview and attachment.preview_url:
            preview_url = attachment.preview_url
        return attachment_view(attachment, preview_url)

    # --- the AttachmentDirectory port of chat/ ----------------------------------------------

    async def check_attachable(self, user_id: str, conversation_id: str, attachment_ids: Sequence[str]) -> None:
        if not attachment_ids:
            return
        if len(attachment_ids) > self._settings.max_per_message:
            raise InvalidInput(
                f"at most {self._settings.max_per_message} attachments per message", code=Code.TOO_MANY_ATTACHMENTS
            )
        found = {a.id: a for a in await self._store.get_many(attachment_ids)}
        for attachment_id in attachment_ids:
            attachment = found.get(attachment_id)
            # Someone else's attachment, or one in another conversation, is as good as unknown.
            if attachment is None or attachment.uploader_id != user_id or attachment.conversation_id != conversation_id:
                raise InvalidInput(f"no such attachment of yours here: {attachment_id}", code=Code.ATTACHMENT_NOT_FOUND)
            if attachment.status in NOT_ATTACHABLE:
                raise Conflict(
                    f"attachment {attachment_id} is {attachment.status}",
                    code=Code.ATTACHMENT_NOT_ATTACHABLE,
                    status=str(attachment.status),
                )
            if attachment.message_id:
                raise Conflict(f"attachment {attachment_id} was already sent", code=Code.ATTACHMENT_ALREADY_SENT)

    async def withdraw(self, attachment_ids: Sequence[str], reason: str) -> None:
        """Make files unavailable for good: rejected, their bytes and previews deleted."""
        for attachment in await self._store.get_many(attachment_ids):
            if attachment.status is AttachmentStatus.REJECTED:
                continue
            await self.discard(attachment, reason=reason, detail="the message carrying it was deleted")

    async def link_to_message(self, attachment_ids: Sequence[str], message_id: str) -> None:
        await self._store.link_to_message(attachment_ids, message_id)

    async def describe(self, attachment_ids: Sequence[str]) -> dict[str, View]:
        if not attachment_ids:
            return {}
        return {a.id: await self.view(a) for a in await self._store.get_many(attachment_ids)}

    async def statuses(self, attachment_ids: Sequence[str]) -> dict[str, AttachmentStatus]:
        return {a.id: a.status for a in await self._store.get_many(attachment_ids)}

    # --- validation ------------------------------------------------------------------------

    def _check_size(self, size: int) -> None:
        if size <= 0:
            raise InvalidInput("empty files cannot be sent", code=Code.FILE_EMPTY)
        if size > self._settings.max_file_size:
            raise PayloadTooLarge(
                f"the file is larger than {self._settings.max_file_size} bytes",
                code=Code.FILE_TOO_LARGE,
                max_size=self._settings.max_file_size,
            )

    def _checked_type(self, content_type: str, filename: str) -> str:
        normalised = normalise_type(content_type)
        if not _CONTENT_TYPE.match(normalised):
            raise InvalidInput("content_type must look like type/subtype", code=Code.INVALID_CONTENT_TYPE)
        allowed = [normalise_type(t) for t in self._settings.allowed_types]
        denied = {normalise_type(t) for t in self._settings.denied_types}
        if normalised in denied or (allowed and not any(_type_matches(normalised, pattern) for pattern in allowed)):
            raise InvalidInput(f"files of type {normalised} are not accepted", code=Code.TYPE_NOT_ALLOWED)
        by_extension = extension_type(filename)
        if by_extension in denied:
            raise InvalidInput(f"files named like {filename!r} are not accepted", code=Code.TYPE_NOT_ALLOWED)
        return normalised


def without_preview(attachment: Attachment) -> Attachment:
    """Metadata only: what a moderator is shown, never a link to the bytes."""
    return replace(attachment, preview_key=None, preview_url=None)


def _type_matches(content_type: str, pattern: str) -> bool:
    if pattern.endswith("/*"):
        return content_type.startswith(pattern[:-1])
    return content_type == pattern


def checked_filename(filename: str) -> str:
    """A display name: no paths, no control or bidi-override characters, at most 255 UTF-8 bytes."""
    name = unicodedata.normalize("NFC", filename).strip()
    if not name or name in (".", ".."):
        raise InvalidInput("filename must not be empty", code=Code.INVALID_FILENAME)
    if "/" in name or "\\" in name:
        raise InvalidInput("filename must be a name, not a path", code=Code.INVALID_FILENAME)
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise InvalidInput("filename must not contain control or formatting characters", code=Code.INVALID_FILENAME)
    if len(name.encode()) > MAX_FILENAME_BYTES:
        raise InvalidInput(f"filename must be at most {MAX_FILENAME_BYTES} bytes", code=Code.INVALID_FILENAME)
    return name
