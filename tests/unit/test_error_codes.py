"""Every error code a client can meet is registered once in `core.errors.Code` and documented in docs/api.md."""

from __future__ import annotations

import re
from pathlib import Path

from core.errors import Code

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
# Codes that only name a generic class default or a reason inside an event, never a client's answer on their own.
NOT_IN_THE_TABLE = {
    "bad_request",
    "invalid_input",
    "unauthenticated",
    "forbidden",
    "conflict",
    "payload_too_large",
    "unavailable",
    "upload_expired",
    "aborted",
    "rejected_by_moderator",
    "token_issue_unsupported",
}


def documented_codes() -> set[str]:
    doc = API_DOC.read_text()
    table = doc[doc.index("## Error codes") : doc.index("## Differences")]
    return set(re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE))


def test_every_registered_code_is_in_the_api_reference_and_nothing_else_is() -> None:
    registered = {str(code) for code in Code}
    assert registered - NOT_IN_THE_TABLE - documented_codes() == set()
    assert documented_codes() - registered == set()


def test_codes_are_stable_snake_case() -> None:
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", str(code)) for code in Code)
