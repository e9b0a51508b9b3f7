"""The master key as a file on the embedded default (SQLite): the check of PROTOCOL §6 and an
offline-sized rotation from one key file to another through the CLI."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from support.helpers import SEEN_SECRETS
from viopay_device.protocol.kcv import hmac_kcv


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VIOPAY_")}
    return subprocess.run(
        [sys.executable, "-m", "viopay", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def expect_json(env: dict[str, str], *args: str) -> Any:
    done = _run(env, *args, "--json")
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def test_another_master_key_is_refused_and_says_which_setting(tmp_path: Path) -> None:
    env = {"VIOPAY_DATA_DIR": str(tmp_path / "var")}
    expect_json(env, "migrate")
    made = expect_json(env, "device", "provision", "POS-0000000A")
    SEEN_SECRETS.add(made["identity_secret"])
    other = base64.b64encode(os.urandom(32)).decode()
    SEEN_SECRETS.add(other)
    refused = _run(env | {"VIOPAY_MASTER_KEY": other}, "device", "provision", "POS-0000000B")
    assert refused.returncode == 2
    message = " ".join(refused.stderr.split())
    assert "VIOPAY_MASTER_KEY is not the master key this database" in message
    assert "fix VIOPAY_MASTER_KEY" in message and other not in refused.stderr
    (active,) = expect_json(env, "keys", "status")["master_keys"]
    assert active["kcv"] in message and active["state"] == "active"
    # Nothing was written under the wrong key.
    assert expect_json(env, "keys", "status")["master_keys"][0]["blobs"] == active["blobs"]


def test_rotation_between_key_files_keeps_every_key(tmp_path: Path) -> None:
    env = {"VIOPAY_DATA_DIR": str(tmp_path / "var")}
    expect_json(env, "migrate")
    made = expect_json(env, "device", "provision", "POS-0000000C")
    SEEN_SECRETS.add(made["identity_secret"])
    client = expect_json(env, "client", "create", "--admin")
    SEEN_SECRETS.add(client["client_secret"])
    (old,) = expect_json(env, "keys", "status")["master_keys"]
    old_file = tmp_path / "var" / "master.key"
    assert old["kind"] == "file" and old["location"] == str(old_file.resolve())
    new_file = tmp_path / "keys" / "master-2.key"
    rotated = expect_json(
        env, "keys", "rotate-master", "--to-file", str(new_file), "--settle", "0",
        "--batch-size", "2",
    )  # fmt: skip
    assert rotated["destroyed"] == [old["key_id"]] and rotated["rewrapped"] == old["blobs"]
    assert not old_file.exists() and new_file.stat().st_mode & 0o077 == 0
    # The old configuration (the default key file, gone) is refused; the new one works.
    assert _run(env, "keys", "status", "--json").returncode == 2
    new_env = env | {"VIOPAY_MASTER_KEY_FILE": str(new_file)}
    states = {k["key_id"]: k for k in expect_json(new_env, "keys", "status")["master_keys"]}
    assert states[old["key_id"]]["state"] == "destroyed" and states[old["key_id"]]["blobs"] == 0
    assert states[rotated["key_id"]]["blobs"] == old["blobs"]
    # The identity secret survived (its KCV), and new keys are made under the new master key.
    keys = expect_json(new_env, "keys", "identity-keys", "POS-0000000C")["data"]
    assert keys[0]["kcv"] == hmac_kcv(bytes.fromhex(made["identity_secret"]))
    added = expect_json(new_env, "device", "add-key", "POS-0000000C")
    SEEN_SECRETS.add(added["identity_secret"])
    states = {k["key_id"]: k for k in expect_json(new_env, "keys", "status")["master_keys"]}
    assert states[rotated["key_id"]]["blobs"] == old["blobs"] + 1
