"""One validated settings section per concern; `load_settings` reads them all from the environment.

A bad value stops the service at start with a message that names the exact variable, and
production mode refuses the defaults that are only safe on a developer's machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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


class _Section(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)


class RuntimeSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="MESSENGER_", extra="ignore", frozen=True)
    env: Environment = Environment.DEVELOPMENT
    data_dir: str = ".messenger"  # embedded S3 objects, clamd files and the like
    log_level: str = "INFO"
    cors_origins: list[str] = Field(default_factory=list)


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
    uri: str | None = None  # unset: the in-process engine of the embedded default
    database: str = "messenger"


class ChatSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="CHAT_", extra="ignore", frozen=True)
    message_max_chars: int = Field(default=5000, ge=1, le=100_000)
    send_rate_per_second: float = Field(default=5.0, gt=0)
    send_burst: int = Field(default=10, ge=1)
    typing_min_interval_seconds: float = Field(default=0.5, ge=0)
    contact_policy: ContactPolicy = ContactPolicy.MASK
    history_page_max: int = Field(default=200, ge=1, le=1000)


class RedisSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="REDIS_", extra="ignore", frozen=True)
    url: str | None = None  # set it to run several service nodes that share Socket.IO rooms


SECTIONS: dict[str, type[_Section]] = {
    "runtime": RuntimeSettings,
    "auth": AuthSettings,
    "mongo": MongoSettings,
    "chat": ChatSettings,
    "redis": RedisSettings,
}


@dataclass(frozen=True)
class Settings:
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    mongo: MongoSettings = field(default_factory=MongoSettings)
    chat: ChatSettings = field(default_factory=ChatSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)

    @property
    def production(self) -> bool:
        return self.runtime.env is Environment.PRODUCTION


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
        except ValidationError as exc:
            problems = "; ".join(f"{_variable_name(section, tuple(err['loc']))}: {err['msg']}" for err in exc.errors())
            raise ConfigError(f"invalid configuration: {problems}") from None
    settings = Settings(**values)
    _refuse_unsafe_production(settings)
    return settings


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
    if not settings.mongo.uri:
        problems.append("MONGODB_URI must point at a MongoDB replica set (the embedded engine is refused)")
    if problems:
        raise ConfigError("refusing to start in production (MESSENGER_ENV=production): " + "; ".join(problems))
