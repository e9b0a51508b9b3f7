"""`viopay user create`: a portal user of the embedded default, member of one merchant."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest


def run(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "viopay", *args],
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def merchant(tmp_path: Path) -> tuple[dict[str, str], str]:
    env = {"VIOPAY_DATA_DIR": str(tmp_path / "var")}
    assert run(env, "migrate").returncode == 0
    done = run(env, "merchant", "create", "--name", "Corner Coffee", "--json")
    assert done.returncode == 0, done.stderr
    return env, orjson.loads(done.stdout)["merchant_id"]


def test_create_prints_one_document_and_keeps_only_a_hash(
    merchant: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    env, merchant_id = merchant
    password = "correct horse battery staple"
    done = run(
        env,
        "user",
        "create",
        "--merchant",
        merchant_id,
        "--role",
        "admin",
        "--email",
        "Ann@Example.com",
        "--password-stdin",
        "--json",
        stdin=password + "\n",
    )
    assert done.returncode == 0, done.stderr
    doc = orjson.loads(done.stdout)
    assert set(doc) == {"user_id", "email", "merchant_id", "role"}
    assert re.fullmatch(r"usr_[0-9a-z]{20}", doc["user_id"])
    assert doc | {"user_id": None} == {
        "user_id": None,
        "email": "Ann@Example.com",
        "merchant_id": merchant_id,
        "role": "admin",
    }
    database = (tmp_path / "var" / "viopay.db").read_bytes()
    wal = tmp_path / "var" / "viopay.db-wal"
    database += wal.read_bytes() if wal.exists() else b""
    assert password.encode() not in database and b"$argon2id$" in database


def test_emails_are_unique_whatever_their_case(merchant: tuple[dict[str, str], str]) -> None:
    env, merchant_id = merchant
    args = (
        "user",
        "create",
        "--merchant",
        merchant_id,
        "--role",
        "staff",
        "--password-stdin",
        "--json",
    )
    assert (
        run(env, *args, "--email", "bo@example.com", stdin="a long enough password").returncode == 0
    )
    again = run(env, *args, "--email", "BO@Example.COM", stdin="a long enough password")
    assert again.returncode == 1 and "already exists" in again.stderr
    assert orjson.loads(again.stdout)["code"] == "invalid_state"  # --json: a problem on stdout


def test_bad_input_is_refused(merchant: tuple[dict[str, str], str]) -> None:
    env, merchant_id = merchant
    args = ("user", "create", "--merchant", merchant_id, "--role", "owner", "--password-stdin")
    short = run(env, *args, "--email", "cy@example.com", stdin="short")
    assert short.returncode == 2 and "12 to 1024 characters" in short.stderr
    email = run(env, *args, "--email", "not-an-email", stdin="a long enough password")
    assert email.returncode == 1 and "not an email address" in email.stderr
    unknown = run(
        env,
        "user",
        "create",
        "--merchant",
        "mer_nope",
        "--role",
        "owner",
        "--email",
        "dee@example.com",
        "--password-stdin",
        stdin="a long enough password",
    )
    assert unknown.returncode == 1 and "no such merchant" in unknown.stderr
    role = run(
        env,
        *args[:5],
        "root",
        "--email",
        "eve@example.com",
        "--password-stdin",
        stdin="a long enough password",
    )
    assert role.returncode == 2


def test_the_password_is_prompted_for_twice_without_password_stdin(
    merchant: tuple[dict[str, str], str],
) -> None:
    env, merchant_id = merchant
    done = run(
        env,
        "user",
        "create",
        "--merchant",
        merchant_id,
        "--role",
        "owner",
        "--email",
        "fay@example.com",
        "--json",
        stdin="a long enough password\na long enough password\n",
    )
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["email"] == "fay@example.com"
    mismatch = run(
        env,
        "user",
        "create",
        "--merchant",
        merchant_id,
        "--role",
        "owner",
        "--email",
        "gus@example.com",
        "--json",
        stdin="a long enough password\nanother password!!\n",
    )
    # --json: the failure is one problem+json document on stdout (issue 13), nothing else
    assert mismatch.returncode != 0
    assert orjson.loads(mismatch.stdout)["code"] == "aborted"
