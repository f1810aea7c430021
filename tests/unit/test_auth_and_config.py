"""Tokens are verified strictly, and configuration mistakes stop the service with the variable's name."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from config.settings import DEV_JWT_SECRET, AuthSettings, ConfigError, load_settings
from core.errors import Unauthenticated
from core.identity import TokenVerifier, issue_token
from tests.conftest import TEST_SECRET

AUTH = AuthSettings(secret=TEST_SECRET)


def code_of(token: object, settings: AuthSettings = AUTH) -> str:
    with pytest.raises(Unauthenticated) as error:
        TokenVerifier(settings).verify(token)
    return error.value.code


def test_a_valid_token_gives_the_identity() -> None:
    token = issue_token(AUTH, "u1", name="Ann", moderator=True)
    who = TokenVerifier(AUTH).verify(token)
    assert (who.user_id, who.name, who.is_moderator) == ("u1", "Ann", True)


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (None, "token_missing"),
        ("", "token_missing"),
        ("not-a-jwt", "token_invalid"),
        (
            jwt.encode(
                {"sub": "u1", "exp": int(time.time()) + 86400}, "another-secret-of-enough-length-00000", "HS256"
            ),
            "token_invalid",
        ),
        (jwt.encode({"sub": "u1", "exp": int(time.time()) - 3600}, TEST_SECRET, "HS256"), "token_expired"),
        (jwt.encode({"sub": "u1"}, TEST_SECRET, "HS256"), "token_invalid"),  # no exp
        (jwt.encode({"exp": int(time.time()) + 86400}, TEST_SECRET, "HS256"), "token_invalid"),  # no sub
        (jwt.encode({"sub": "u1", "exp": int(time.time()) + 86400}, None, "none"), "token_invalid"),  # unsigned
        (
            jwt.encode({"sub": "u1", "exp": int(time.time()) + 86400, "roles": "moderator"}, TEST_SECRET, "HS256"),
            "token_invalid",
        ),
        (jwt.encode({"sub": 42, "exp": int(time.time()) + 86400}, TEST_SECRET, "HS256"), "token_invalid"),
        (jwt.encode({"sub": "a b/c", "exp": int(time.time()) + 86400}, TEST_SECRET, "HS256"), "token_invalid"),
        (jwt.encode({"sub": "x" * 129, "exp": int(time.time()) + 86400}, TEST_SECRET, "HS256"), "token_invalid"),
    ],
)
def test_bad_tokens_are_refused_with_a_stable_code(token: object, code: str) -> None:
    assert code_of(token) == code


def test_rs256_tokens_verify_with_the_public_key_and_refuse_hs256_with_it_as_secret() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings = AuthSettings(algorithm="RS256", public_key=public)
    good = jwt.encode({"sub": "u9", "exp": int(time.time()) + 86400}, key, "RS256")
    assert TokenVerifier(settings).verify(good).user_id == "u9"
    # the classic key-confusion attack: HS256 signed with the public key as the secret
    forged = jwt.encode({"sub": "u9", "exp": int(time.time()) + 86400}, "x" * 40, "HS256")
    assert code_of(forged, settings) == "token_invalid"


def test_a_bad_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="CHAT_MESSAGE_MAX_CHARS"):
        load_settings({"chat": {"message_max_chars": 0}})
    with pytest.raises(ConfigError, match="CHAT_CONTACT_POLICY"):
        load_settings({"chat": {"contact_policy": "shout"}})


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_MESSAGE_MAX_CHARS", "42")
    monkeypatch.setenv("JWT_SECRET", TEST_SECRET)
    settings = load_settings()
    assert settings.chat.message_max_chars == 42 and settings.auth.secret == TEST_SECRET


def test_production_refuses_the_dev_secret() -> None:
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        load_settings({"runtime": {"env": "production"}, "auth": {"secret": DEV_JWT_SECRET}})
    ok = load_settings(
        {
            "runtime": {"env": "production"},
            "auth": {"secret": TEST_SECRET},
            "mongo": {"uri": "mongodb://db:27017/?replicaSet=rs0"},
        }
    )
    assert ok.production


def test_production_runs_one_node_on_sqlite_but_not_several_or_separate_workers() -> None:
    production = {"runtime": {"env": "production"}, "auth": {"secret": TEST_SECRET}, "s3": {"embedded": False}}
    assert load_settings(production).mongo.uri is None  # one node: the embedded SQLite database
    with pytest.raises(ConfigError, match="MONGODB_URI") as separate:
        load_settings({**production, "worker": {"embedded": False}})
    assert "WORKER_EMBEDDED=false" in str(separate.value)
    with pytest.raises(ConfigError, match="MONGODB_URI") as several:
        load_settings({**production, "redis": {"url": "redis://127.0.0.1:6379/0"}})
    assert "REDIS_URL" in str(several.value)


def test_sqlite_durability_is_a_setting() -> None:
    assert load_settings().sqlite.synchronous == "NORMAL"
    assert load_settings({"sqlite": {"synchronous": "full"}}).sqlite.synchronous == "FULL"
    with pytest.raises(ConfigError, match="SQLITE_SYNCHRONOUS"):
        load_settings({"sqlite": {"synchronous": "OFF"}})


def test_accelerate_is_refused_with_the_embedded_s3_and_lists_must_be_json(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="S3_ACCELERATE"):
        load_settings({"s3": {"accelerate": True}})
    assert load_settings({"s3": {"accelerate": True, "embedded": False}}).s3.accelerate
    monkeypatch.setenv("MESSENGER_CORS_ORIGINS", "https://marketplace.example")
    with pytest.raises(ConfigError, match=r"cors_origins|MESSENGER_CORS_ORIGINS"):
        load_settings()


def test_several_nodes_need_a_shared_database() -> None:
    with pytest.raises(ConfigError, match="MONGODB_URI"):
        load_settings({"redis": {"url": "redis://127.0.0.1:6379/0"}})


def test_a_token_verified_before_is_still_refused_once_it_expires() -> None:
    """The verifier keeps tokens it verified; a kept one must still expire exactly as a fresh check would."""
    settings = AuthSettings(secret=TEST_SECRET, leeway_seconds=0)
    verifier = TokenVerifier(settings)
    expires = int(time.time()) + 2
    token = jwt.encode({"sub": "u1", "exp": expires}, TEST_SECRET, "HS256")
    assert verifier.verify(token).user_id == "u1"
    assert verifier.verify(token).user_id == "u1"  # kept
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    with pytest.raises(Unauthenticated) as error:
        verifier.verify(forged)  # a different string is never taken for the kept one
    assert error.value.code == "token_invalid"
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    with pytest.raises(Unauthenticated) as error:
        verifier.verify(token)
    assert error.value.code == "token_expired"
