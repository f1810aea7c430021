"""The `messenger` command as a person uses it: clear one-line errors, exit codes, a usable token."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

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


def test_a_bad_embed_origin_stops_the_service_naming_the_variable() -> None:
    result = messenger("serve", "--port", "1", MESSENGER_EMBED_ORIGINS="https://market.example/shop")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("messenger: invalid configuration: MESSENGER_EMBED_ORIGINS: ")
    assert "not an origin (scheme://host[:port]): https://market.example/shop" in result.stderr


def test_production_refuses_the_dev_secret() -> None:
    result = messenger("serve", MESSENGER_ENV="production")
    assert result.returncode == 1 and "JWT_SECRET" in result.stderr


def test_production_on_sqlite_refuses_separate_workers_naming_mongodb_uri() -> None:
    result = messenger("serve", MESSENGER_ENV="production", JWT_SECRET="x" * 40, WORKER_EMBEDDED="false")
    assert result.returncode == 1 and "MONGODB_URI" in result.stderr and "WORKER_EMBEDDED" in result.stderr


def test_a_separate_worker_needs_a_shared_database() -> None:
    result = messenger("worker")
    assert result.returncode == 1 and "MONGODB_URI" in result.stderr


def test_backup_copies_the_embedded_database_and_refuses_mongodb(tmp_path: Path) -> None:
    data = tmp_path / "data"
    served = messenger("backup", str(tmp_path / "nothing-yet"), MESSENGER_DATA_DIR=str(data))
    assert served.returncode == 1 and "no database at" in served.stderr and "Traceback" not in served.stderr
    data.mkdir()
    with sqlite3.connect(data / "messenger.db") as db:
        db.execute("CREATE TABLE t (a)")
        db.execute("INSERT INTO t VALUES (42)")
    done = messenger("backup", str(tmp_path / "copy"), MESSENGER_DATA_DIR=str(data))
    assert done.returncode == 0 and "backed up messenger.db" in done.stdout, done.stderr
    with sqlite3.connect(tmp_path / "copy" / "messenger.db") as copy:
        assert copy.execute("SELECT a FROM t").fetchall() == [(42,)]
    again = messenger("backup", str(tmp_path / "copy"), MESSENGER_DATA_DIR=str(data))
    assert again.returncode == 1 and "not empty" in again.stderr
    mongo = messenger("backup", str(tmp_path / "other"), MONGODB_URI="mongodb://db:27017/?replicaSet=rs0")
    assert mongo.returncode == 1 and "mongodump" in mongo.stderr
