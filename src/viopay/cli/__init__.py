"""The operator CLI ``viopay``: one Typer sub-app per domain, thin wrappers over services."""

from viopay.cli.main import app, main

__all__ = ["app", "main"]
