"""``viopay-tools``: the demo and the benchmark, beside (not inside) the server's CLI."""

from __future__ import annotations

import typer

from viopay_tools.bench_command import bench
from viopay_tools.demo import demo

app = typer.Typer(help="Viopay tools: the demo and the benchmark.", no_args_is_help=True)
app.command()(demo)
app.command()(bench)


def main() -> None:
    app()
