"""``viopay user create``: a portal user of the embedded default, member of one merchant."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from viopay.audit import Actor
from viopay.auth.users import MAX_PASSWORD, MIN_PASSWORD, create_user
from viopay.cli.common import emit, run_in_transaction
from viopay.ids import utcnow
from viopay.merchants.models import Role

app = typer.Typer(
    help="Create portal users (email and password) on the embedded default.", no_args_is_help=True
)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        # The first line, without its line ending: `printf %s "$PW" | viopay user create ...`.
        return sys.stdin.readline().rstrip("\r\n")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    return password


@app.command("create")
def create(
    merchant: Annotated[str, typer.Option("--merchant", help="Merchant the user is a member of.")],
    role: Annotated[Role, typer.Option("--role", help="owner, admin or staff.")],
    email: Annotated[str, typer.Option("--email", help="Sign-in email, unique whatever its case.")],
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin", help="Read the password from the first line of standard input."
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print exactly one JSON document on stdout.")
    ] = False,
) -> None:
    """Create a user who signs in to the portal with an email and a password."""
    password = _read_password(password_stdin)
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise typer.BadParameter(
            f"the password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters"
        )
    user = run_in_transaction(
        lambda db, rt: create_user(
            db,
            email=email,
            password=password,
            merchant_id=merchant,
            role=role,
            actor=Actor.operator(),
            now=utcnow(),
        )
    )
    emit(
        {
            "user_id": user.user_id,
            "email": user.email,
            "merchant_id": user.merchant_id,
            "role": user.role.value,
        },
        as_json=as_json,
        title="User created",
    )
