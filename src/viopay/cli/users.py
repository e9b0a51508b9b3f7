"""``viopay user``: portal users of the embedded default — create, list, show, reset a password,
disable and enable."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from viopay.audit import Actor
from viopay.auth.users import (
    MAX_PASSWORD,
    MIN_PASSWORD,
    UserView,
    create_user,
    list_users,
    reset_password,
    set_user_disabled,
    show_user,
)
from viopay.cli.common import JsonOption, emit, emit_list, fail_with, problem, run_in_transaction
from viopay.ids import rfc3339, utcnow
from viopay.merchants.models import Role

app = typer.Typer(
    help="Portal users (email and password) on the embedded default.", no_args_is_help=True
)


def _checked_password(from_stdin: bool) -> str:
    password = _read_password(from_stdin)
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        detail = f"the password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters"
        fail_with(problem("invalid_request", 400, "Invalid request", detail), exit_code=2)
    return password


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
    password = _checked_password(password_stdin)
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


def _doc(user: UserView) -> dict[str, object]:
    return {
        "user_id": user.user_id,
        "email": user.email,
        "disabled": user.disabled,
        "created_at": rfc3339(user.created_at),
        "memberships": [{"merchant_id": m, "role": r} for m, r in user.memberships],
    }


@app.command("list")
def list_(
    merchant: Annotated[
        str | None, typer.Option("--merchant", help="Only this merchant's members.")
    ] = None,
    as_json: bool = JsonOption,
) -> None:
    """Every user (of one merchant with --merchant), by email."""
    users = run_in_transaction(lambda db, rt: list_users(db, merchant_id=merchant))
    rows = [_doc(u) for u in users]
    for row, user in zip(rows, users, strict=True):
        row["merchants"] = ", ".join(f"{m} ({r})" for m, r in user.memberships)
    if as_json:
        for row in rows:
            row.pop("merchants")
    emit_list(
        rows,
        as_json=as_json,
        title="Users",
        columns=["user_id", "email", "merchants", "disabled", "created_at"],
    )


@app.command("show")
def show(
    user: Annotated[str, typer.Argument(help="A user id (usr_…) or an email.")],
    as_json: bool = JsonOption,
) -> None:
    """One user and the merchants they belong to."""
    found = run_in_transaction(lambda db, rt: show_user(db, user))
    emit(_doc(found), as_json=as_json, title="User")


@app.command("reset-password")
def reset(
    user: Annotated[str, typer.Argument(help="A user id (usr_…) or an email.")],
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin", help="Read the new password from the first line of standard input."
        ),
    ] = False,
    as_json: bool = JsonOption,
) -> None:
    """Give a user a new password (asked twice, or read from stdin); the old one stops working."""
    password = _checked_password(password_stdin)
    done = run_in_transaction(
        lambda db, rt: reset_password(
            db, who=user, password=password, actor=Actor.operator(), now=utcnow()
        )
    )
    emit(
        {"user_id": done.user_id, "email": done.email, "password_reset": True},
        as_json=as_json,
        title="Password reset",
    )


def _set_disabled(user: str, disabled: bool, as_json: bool) -> None:
    done = run_in_transaction(
        lambda db, rt: set_user_disabled(
            db, who=user, disabled=disabled, actor=Actor.operator(), now=utcnow()
        )
    )
    emit(
        {"user_id": done.user_id, "email": done.email, "disabled": done.disabled_at is not None},
        as_json=as_json,
        title="User disabled" if disabled else "User enabled",
    )


@app.command("disable")
def disable(
    user: Annotated[str, typer.Argument(help="A user id (usr_…) or an email.")],
    as_json: bool = JsonOption,
) -> None:
    """Stop a user signing in; their portal session ends at its next page."""
    _set_disabled(user, True, as_json)


@app.command("enable")
def enable(
    user: Annotated[str, typer.Argument(help="A user id (usr_…) or an email.")],
    as_json: bool = JsonOption,
) -> None:
    """Let a disabled user sign in again."""
    _set_disabled(user, False, as_json)
