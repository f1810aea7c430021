"""One validated settings section per concern; `load_settings` reads them all from the environment.

A bad value stops the service at start with a message that names the exact variable, and
production mode refuses the defaults that are only safe on a developer's machine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

# Signs tokens on a developer's machine only; production refuses to start with it.
DEV_JWT_SECRET = "dev-only-insecure-secret-change-me-0123456789"


class ConfigError(Exception):
    """A setting is missing, malformed or unsafe; the message names the variable to fix."""


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class ContactPolicy(StrEnum):
    MASK = "mask"  # deliver with contact details masked for the recipient, flag for moderators
    HOLD = "hold"  # store and flag, but withhold from the recipient until a moderator releases it
    OFF = "off"  # no detection


# What a browser sends as Origin: nothing else may reach a CSP header or the page's markup.
ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")


class _Section(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)


class RuntimeSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="MESSENGER_", extra="ignore", frozen=True)
    env: Environment = Environment.DEVELOPMENT
    data_dir: str = ".messenger"  # embedded S3 objects, clamd files and the like
    log_level: str = "INFO"
    cors_origins: list[str] = Field(default_factory=list)
    # Off by default: per-connection zlib state costs far more memory than small messages save.
    websocket_compression: bool = False
    # Host pages allowed to frame /embed, space or comma separated (not JSON: it reads like the
    # CSP's frame-ancestors it becomes); empty: nobody may.
    embed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("embed_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [origin for origin in re.split(r"[\s,]+", value) if origin]
        if not isinstance(value, list):
            return value
        origins = [str(origin).rstrip("/") for origin in value]
        bad = [origin for origin in origins if not ORIGIN.match(origin)]
        if bad:
            raise ValueError(f"not an origin (scheme://host[:port]): {', '.join(bad)}")
        return origins


class AuthSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="JWT_", extra="ignore", frozen=True)
    secret: str = DEV_JWT_SECRET
    algorithm: str = "HS256"
    public_key: str | None = None  # PEM, for RS256 tokens signed by the marketplace
    issuer: str | None = None
    audience: str | None = None
    leeway_seconds: int = Field(default=10, ge=0, le=300)

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, value: str) -> str:
        if value not in ("HS256", "RS256"):
            raise ValueError("must be HS256 or RS256")
        return value


class MongoSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="MONGODB_", extra="ignore", frozen=True)
    uri: str | None = None  # unset: SQLite in MESSENGER_DATA_DIR (one node); set: a replica set (several nodes)
    database: str = "messenger"


class SqliteSettings(_Section):
    """The embedded database (`<MESSENGER_DATA_DIR>/messenger.db`), used when MONGODB_URI is unset."""

    model_config = SettingsConfigDict(env_prefix="SQLITE_", extra="ignore", frozen=True)
    # NORMAL: every acknowledged write survives the process dying; FULL: also the machine losing power.
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"

    @field_validator("synchronous", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class ChatSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="CHAT_", extra="ignore", frozen=True)
    message_max_chars: int = Field(default=5000, ge=1, le=100_000)
    send_rate_per_second: float = Field(default=5.0, gt=0)
    send_burst: int = Field(default=10, ge=1)
    # Sends being stored and fanned out at once on this node; beyond it a send is refused as
    # `overloaded` at once instead of queueing (and its ack arriving too late to be of use).
    sends_in_flight_max: int = Field(default=512, ge=1)
    typing_min_interval_seconds: float = Field(default=0.5, ge=0)
    contact_policy: ContactPolicy = ContactPolicy.MASK
    history_page_max: int = Field(default=200, ge=1, le=1000)
    # How often each node looks for its sockets whose token has expired and ends them: so, at most,
    # how long past its exp (and JWT_LEEWAY_SECONDS) a session can still receive pushes.
    session_expiry_sweep_seconds: float = Field(default=5.0, gt=0, le=60)


class InboxSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="INBOX_", extra="ignore", frozen=True)
    # How long a message may stay unread before `conversation.unread_reminder` (once per unread streak).
    unread_reminder_delay_seconds: float = Field(default=900.0, gt=0)
    # How often due reminders are looked for (so, roughly, how late one can be).
    reminder_poll_seconds: float = Field(default=15.0, gt=0)
    # The responsiveness read model's window, and what counts as an answer in time.
    response_window_days: int = Field(default=30, ge=1, le=365)
    response_deadline_hours: float = Field(default=24.0, gt=0)


class RedisSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="REDIS_", extra="ignore", frozen=True)
    url: str | None = None  # set it to run several service nodes that share Socket.IO rooms


MiB = 1024 * 1024
GiB = 1024 * MiB


class S3Settings(_Section):
    model_config = SettingsConfigDict(env_prefix="S3_", extra="ignore", frozen=True)
    bucket: str = "messenger-attachments"
    region: str = "us-east-1"
    endpoint_url: str | None = None  # unset: AWS; unset in development: the embedded S3 API server
    public_endpoint_url: str | None = None  # what browsers reach, if different (presigning signs the host)
    accelerate: bool = False  # S3 Transfer Acceleration for browser URLs (AWS only)
    access_key_id: str | None = None  # unset: the AWS default credential chain
    secret_access_key: str | None = None
    embedded_port: int = Field(default=0, ge=0, le=65535)  # 0: any free port
    embedded: bool | None = None  # None: embedded when no endpoint is set and not in production

    @field_validator("endpoint_url", "public_endpoint_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


class AttachmentSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="ATTACHMENTS_", extra="ignore", frozen=True)
    max_file_size: int = Field(default=5 * GiB, ge=1)
    multipart_threshold: int = Field(default=100 * MiB, ge=5 * MiB)
    min_part_size: int = Field(default=8 * MiB, ge=5 * MiB)
    max_part_size: int = Field(default=512 * MiB, le=5 * GiB)
    upload_url_ttl_seconds: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    # A presigned GET is a bearer URL: whoever holds it downloads the file until it expires.
    download_url_ttl_seconds: int = Field(default=60, ge=1, le=3600)
    # An upload not completed by then is expired: its record rejected, its bytes deleted.
    upload_expiry_seconds: int = Field(default=24 * 3600, ge=60)
    allowed_types: list[str] = Field(default_factory=list)  # empty: any type not denied
    denied_types: list[str] = Field(
        default_factory=lambda: ["application/x-msdownload", "application/x-dosexec", "application/x-sh"]
    )
    max_per_message: int = Field(default=20, ge=1, le=50)


class ScannerSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="CLAMD_", extra="ignore", frozen=True)
    # tcp://host:port or a unix socket path; unset: the service starts its own clamd
    address: str | None = None
    # clamd's own ceiling is 4 GB; larger files cannot be scanned and go to a moderator (needs_review).
    stream_max_length: int = Field(default=4000 * MiB, ge=1, le=4095 * MiB)
    chunk_size: int = Field(default=1 * MiB, ge=4096, le=64 * MiB)
    timeout_seconds: float = Field(default=60.0, gt=0)


class WorkerSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="WORKER_", extra="ignore", frozen=True)
    concurrency: int = Field(default=4, ge=1, le=256)
    lease_seconds: float = Field(default=60.0, ge=1)
    max_attempts: int = Field(default=5, ge=1)
    backoff_base_seconds: float = Field(default=2.0, ge=0)
    poll_interval_seconds: float = Field(default=0.5, gt=0)
    embedded: bool = True  # run the pipeline inside `messenger serve`; false when `messenger worker`s run it


class PreviewSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="PREVIEW_", extra="ignore", frozen=True)
    max_source_bytes: int = Field(default=50 * MiB, ge=1)  # larger files get no local preview
    thumbnail_px: int = Field(default=480, ge=32, le=4096)
    cloudinary_url: str | None = Field(default=None, validation_alias="CLOUDINARY_URL")
    cloudinary_folder: str = "messenger"
    cloudinary_upload_prefix: str | None = None  # another API host (tests use a local stand-in)


class KafkaSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore", frozen=True)
    bootstrap_servers: str | None = None  # unset: events stay in the outbox (GET /api/v1/events)
    topic_prefix: str = "messenger"
    idempotence: bool = True  # the broker must support InitProducerId; switch off for ones that do not
    batch_size: int = Field(default=500, ge=1, le=10_000)
    poll_interval_seconds: float = Field(default=0.2, gt=0)
    # Most managed clusters want TLS and SASL; PLAINTEXT is for a broker on a private network.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None  # unset: the system's trusted CAs


SECTIONS: dict[str, type[_Section]] = {
    "runtime": RuntimeSettings,
    "auth": AuthSettings,
    "mongo": MongoSettings,
    "sqlite": SqliteSettings,
    "chat": ChatSettings,
    "inbox": InboxSettings,
    "redis": RedisSettings,
    "s3": S3Settings,
    "attachments": AttachmentSettings,
    "scanner": ScannerSettings,
    "worker": WorkerSettings,
    "preview": PreviewSettings,
    "kafka": KafkaSettings,
}


@dataclass(frozen=True)
class Settings:
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    mongo: MongoSettings = field(default_factory=MongoSettings)
    sqlite: SqliteSettings = field(default_factory=SqliteSettings)
    chat: ChatSettings = field(default_factory=ChatSettings)
    inbox: InboxSettings = field(default_factory=InboxSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    s3: S3Settings = field(default_factory=S3Settings)
    attachments: AttachmentSettings = field(default_factory=AttachmentSettings)
    scanner: ScannerSettings = field(default_factory=ScannerSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    preview: PreviewSettings = field(default_factory=PreviewSettings)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)

    @property
    def production(self) -> bool:
        return self.runtime.env is Environment.PRODUCTION

    @property
    def embedded_s3(self) -> bool:
        if self.s3.embedded is not None:
            return self.s3.embedded
        return self.s3.endpoint_url is None and not self.production


def _variable_name(section: type[_Section], location: tuple[Any, ...]) -> str:
    prefix = str(section.model_config.get("env_prefix", ""))
    return (prefix + "_".join(str(part) for part in location)).upper()


def load_settings(overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Settings:
    """Read every section from the environment (and `overrides`, for tests); refuse bad config."""
    overrides = overrides or {}
    values: dict[str, Any] = {}
    for name, section in SECTIONS.items():
        try:
            values[name] = section(**dict(overrides.get(name, {})))
        except SettingsError as exc:
            raise ConfigError(f'invalid configuration: {exc} (list values are JSON, e.g. ["a", "b"])') from None
        except ValidationError as exc:
            problems = "; ".join(f"{_variable_name(section, tuple(err['loc']))}: {err['msg']}" for err in exc.errors())
            raise ConfigError(f"invalid configuration: {problems}") from None
    settings = Settings(**values)
    _refuse_inconsistent(settings)
    _refuse_unsafe_production(settings)
    return settings


def _refuse_inconsistent(settings: Settings) -> None:
    problems = []
    if settings.s3.accelerate and (settings.s3.endpoint_url or settings.s3.public_endpoint_url or settings.embedded_s3):
        problems.append(
            "S3_ACCELERATE=true works only against AWS itself: unset S3_ENDPOINT_URL and S3_PUBLIC_ENDPOINT_URL,"
            " and set S3_EMBEDDED=false in development"
            " (botocore cannot combine the accelerate endpoint with a custom one)"
        )
    if settings.redis.url and not settings.mongo.uri:
        problems.append(
            "REDIS_URL runs several nodes, and they must share one database: set MONGODB_URI"
            " (the embedded SQLite database serves one node)"
        )
    k = settings.kafka
    if k.security_protocol.startswith("SASL") and not (k.sasl_mechanism and k.sasl_username and k.sasl_password):
        problems.append(
            f"KAFKA_SECURITY_PROTOCOL={k.security_protocol} needs KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and"
            " KAFKA_SASL_PASSWORD"
        )
    a = settings.attachments
    if a.min_part_size > a.max_part_size:
        problems.append("ATTACHMENTS_MIN_PART_SIZE must not exceed ATTACHMENTS_MAX_PART_SIZE")
    if a.max_file_size > a.max_part_size * 10_000:
        problems.append("ATTACHMENTS_MAX_FILE_SIZE is more than 10,000 parts of ATTACHMENTS_MAX_PART_SIZE")
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems))


def _refuse_unsafe_production(settings: Settings) -> None:
    if not settings.production:
        return
    problems = []
    if settings.auth.algorithm == "HS256" and settings.auth.secret == DEV_JWT_SECRET:
        problems.append("JWT_SECRET must be set to the marketplace's secret (the dev secret is refused)")
    if settings.auth.algorithm == "HS256" and len(settings.auth.secret) < 32:
        problems.append("JWT_SECRET must be at least 32 characters")
    if settings.auth.algorithm == "RS256" and not settings.auth.public_key:
        problems.append("JWT_PUBLIC_KEY must be set when JWT_ALGORITHM=RS256")
    if not settings.mongo.uri and not settings.worker.embedded:
        # SQLite serves one node well; separate worker processes cannot share it.
        problems.append(
            "MONGODB_URI must point at a MongoDB replica set when WORKER_EMBEDDED=false"
            " (separate `messenger worker` processes cannot share the embedded SQLite database)"
        )
    if settings.s3.embedded:
        problems.append(
            "S3_EMBEDDED must not be true (the embedded S3 server runs on this one machine:"
            " set S3_ENDPOINT_URL or use AWS)"
        )
    if problems:
        raise ConfigError("refusing to start in production (MESSENGER_ENV=production): " + "; ".join(problems))
