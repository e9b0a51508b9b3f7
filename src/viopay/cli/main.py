from __future__ import annotations

import typer
import uvicorn
from typer.exceptions import TyperException

from viopay.cli.common import (
    JsonOption,
    emit,
    err,
    json_mode,
    load_settings_or_exit,
    problem,
    write_problem,
)
from viopay.cli.devices import app as device_app
from viopay.cli.merchants import client_app, merchant_app
from viopay.cli.parameters import app as parameters_app
from viopay.cli.users import app as user_app

app = typer.Typer(help="Viopay POS platform: server and operator commands.", no_args_is_help=True)
app.add_typer(device_app, name="device")
app.add_typer(merchant_app, name="merchant")
app.add_typer(client_app, name="client")
app.add_typer(parameters_app, name="terminal-parameters")
app.add_typer(user_app, name="user")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, help="Port to bind."),
    workers: int = typer.Option(
        1, min=1, max=64, help="Worker processes (PostgreSQL + Redis for more than 1)."
    ),
) -> None:
    """Run the API: migrates the schema, then serves."""
    from viopay.migrate import upgrade

    settings = load_settings_or_exit()
    if workers > 1 and not settings.redis_url:
        err.print(
            "[red]error:[/red] --workers above 1 needs VIOPAY_REDIS_URL: the in-process cache "
            "(nonces, tokens, rate limits) is not shared between processes"
        )
        raise typer.Exit(2)
    revision = upgrade(settings)
    err.print(
        f"schema at {revision}; serving on http://{host}:{port} "
        f"({'embedded SQLite' if settings.embedded else 'PostgreSQL'}, "
        f"{'Redis' if settings.redis_url else 'in-process cache'})"
    )
    uvicorn.run(
        "viopay.asgi:create",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level,
        access_log=False,
        proxy_headers=False,
        server_header=False,
    )


@app.command()
def migrate(as_json: bool = JsonOption) -> None:
    """Create or upgrade the database schema."""
    from viopay.migrate import upgrade

    emit({"revision": upgrade(load_settings_or_exit())}, as_json=as_json, title="Schema")


@app.command()
def recover(as_json: bool = JsonOption) -> None:
    """Finish every payment intent whose request died (PROTOCOL §4.7), then exit.

    Asks the processor what happened under each intent older than
    VIOPAY_RECOVERY_DELAY_SECONDS and stores it; safe beside running servers (leases)."""
    import asyncio
    import sys

    from viopay.observability import configure_logging
    from viopay.payments.processors import build_processor
    from viopay.payments.recovery import owner_id, recover_due
    from viopay.runtime import build_runtime

    settings = load_settings_or_exit()
    configure_logging(level=settings.log_level, json=settings.log_json, stream=sys.stderr)

    async def run() -> dict[str, object]:
        runtime = build_runtime(settings)
        try:
            processor = build_processor(settings, runtime.sessions)
            report = await recover_due(runtime, processor, owner=owner_id())
        finally:
            await runtime.close()
        return {"recovered": report.total, **report.counts, "deferred": report.deferred}

    emit(asyncio.run(run()), as_json=as_json, title="Recovery")


def main() -> None:
    """``viopay``; with ``--json``, a usage error is a JSON problem on stdout too (exit 2)."""
    if not json_mode():
        app()
        return
    try:
        result = app(standalone_mode=False)
    except TyperException as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        write_problem(problem("invalid_request", 400, "Invalid request", message))
        raise SystemExit(int(getattr(exc, "exit_code", 2))) from None
    except typer.Abort:
        write_problem(problem("aborted", 400, "Aborted", "the command was aborted"))
        raise SystemExit(1) from None
    raise SystemExit(result if isinstance(result, int) else 0)
