from __future__ import annotations

import errno
import socket

import typer
import uvicorn
from typer.exceptions import TyperException

from viopay import __version__
from viopay.cli.common import (
    VERBOSE,
    JsonOption,
    emit,
    err,
    fail,
    json_mode,
    load_settings_or_exit,
    problem,
    write_problem,
)
from viopay.cli.devices import app as device_app
from viopay.cli.keys import app as keys_app
from viopay.cli.merchants import client_app, merchant_app
from viopay.cli.parameters import app as parameters_app
from viopay.cli.users import app as user_app
from viopay.webhooks import outbox

app = typer.Typer(
    help="Viopay POS platform: server and operator commands.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(device_app, name="device")
app.add_typer(keys_app, name="keys")
app.add_typer(merchant_app, name="merchant")
app.add_typer(client_app, name="client")
app.add_typer(parameters_app, name="terminal-parameters")
app.add_typer(user_app, name="user")
app.add_typer(keys_app, name="keys")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"viopay {__version__}")
        raise typer.Exit


@app.callback()
def root(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Say which data folder, database and master key are used."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Viopay POS platform: server and operator commands."""
    VERBOSE["on"] = verbose


def _refuse_busy_port(host: str, port: int) -> None:
    """Bind the address the way uvicorn will, before anything says "serving on"."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        fail(f"--host {host}: not an address of this machine")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                fail(
                    f"port {port} on {host} is in use (address already in use): stop the "
                    "other server or choose another --port"
                )
            fail(f"cannot listen on {host}:{port} ({exc.strerror}): choose another --host/--port")


def _refuse_unloadable_processor(name: str) -> None:
    from viopay.payments.processors import load_factory

    try:
        load_factory(name)
    except (ImportError, AttributeError, ValueError) as exc:
        fail(f"VIOPAY_PROCESSOR={name} cannot be loaded ({type(exc).__name__}: {exc})")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, help="Port to bind (1-65535)."),
    workers: int = typer.Option(
        1, min=1, max=64, help="Worker processes (PostgreSQL + Redis for more than 1)."
    ),
) -> None:
    """Run the API: migrates the schema, then serves."""
    from viopay.cli.common import describe
    from viopay.metrics import prepare_multiprocess
    from viopay.observability import configure_logging
    from viopay.runtime import OperatorError, prepare_database

    if not 1 <= port <= 65535:
        fail(f"--port {port}: must be 1-65535 (0 and larger numbers are refused, not replaced)")
    settings = load_settings_or_exit()
    if workers > 1 and not settings.redis_url:
        fail(
            "--workers above 1 needs VIOPAY_REDIS_URL: the in-process cache "
            "(nonces, tokens, rate limits) is not shared between processes"
        )
    _refuse_busy_port(host, port)
    if settings.processor != "sandbox":
        _refuse_unloadable_processor(settings.processor)
    try:
        revision = prepare_database(settings, create=True)
    except OperatorError as exc:
        fail(str(exc))
    if not VERBOSE["on"]:
        describe(settings)
    if workers > 1:
        prepare_multiprocess(settings.data_dir / "metrics")
    configure_logging(level=settings.log_level, json=settings.log_json)
    err.print(
        f"schema at {revision}; serving on http://{host}:{port} "
        f"({'embedded SQLite' if settings.embedded else 'PostgreSQL'}, "
        f"{'Redis' if settings.redis_url else 'in-process cache'})",
        soft_wrap=True,
    )
    uvicorn.run(
        "viopay.asgi:create",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level,
        access_log=False,
        log_config=None,  # uvicorn's lines go through configure_logging: JSON like ours
        proxy_headers=False,
        server_header=False,
    )


@app.command()
def migrate(as_json: bool = JsonOption) -> None:
    """Create or upgrade the database schema (and record its master key's check value)."""
    from viopay.runtime import OperatorError, prepare_database

    try:
        revision = prepare_database(load_settings_or_exit(), create=True)
    except OperatorError as exc:
        fail(str(exc))
    emit({"revision": revision}, as_json=as_json, title="Schema")


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
    from viopay.runtime import OperatorError, build_runtime, prepare_database

    settings = load_settings_or_exit()
    if settings.processor != "sandbox":
        _refuse_unloadable_processor(settings.processor)
    configure_logging(level=settings.log_level, json=settings.log_json, stream=sys.stderr)
    try:
        prepare_database(settings, create=False)
    except OperatorError as exc:
        fail(str(exc))

    async def run() -> dict[str, object]:
        runtime = build_runtime(settings)
        try:
            processor = build_processor(settings, runtime.sessions, runtime.native)
            report = await recover_due(runtime, processor, owner=owner_id())
        finally:
            await runtime.close()
        return {"recovered": report.total, **report.counts, "deferred": report.deferred}

    emit(asyncio.run(run()), as_json=as_json, title="Recovery")


def main() -> None:
    """``viopay``; with ``--json``, a usage error is a JSON problem on stdout too (exit 2)."""
    outbox.install()  # events made by operator commands reach the merchants' webhooks too
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
