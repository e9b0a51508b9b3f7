"""The CLI an operator expects: list and show for merchants, devices, users and clients; a user's
password reset and disable; a client's revoke; ``--json`` errors as one JSON problem on stdout
with a non-zero exit; amounts as money."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from viopay.errors import Unauthorized

PASSWORD = "a-long-enough-password"


def run(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "viopay", *args],
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def doc(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr + done.stdout
    return orjson.loads(done.stdout)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A data folder with a database (commands other than serve and migrate never make one)."""
    env = {"VIOPAY_DATA_DIR": str(tmp_path / "var")}
    assert run(env, "migrate").returncode == 0
    return env


@pytest.fixture
def runtime(env: dict[str, str]) -> Iterator[Any]:
    """The CLI's database, in process (to sign in as the portal and the API would)."""
    from viopay.runtime import build_runtime
    from viopay.settings import Settings

    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    yield lambda: build_runtime(Settings())
    mp.undo()


def test_list_and_show_everything(env: dict[str, str]) -> None:
    shop = doc(
        run(env, "merchant", "create", "--name", "Corner Shop", "--currency", "JPY", "--json")
    )
    other = doc(run(env, "merchant", "create", "--name", "Other", "--json"))
    mer = shop["merchant_id"]
    user = doc(
        run(
            env,
            "user",
            "create",
            "--merchant",
            mer,
            "--role",
            "owner",
            "--email",
            "Ann@Corner.example",
            "--password-stdin",
            "--json",
            stdin=PASSWORD + "\n",
        )
    )
    client = doc(run(env, "client", "create", "--merchant", mer, "--role", "staff", "--json"))
    doc(run(env, "device", "provision", "POS-0000AAAA", "--json"))

    merchants = doc(run(env, "merchant", "list", "--json"))["data"]
    assert [m["merchant_id"] for m in merchants] == [mer, other["merchant_id"]]
    shown = doc(run(env, "merchant", "show", mer, "--json"))
    assert shown["name"] == "Corner Shop" and shown["currency"] == "JPY"
    assert {m["subject"] for m in shown["members"]} == {user["user_id"], client["client_id"]}
    assert shown["charges"] == 0 and shown["devices"] == 0

    users = doc(run(env, "user", "list", "--merchant", mer, "--json"))["data"]
    assert [u["email"] for u in users] == ["Ann@Corner.example"]
    assert users[0]["memberships"] == [{"merchant_id": mer, "role": "owner"}]
    assert doc(run(env, "user", "list", "--merchant", other["merchant_id"], "--json"))["data"] == []
    by_email = doc(run(env, "user", "show", "ann@corner.example", "--json"))
    assert by_email["user_id"] == user["user_id"] and by_email["disabled"] is False
    assert "password" not in orjson.dumps(by_email).decode()

    clients = doc(run(env, "client", "list", "--json"))["data"]
    assert [c["client_id"] for c in clients] == [client["client_id"]]
    assert (
        "client_secret" not in clients[0]
        and client["client_secret"] not in run(env, "client", "list").stdout
    )
    assert doc(run(env, "client", "show", client["client_id"], "--json"))["revoked"] is False

    devices = doc(run(env, "device", "list", "--json"))["data"]
    assert [(d["device_id"], d["status"]) for d in devices] == [("POS-0000AAAA", "inactive")]
    assert doc(run(env, "device", "show", "POS-0000AAAA", "--json"))["merchant_id"] is None
    assert doc(run(env, "device", "list", "--merchant", mer, "--json"))["data"] == []

    table = run(env, "merchant", "show", mer)  # people read a table
    assert table.returncode == 0 and "Corner Shop" in table.stdout and "¥" not in table.stderr


async def test_password_reset_disable_and_revoke(env: dict[str, str], runtime: Any) -> None:
    from viopay.auth.clients import authenticate_client
    from viopay.auth.users import authenticate_user

    mer = doc(run(env, "merchant", "create", "--name", "Shop", "--json"))["merchant_id"]
    run(
        env,
        "user",
        "create",
        "--merchant",
        mer,
        "--role",
        "admin",
        "--email",
        "bo@shop.example",
        "--password-stdin",
        "--json",
        stdin=PASSWORD + "\n",
    )
    client = doc(run(env, "client", "create", "--merchant", mer, "--role", "owner", "--json"))

    reset = doc(
        run(
            env,
            "user",
            "reset-password",
            "bo@shop.example",
            "--password-stdin",
            "--json",
            stdin="the-new-password-1\n",
        )
    )
    assert reset["password_reset"] is True
    rt = runtime()
    try:
        async with rt.sessions() as db:
            await authenticate_user(db, email="bo@shop.example", password="the-new-password-1")
            with pytest.raises(Unauthorized):
                await authenticate_user(db, email="bo@shop.example", password=PASSWORD)
        assert doc(run(env, "user", "disable", "bo@shop.example", "--json"))["disabled"] is True
        async with rt.sessions() as db:
            with pytest.raises(Unauthorized):  # the right password, and still refused
                await authenticate_user(db, email="bo@shop.example", password="the-new-password-1")
        assert doc(run(env, "user", "enable", "bo@shop.example", "--json"))["disabled"] is False
        async with rt.sessions() as db:
            await authenticate_user(db, email="bo@shop.example", password="the-new-password-1")

        async with rt.sessions() as db:
            await authenticate_client(
                db,
                wrapper=rt.wrapper,
                client_id=client["client_id"],
                client_secret=client["client_secret"],
            )
        revoked = doc(run(env, "client", "revoke", client["client_id"], "--json"))
        assert revoked["revoked"] is True
        assert doc(run(env, "client", "revoke", client["client_id"], "--json"))["revoked"] is True
        async with rt.sessions() as db:
            with pytest.raises(Unauthorized):
                await authenticate_client(
                    db,
                    wrapper=rt.wrapper,
                    client_id=client["client_id"],
                    client_secret=client["client_secret"],
                )
    finally:
        await rt.close()


@pytest.mark.parametrize(
    ("args", "stdin", "status", "code", "exit_code"),
    [
        (("merchant", "show", "mer_nope"), None, 404, "not_found", 1),
        (("user", "show", "nobody@example.com"), None, 404, "not_found", 1),
        (("user", "disable", "usr_nope"), None, 404, "not_found", 1),
        (("client", "revoke", "cli_nope"), None, 404, "not_found", 1),
        (
            ("device", "show", "POS-7E57F406"),
            None,
            404,
            "not_found",
            1,
        ),  # schema fuzzing may make POS-00000000
        (("device", "show", "not-a-device"), None, 400, "invalid_request", 2),
        (
            ("user", "reset-password", "x@example.com", "--password-stdin"),
            "short\n",
            400,
            "invalid_request",
            2,
        ),
        (
            ("merchant", "create", "--name", "X", "--currency", "usd"),
            None,
            400,
            "invalid_request",
            2,
        ),
        (("no-such-command",), None, 400, "invalid_request", 2),
    ],
)
def test_json_errors_are_one_problem_on_stdout(
    env: dict[str, str],
    args: tuple[str, ...],
    stdin: str | None,
    status: int,
    code: str,
    exit_code: int,
) -> None:
    done = run(env, *args, "--json", stdin=stdin)
    assert done.returncode == exit_code, done.stdout + done.stderr
    problem = orjson.loads(done.stdout)  # exactly one JSON document
    assert (problem["status"], problem["code"]) == (status, code)
    assert problem["type"] == f"urn:viopay:error:{code}" and problem["detail"]
    assert "Traceback" not in done.stderr


def test_without_json_a_failure_is_a_line_on_stderr(env: dict[str, str]) -> None:
    plain = run(env, "merchant", "show", "mer_nope")
    assert plain.returncode == 1 and plain.stdout == ""
    assert "no such merchant (not_found)" in plain.stderr
