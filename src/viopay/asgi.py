"""The ASGI entry point uvicorn loads in each worker process: ``viopay.asgi:create``."""

from __future__ import annotations

from fastapi import FastAPI

from viopay.app import create_app
from viopay.observability import configure_logging
from viopay.settings import load_settings


def create() -> FastAPI:
    settings = load_settings()
    configure_logging(level=settings.log_level, json=settings.log_json)
    return create_app(settings)
