"""JSON logs (structlog) and Prometheus metrics.

Log lines carry only what is safe: methods, paths, statuses, ids. Never headers or bodies:
that is where keys, secrets, tokens, PANs and PIN blocks travel.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure_logging(
    *, level: str = "info", json: bool = True, stream: TextIO | None = None
) -> None:
    """JSON (or console) logs on ``stream``: stdout for the server, stderr for CLI commands
    (whose ``--json`` output owns stdout)."""
    stream = stream or sys.stdout
    numeric = getattr(logging, level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    # The standard library's records (uvicorn's own lines, libraries' warnings) take the same
    # shape: one JSON object per line with "event", "level", "logger" and "timestamp".
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                stamp,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _drop_color_message,
                renderer,
            ],
        )
    )
    logging.basicConfig(level=numeric, handlers=[handler], force=True)
    for name in ("uvicorn", "uvicorn.error"):
        # uvicorn's default config gives these their own plain-text handlers: use the root's.
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).disabled = True


def _drop_color_message(
    _: object, __: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """uvicorn adds an ANSI-coloured copy of its message as ``color_message``."""
    event.pop("color_message", None)
    return event
