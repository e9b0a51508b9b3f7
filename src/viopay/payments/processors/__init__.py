"""Payment processors: the :class:`Processor` interface, the sandbox, and the choice between
them by setting (``VIOPAY_PROCESSOR``: ``sandbox``, or ``package.module:factory`` naming a
callable that takes the Settings and returns a Processor)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from viopay.db import NativePool
from viopay.payments.processors.base import (
    Authorization,
    AuthorizationRequest,
    ChargeRef,
    EncipheredPin,
    Processor,
    ProcessorFailure,
    ProcessorRecord,
    ProcessorTimedOut,
)
from viopay.payments.processors.sandbox import SandboxProcessor
from viopay.settings import Settings

__all__ = [
    "Authorization",
    "AuthorizationRequest",
    "ChargeRef",
    "EncipheredPin",
    "Processor",
    "ProcessorFailure",
    "ProcessorRecord",
    "ProcessorTimedOut",
    "SandboxProcessor",
    "build_processor",
    "load_factory",
]


def build_processor(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession] | None = None,
    native: NativePool | None = None,
) -> Processor:
    """The sandbox keeps its ledger through ``sessions`` (and, on PostgreSQL, ``native``); a
    connector's factory gets the settings only."""
    name = settings.processor
    if name == "sandbox":
        return SandboxProcessor(sessions, latency_ms=settings.sandbox_latency_ms, native=native)
    processor = load_factory(name)(settings)
    if not isinstance(processor, Processor):
        raise ValueError(f"{name} did not return a Processor")
    return processor


def load_factory(name: str) -> Callable[[Settings], Processor]:
    """Import the connector factory ``package.module:factory`` (ImportError, AttributeError or
    ValueError if it cannot be loaded); ``serve`` calls it before it listens."""
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ValueError("VIOPAY_PROCESSOR must be 'sandbox' or 'package.module:factory'")
    factory = getattr(importlib.import_module(module_name), attribute)
    if not callable(factory):
        raise ValueError(f"{name} is not callable")
    return cast(Callable[[Settings], Processor], factory)


def app_processor(
    state: Any, settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> Processor:
    """The application's one processor (``app.state.processor``), made on first use; the
    charge endpoints, the merchant API and the portal share it."""
    processor: Processor | None = getattr(state, "processor", None)
    if processor is None:
        processor = build_processor(settings, sessions)
        state.processor = processor
    return processor
