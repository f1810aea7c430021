"""The `messenger` command as a person uses it: clear one-line errors, exit codes, a usable token."""

from __future__ import annotations

import os
import subprocess
import sys

from config.settings import AuthSettings
from core.identity import TokenVerifier
from tests.conftest import TEST_SECRET


def messenger(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "MONGODB_", "CHAT_", "REDIS_"))}
    return subprocess.run(
        [sys.executable, "-m", "messenger", *args],
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_token_prints_a_token_the_service_accepts() -> None:
    result = messenger("token", "alice", "--name", "Alice", "--moderator", "--ttl", "600", JWT_SECRET=TEST_SECRET)
    assert result.returncode == 0, result.stderr
    who = TokenVerifier(AuthSettings(secret=TEST_SECRET)).verify(result.stdout.strip())
    assert (who.user_id, who.name, who.is_moderator) == ("alice", "Alice", True)


def test_token_with_rs256_says_why_it_cannot() -> None:
    result = messenger("token", "alice", JWT_ALGORITHM="RS256", JWT_PUBLIC_KEY="unused")
    assert result.returncode == 1 and "JWT_ALGORITHM=HS256" in result.stderr and "Traceback" not in result.stderr


def test_a_bad_setting_stops_the_service_naming_the_variable() -> None:
    result = messenger("serve", "--port", "1", CHAT_MESSAGE_MAX_CHARS="zero")
    assert result.returncode == 1 and "CHAT_MESSAGE_MAX_CHARS" in result.stderr and "Traceback" not in result.stderr


def test_production_refuses_the_dev_secret() -> None:
    result = messenger("serve", MESSENGER_ENV="production")
    assert result.returncode == 1 and "JWT_SECRET" in result.stderr


def test_production_on_sqlite_refuses_separate_workers_naming_mongodb_uri() -> None:
    result = messenger("serve", MESSENGER_ENV="production", JWT_SECRET="x" * 40, WORKER_EMBEDDED="false")
    assert result.returncode == 1 and "MONGODB_URI" in result.stderr and "WORKER_EMBEDDED" in result.stderr


def test_a_separate_worker_needs_a_shared_database() -> None:
    result = messenger("worker")
    assert result.returncode == 1 and "MONGODB_URI" in result.stderr
