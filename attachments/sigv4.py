"""SigV4 query signing for the presigned URLs browsers use: botocore's exact URL, without its per-call machinery.

botocore's `generate_presigned_url` resolves the endpoint ruleset, validates and serialises the
parameters and runs its event hooks on every call (about 365 us of CPU here for a PUT grant); the
signature itself is a hash and five HMACs (about 15 us). So S3Storage asks botocore once, at start,
where its URLs point and which region they are scoped to (`UrlBase.from_presigned` on a probe URL),
and signs each URL here. tests/unit/test_sigv4.py checks every URL equals botocore's for the same
inputs and time; tests/integration/test_embedded_s3.py that the embedded server enforces them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import parse_qsl, quote, urlsplit

from core.clock import utc_now

ALGORITHM = "AWS4-HMAC-SHA256"
# S3 presigned URLs never sign the body: the browser sends it after the URL is made.
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
DEFAULT_PORTS = {"http": 80, "https": 443}


class SigningCredentials(Protocol):
    """botocore's ReadOnlyCredentials (frozen, so a rotating key is read once per URL)."""

    @property
    def access_key(self) -> str: ...
    @property
    def secret_key(self) -> str: ...
    @property
    def token(self) -> str | None: ...


def encode(value: str) -> str:
    """RFC 3986 percent-encoding, as SigV4 canonicalises query strings (and botocore writes them)."""
    return quote(value, safe="-_.~")


@dataclass(frozen=True)
class UrlBase:
    """What every URL of one bucket and endpoint shares: learnt once from a URL botocore presigned."""

    origin: str  # scheme://netloc, as botocore writes it
    prefix: str  # the path before the key: "/bucket/" (path style) or "/" (virtual host)
    host: str  # the Host header as signed: lower case, no default port
    region: str
    service: str

    @classmethod
    def from_presigned(cls, url: str, key: str) -> UrlBase:
        parts = urlsplit(url)
        quoted = quote(key, safe="/~")
        if not parts.path.endswith(quoted):
            raise ValueError(f"the probe URL's path {parts.path!r} does not end with its key {quoted!r}")
        credential = dict(parse_qsl(parts.query))["X-Amz-Credential"]
        _access_key, _day, region, service, _terminator = credential.rsplit("/", 4)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"  # IPv6 literal
        if parts.port is not None and parts.port != DEFAULT_PORTS.get(parts.scheme):
            host = f"{host}:{parts.port}"
        return cls(f"{parts.scheme}://{parts.netloc}", parts.path[: -len(quoted)], host, region, service)


class QuerySigner:
    """Presigns URLs (signature in the query string) for one UrlBase; keeps the day's signing key."""

    def __init__(self, base: UrlBase) -> None:
        self.base = base
        self._key_for: tuple[str, str] = ("", "")
        self._key = b""

    def presign(
        self,
        credentials: SigningCredentials,
        method: str,
        key: str,
        *,
        expires_in: int,
        headers: Mapping[str, str] | None = None,
        query: Sequence[tuple[str, str]] = (),
        now: datetime | None = None,
    ) -> str:
        """The URL for `method` on `key`; every header given is signed, so S3 refuses a request without it.

        `query` holds the operation's own parameters (uploadId, partNumber, response-content-*), in the
        order botocore writes them; the signature covers them too.
        """
        moment = (now or utc_now()).astimezone(UTC)
        stamp = moment.strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        base = self.base
        scope = f"{day}/{base.region}/{base.service}/aws4_request"
        signed = {name.lower(): " ".join(str(value).split()) for name, value in (headers or {}).items()}
        signed["host"] = base.host
        names = sorted(signed)
        signed_headers = ";".join(names)
        auth = [
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", f"{credentials.access_key}/{scope}"),
            ("X-Amz-Date", stamp),
            ("X-Amz-Expires", str(expires_in)),
            ("X-Amz-SignedHeaders", signed_headers),
        ]
        if credentials.token is not None:
            auth.append(("X-Amz-Security-Token", credentials.token))
        pairs = [(encode(name), encode(value)) for name, value in (*query, *auth)]
        path = base.prefix + quote(key, safe="/~")
        canonical_request = "\n".join(
            (
                method,
                path,
                "&".join(f"{name}={value}" for name, value in sorted(pairs)),
                "".join(f"{name}:{signed[name]}\n" for name in names),
                signed_headers,
                UNSIGNED_PAYLOAD,
            )
        )
        string_to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(credentials.secret_key, day), string_to_sign.encode(), hashlib.sha256)
        query_string = "&".join(f"{name}={value}" for name, value in pairs)
        return f"{base.origin}{path}?{query_string}&X-Amz-Signature={signature.hexdigest()}"

    def _signing_key(self, secret_key: str, day: str) -> bytes:
        if self._key_for != (secret_key, day):
            key = hmac.new(f"AWS4{secret_key}".encode(), day.encode(), hashlib.sha256).digest()
            for part in (self.base.region, self.base.service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._key, self._key_for = key, (secret_key, day)
        return self._key
