"""The operator CLI: one JSON document with --json, clear errors, the same configuration as the server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "viopay", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A data folder with a database (commands other than serve and migrate never make one)."""
    env = {"VIOPAY_DATA_DIR": str(tmp_path / "var")}
    assert run(env, "migrate").returncode == 0
    return env


def test_migrate_prints_revision(env: dict[str, str]) -> None:
    done = run(env, "migrate", "--json")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"\d{8}_\d{4}", orjson.loads(done.stdout)["revision"])


def test_provision_shows_secret_once_as_lower_hex(env: dict[str, str], tmp_path: Path) -> None:
    done = run(
        env, "device", "provision", "POS-8F3A2C91", "--key-id", "device-id-key-2025-01", "--json"
    )
    assert done.returncode == 0, done.stderr
    doc = orjson.loads(done.stdout)
    assert doc["device_id"] == "POS-8F3A2C91" and doc["key_id"] == "device-id-key-2025-01"
    assert re.fullmatch(r"[0-9a-f]{64}", doc["identity_secret"])
    # Stored wrapped: the database file never holds the secret in the clear (hex or raw).
    raw = (tmp_path / "var" / "viopay.db").read_bytes()
    for name in ("viopay.db-wal",):
        if (tmp_path / "var" / name).exists():
            raw += (tmp_path / "var" / name).read_bytes()
    assert doc["identity_secret"].encode() not in raw
    assert bytes.fromhex(doc["identity_secret"]) not in raw
    master = tmp_path / "var" / "master.key"
    assert master.stat().st_mode & 0o777 == 0o600
    again = run(env, "device", "provision", "POS-8F3A2C91", "--json")
    assert again.returncode == 1 and "already provisioned" in again.stderr
    assert orjson.loads(again.stdout)["code"] == "invalid_state"  # --json: one problem on stdout


def test_add_and_revoke_key(env: dict[str, str]) -> None:
    assert run(env, "device", "provision", "POS-00000001", "--json").returncode == 0
    added = orjson.loads(
        run(env, "device", "add-key", "POS-00000001", "--key-id", "k2", "--json").stdout
    )
    assert added["key_id"] == "k2" and len(added["identity_secret"]) == 64
    revoked = orjson.loads(run(env, "device", "revoke-key", "POS-00000001", "k2", "--json").stdout)
    assert revoked["device_id"] == "POS-00000001" and revoked["revoked_at"].endswith("Z")


def test_bad_device_id_is_refused(env: dict[str, str]) -> None:
    done = run(env, "device", "provision", "POS-abc", "--json")
    assert done.returncode == 2 and "upper-case hex" in done.stderr


def test_merchant_and_clients(env: dict[str, str]) -> None:
    merchant = orjson.loads(
        run(
            env,
            "merchant",
            "create",
            "--name",
            "Corner Coffee",
            "--currency",
            "EUR",
            "--country",
            "DE",
            "--timezone",
            "Europe/Berlin",
            "--json",
        ).stdout
    )
    assert merchant["merchant_id"].startswith("mer_")
    assert (merchant["currency"], merchant["country"], merchant["timezone"]) == (
        "EUR",
        "DE",
        "Europe/Berlin",
    )
    owner = orjson.loads(
        run(
            env,
            "client",
            "create",
            "--merchant",
            merchant["merchant_id"],
            "--role",
            "owner",
            "--json",
        ).stdout
    )
    assert owner["role"] == "owner" and owner["admin"] is False and owner["client_secret"]
    admin = orjson.loads(run(env, "client", "create", "--admin", "--json").stdout)
    assert admin["admin"] is True and admin["merchant_id"] is None
    both = run(
        env, "client", "create", "--admin", "--merchant", merchant["merchant_id"], "--role", "owner"
    )
    assert both.returncode == 2
    bad = run(env, "merchant", "create", "--name", "X", "--currency", "euro")
    assert bad.returncode == 2 and "currency" in bad.stderr


def test_human_output_warns_the_secret_is_shown_once(env: dict[str, str]) -> None:
    done = run(env, "device", "provision", "POS-00000002")
    assert done.returncode == 0 and "shown once" in done.stderr


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("VIOPAY_MIN_POS_VERSION", "1.2", "SemVer"),
        ("VIOPAY_DATABASE_URL", "mysql://x", "postgresql://"),
        ("VIOPAY_REDIS_URL", "http://x", "redis://"),
        ("VIOPAY_ROTATION_GRACE_SECONDS", "-1", "VIOPAY_ROTATION_GRACE_SECONDS"),
    ],
)
def test_bad_setting_gets_a_clear_message(
    env: dict[str, str], name: str, value: str, message: str
) -> None:
    done = run(env | {name: value}, "migrate", "--json")
    assert done.returncode == 2
    assert message in done.stderr
    problem = orjson.loads(done.stdout)  # --json: the error is one JSON problem on stdout
    assert problem["code"] == "invalid_configuration" and message in problem["detail"]


def test_postgres_without_master_key_is_refused(env: dict[str, str]) -> None:
    done = run(env | {"VIOPAY_DATABASE_URL": "postgresql://postgres@127.0.0.1/none"}, "migrate")
    assert done.returncode == 2 and "VIOPAY_MASTER_KEY" in done.stderr


def test_workers_without_redis_is_refused(env: dict[str, str]) -> None:
    done = run(env, "serve", "--workers", "2")
    assert done.returncode == 2 and "VIOPAY_REDIS_URL" in done.stderr
