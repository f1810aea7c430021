"""Checks the first bytes of an uploaded object against the type and filename the client declared.

The client's declared type is never trusted on its own: `filetype` sniffs the real type from the
magic bytes, and the declared type and the filename's extension must both agree with it.
"""

from __future__ import annotations

import mimetypes
from pathlib import PurePosixPath

import filetype

SNIFF_BYTES = 8192

_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-png": "image/png",
    "application/x-zip-compressed": "application/zip",
    "audio/mp3": "audio/mpeg",
    "application/x-pdf": "application/pdf",
}
# Formats that are zip files inside: filetype may see only the zip around them.
_ZIP_CONTAINERS = {
    "application/zip",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/epub+zip",
    "application/java-archive",
}
# Types filetype recognises by magic bytes; a file declared as one must really be one. The generic
# binary type is not among them, even though filetype labels a few formats with it.
_DETECTABLE = {kind.mime for kind in filetype.types} - {"application/octet-stream"}
_TEXTUAL = {"application/json", "application/xml", "application/x-ndjson", "application/javascript"}


class ContentMismatch(Exception):
    """What landed is not what was declared; the message says why, in words a user can act on."""


def normalise_type(content_type: str) -> str:
    base = content_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(base, base)


def extension_type(filename: str) -> str | None:
    guessed, _ = mimetypes.guess_type(PurePosixPath(filename).name, strict=False)
    return normalise_type(guessed) if guessed else None


def verify_content(head: bytes, *, declared_type: str, filename: str) -> str:
    """Return the verified content type, or raise ContentMismatch."""
    declared = normalise_type(declared_type)
    by_extension = extension_type(filename)
    kind = filetype.guess(head) if head else None
    if kind is not None:
        real = normalise_type(kind.mime)
        if not _compatible(declared, real):
            raise ContentMismatch(f"the file is {real}, not {declared} as declared")
        if by_extension is not None and not _compatible(by_extension, real) and by_extension != declared:
            raise ContentMismatch(f"the file is {real}, which does not match its name {filename!r}")
        return declared if declared in _ZIP_CONTAINERS else real
    if declared in _DETECTABLE:
        raise ContentMismatch(f"the file is not a valid {declared}")
    if by_extension is not None and by_extension in _DETECTABLE:
        raise ContentMismatch(f"the file's content does not match its name {filename!r}")
    if (declared.startswith("text/") or declared in _TEXTUAL) and b"\x00" in head:
        raise ContentMismatch(f"the file is binary, not {declared} as declared")
    return declared


def _compatible(declared: str, real: str) -> bool:
    if declared == real:
        return True
    return real == "application/zip" and declared in _ZIP_CONTAINERS
