"""``viopay keys``: the server's own keys (the master key that wraps every key at rest)."""

from __future__ import annotations

import base64
import secrets
import sys
from pathlib import Path

import typer

from viopay.cli.common import fail
from viopay.crypto.wrapping import MASTER_KEY_LENGTH, load_or_create_master_key_file

app = typer.Typer(help="Make the server's master key.", no_args_is_help=True)


@app.command("new-master")
def new_master(
    file: Path | None = typer.Option(
        None,
        "--file",
        help="Write the key to this new file (mode 0600) instead of printing it; "
        "point VIOPAY_MASTER_KEY_FILE at it.",
        dir_okay=False,
    ),
) -> None:
    """Make a master key: base64 of 32 random bytes, for VIOPAY_MASTER_KEY.

    Every server process and CLI command of one database needs the same key, and a database
    refuses any other (PROTOCOL §6): keep it in your secret store, not in the repository."""
    if file is None:
        key = base64.b64encode(secrets.token_bytes(MASTER_KEY_LENGTH)).decode()
        sys.stdout.write(key + "\n")
        return
    path = file.expanduser().absolute()
    if path.exists():
        fail(f"{path} exists: a master key is never overwritten (choose another --file)")
    try:
        load_or_create_master_key_file(path)
    except OSError as exc:
        fail(f"--file {path}: {exc.strerror}")
    sys.stdout.write(f"{path}\n")
