"""Malware scanning for attachments: an asyncio ClamAV client and an embedded clamd supervisor."""

from scanner.clamd_client import ClamdClient, ClamdError, parse_instream_reply
from scanner.embedded import ClamdUnavailable, EmbeddedClamd, find_clamd_binary
from scanner.verdict import ScanResult, Verdict

__all__ = [
    "ClamdClient",
    "ClamdError",
    "ClamdUnavailable",
    "EmbeddedClamd",
    "ScanResult",
    "Verdict",
    "find_clamd_binary",
    "parse_instream_reply",
]
