"""``viopay-tools bench``: charge and activation throughput against the stack's own ceiling."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path

import orjson
import typer
from rich.console import Console


class BackendChoice(StrEnum):
    embedded = "embedded"
    postgres = "postgres"
    both = "both"


# Settings the run sets itself (the scratch backend, the key store, the access log, the URL) or
# has an option for: --server-env may not change them under the run's feet.
RUN_OWNED = {
    "data_dir",
    "database_url",
    "redis_url",
    "redis_prefix",
    "master_key",
    "master_key_file",
    "hsm_module",
    "hsm_token",
    "hsm_pin",
    "hsm_key_label",
    "log_level",
    "log_json",
    "public_url",
    "sandbox_latency_ms",
}


def _server_env(items: list[str]) -> dict[str, str]:
    """``VIOPAY_NAME=VALUE`` pairs for the servers: known settings only (a misspelt name would be
    ignored by the server, silently), none of those the run owns."""
    from viopay.settings import Settings

    extra: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        field = name.removeprefix("VIOPAY_").lower()
        if not sep or not name.startswith("VIOPAY_") or field not in Settings.model_fields:
            raise typer.BadParameter(
                f"--server-env takes VIOPAY_NAME=VALUE for a setting of the server, not {item!r}"
            )
        if field in RUN_OWNED:
            raise typer.BadParameter(f"--server-env cannot set {name}: the run sets it")
        extra[name] = value
    return extra


def bench(
    backend: BackendChoice = typer.Option(
        BackendChoice.both,
        "--backend",
        help="embedded, postgres (scratch database + Redis prefix) or both.",
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Short phases (2-3 minutes); last line: JSON summary."
    ),
    smoke: bool = typer.Option(
        False, "--smoke", help="Tiny phases and 2 terminals: checks the tool, measures nothing."
    ),
    devices: int | None = typer.Option(
        None, "--devices", min=1, max=2000, help="Terminals to activate (default 100; --quick 40)."
    ),
    connections: int = typer.Option(
        32, "--connections", min=1, max=1024, help="Keep-alive connections of the load generator."
    ),
    workers: str = typer.Option(
        "1,2", "--workers", help="Worker counts to run, e.g. 1,2 (embedded: 1 only)."
    ),
    profile: bool = typer.Option(
        False, "--profile", help="Also sample a worker with py-spy during a charge phase."
    ),
    pin: bool = typer.Option(
        True,
        "--pin/--no-pin",
        help="Pin the generator to the last CPU and a 1-worker server to CPU 0.",
    ),
    out: Path = typer.Option(
        Path("bench-results"), "--out", help="Where results (JSON, PNG, logs) go."
    ),
    keystore: str = typer.Option(
        "file",
        "--keystore",
        help="file (a master key) or hsm (the master key on a fresh SoftHSM2 token, PKCS#11).",
    ),
    sandbox_latency_ms: int | None = typer.Option(
        None,
        "--sandbox-latency-ms",
        min=0,
        max=10_000,
        help="Also run the charge peak on servers started with VIOPAY_SANDBOX_LATENCY_MS=N.",
    ),
    server_env: list[str] = typer.Option(
        [],
        "--server-env",
        metavar="VIOPAY_NAME=VALUE",
        help="A setting for every server the run starts, e.g. VIOPAY_LOOP_STALL_MS=20 (repeatable).",
    ),
) -> None:
    """Benchmark the server: GET /healthz ceiling, charge throughput and latency, activation."""
    from viopay_tools.bench import report
    from viopay_tools.bench.runner import Options, run
    from viopay_tools.bench.stack import StackError

    progress = Console(stderr=True)
    console = Console()
    if not console.is_terminal or console.width < 190:
        console = Console(width=190)
    if keystore not in ("file", "hsm"):
        raise typer.BadParameter("--keystore takes file or hsm")
    backends = ["embedded", "postgres"] if backend is BackendChoice.both else [backend.value]
    try:
        worker_counts = sorted({int(w) for w in workers.split(",") if w.strip()})
    except ValueError:
        raise typer.BadParameter("--workers takes numbers, e.g. 1,2") from None
    extra = _server_env(server_env)
    options = Options(
        backends=backends,
        mode="smoke" if smoke else "quick" if quick else "full",
        workers=worker_counts,
        devices=devices,
        connections=connections,
        profile=profile,
        pin=pin,
        out_dir=out,
        sandbox_latency_ms=sandbox_latency_ms,
        keystore=keystore,
        server_env=extra,
    )
    try:
        doc = run(options, lambda message: progress.print(f"[dim]·[/dim] {message}"))
    except StackError as exc:
        progress.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    report.print_tables(doc, console)
    if quick or smoke:
        console.file.flush()
        s = doc["summary"]
        line = {
            k: s.get(k)
            for k in (
                "charge_rps",
                "ceiling_rps",
                "ratio",
                "p99_ms_at_70pct",
                "activation_ms",
                "activation_cpu_ms",
                "activation_in_healthz",
                "cpu_ms_per_charge",
                "cpu_ms_per_healthz",
                "charge_cpu_in_healthz",
                "pg_transactions_per_charge",
                "redis_commands_per_charge",
                "cpu_ms_per_heartbeat",
                "heartbeat_rps",
                "errors",
            )
        }
        line |= {k: s.get(k) for k in ("duplicates", "scaling_2w", "backend", "workers")}
        if extra:
            line["server_env"] = extra  # a run with other settings says so
        if sandbox_latency_ms is not None:
            line |= {
                k: s.get(k)
                for k in (
                    "sandbox_latency_ms",
                    "charge_rps_with_latency",
                    "charge_rps_with_latency_ratio",
                )
            }
        sys.stdout.write(orjson.dumps(line).decode() + "\n")
        sys.stdout.flush()
