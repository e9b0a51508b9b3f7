"""Operator mistakes are refused in one line that names what to fix, exit code 2, before the
server says "serving on" (issue 11 #4, issue 17 #3; PROTOCOL §6 for the master key check)."""

from __future__ import annotations

import base64
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from support.helpers import (
    PG_ADMIN_URL,
    create_pg_database,
    drop_pg_database,
    free_port,
    require_services,
)


def run(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VIOPAY_")}
    return subprocess.run(
        [sys.executable, "-m", "viopay", *args],
        env=clean | {"COLUMNS": "60"} | env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def refused(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, nothing on stdout, one line on stderr holding every needle, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in done.stderr
    assert "serving on" not in done.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture(params=["embedded", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {"VIOPAY_DATA_DIR": str(tmp_path / "var")}
    if request.param == "postgres":
        require_services()
        name = f"viopay_test_op_{secrets.token_hex(4)}"
        create_pg_database(name)
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        yield env | {"VIOPAY_DATABASE_URL": f"{base}/{name}"}
        drop_pg_database(name)
    else:
        yield env


def test_another_master_key_is_refused_by_every_command(database: dict[str, str]) -> None:
    first, other = new_key(), new_key()
    made = run(database | {"VIOPAY_MASTER_KEY": first}, "migrate", "--json")
    assert made.returncode == 0, made.stderr
    wrong = database | {"VIOPAY_MASTER_KEY": other}
    serve = ("serve", "--port", str(free_port()))
    for args in (("migrate",), ("merchant", "create", "--name", "X"), serve):
        refused(run(wrong, *args), "VIOPAY_MASTER_KEY is not the master key this database")
    again = run(database | {"VIOPAY_MASTER_KEY": first}, "merchant", "create", "--name", "Y")
    assert again.returncode == 0, again.stderr


def test_a_malformed_master_key_is_one_line(tmp_path: Path) -> None:
    env = {"VIOPAY_DATA_DIR": str(tmp_path / "var"), "VIOPAY_MASTER_KEY": "not-a-key"}
    for args in (("migrate",), ("serve",)):
        refused(run(env, *args), "VIOPAY_MASTER_KEY: must be base64 of 32 bytes", "keys new-master")
    assert not (tmp_path / "var").exists()


def test_a_command_from_another_folder_makes_no_database(tmp_path: Path) -> None:
    line = refused(run({}, "merchant", "create", "--name", "X", cwd=tmp_path), "viopay migrate")
    assert f"no Viopay database at SQLite {tmp_path / 'var' / 'viopay.db'}" in line
    assert not (tmp_path / "var").exists()  # neither a database nor a master key was made
    made = run({}, "--verbose", "migrate", "--json", cwd=tmp_path)
    assert made.returncode == 0 and made.stdout.startswith('{"revision"'), made.stderr
    assert f"data folder {tmp_path / 'var'}; database SQLite {tmp_path / 'var'}" in made.stderr


def test_serve_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    env = {"VIOPAY_DATA_DIR": str(tmp_path / "var")}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        refused(run(env, "serve", "--port", port), f"port {port} on 127.0.0.1 is in use")
    processor = env | {"VIOPAY_PROCESSOR": "nosuch.mod:factory"}
    for args in (("serve", "--port", port), ("recover",)):
        refused(run(processor, *args), "VIOPAY_PROCESSOR=nosuch.mod:factory")
    refused(run(env, "serve", "--port", "99999"), "--port 99999: must be 1-65535")
    assert not (tmp_path / "var").exists()  # each was refused before anything was made


def test_setting_errors_are_whole_lines_without_library_prefixes(tmp_path: Path) -> None:
    env = {
        "VIOPAY_DATA_DIR": str(tmp_path / "var"),
        "VIOPAY_MIN_POS_VERSION": "2.0.0",
        "VIOPAY_LATEST_POS_VERSION": "1.0.0",
    }
    line = refused(run(env, "migrate"), "VIOPAY_LATEST_POS_VERSION must not be below")
    assert len(line) > 60 and "Value error" not in line  # not cut at COLUMNS=60
    bad_processor = {"VIOPAY_DATA_DIR": str(tmp_path / "var"), "VIOPAY_PROCESSOR": "no colon"}
    refused(run(bad_processor, "migrate"), "VIOPAY_PROCESSOR: must be 'sandbox' or")


def test_keys_new_master_makes_a_key_the_server_accepts(tmp_path: Path) -> None:
    printed = run({}, "keys", "new-master")
    assert printed.returncode == 0, printed.stderr
    assert len(base64.b64decode(printed.stdout.strip(), validate=True)) == 32
    path = tmp_path / "keys" / "master.key"
    written = run({}, "keys", "new-master", "--file", str(path))
    assert written.returncode == 0 and written.stdout.strip() == str(path)
    assert path.stat().st_mode & 0o777 == 0o600
    refused(run({}, "keys", "new-master", "--file", str(path)), "never overwritten")
    env = {"VIOPAY_DATA_DIR": str(tmp_path / "var"), "VIOPAY_MASTER_KEY_FILE": str(path)}
    migrated = run(env, "migrate")
    assert migrated.returncode == 0, migrated.stderr


def test_version() -> None:
    from viopay import __version__

    done = run({}, "--version")
    assert done.returncode == 0 and done.stdout == f"viopay {__version__}\n"


def _parameters(command: Any, path: list[str]) -> Iterator[tuple[str, Any]]:
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _parameters(sub, [*path, name])
    yield from ((" ".join(path), p) for p in command.params)


@pytest.mark.parametrize("module", ["viopay.cli", "viopay_tools.cli"])
def test_every_option_is_described_and_no_flag_says_bool(module: str) -> None:
    from typer.testing import CliRunner

    app = __import__(module, fromlist=["app"]).app
    command = typer.main.get_command(app)
    undescribed = [f"{where} {p.name}" for where, p in _parameters(command, [module]) if not p.help]
    assert not undescribed
    runner = CliRunner()
    for where, _ in _parameters(command, []):
        shown = runner.invoke(app, [*where.split(), "--help"], env={"COLUMNS": "120"})
        assert shown.exit_code == 0, shown.output
        assert "<bool>" not in shown.output, where


def test_the_env_example_is_a_valid_postgres_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    from viopay.settings import Settings

    root = Path(__file__).resolve().parents[2]
    lines = (root / ".env.example").read_text(encoding="utf-8").splitlines()
    values = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    assert all(name.startswith("VIOPAY_") for name in values)
    for name in [n for n in os.environ if n.startswith("VIOPAY_")]:
        monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VIOPAY_MASTER_KEY", new_key())  # the line the README appends
    settings = Settings()
    assert not settings.embedded and settings.redis_url
    assert ".env\n" in (root / ".gitignore").read_text(encoding="utf-8")
