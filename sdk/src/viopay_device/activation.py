"""The whole activation of a device in one call (activation-flow.txt steps 1-8)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from viopay_device.client import DeviceClient
from viopay_device.errors import PairingCodeExpired
from viopay_device.models import Activation, Config, DeviceStatus, TerminalParameters

__all__ = ["STEPS", "ActivationResult", "StepReport", "activate_device"]

T = TypeVar("T")

#: The step names reported, in order ("pairing_code" and "wait_until_claimed" only for an
#: ``inactive`` device, and again for each renewed pairing code).
STEPS: tuple[str, ...] = (
    "bootstrap",
    "pairing_code",
    "wait_until_claimed",
    "attest",
    "keys",
    "config",
    "terminal_parameters",
    "activate",
)


@dataclass(frozen=True)
class StepReport:
    """One finished step: its name, how long it took, and what it returned (a PairingCode for
    ``pairing_code``, which the terminal shows to the merchant)."""

    name: str
    elapsed: float
    result: object


@dataclass(frozen=True)
class ActivationResult:
    status: DeviceStatus | None
    config: Config
    terminal_parameters: TerminalParameters
    activation: Activation


class _Steps:
    """Runs steps, timing each and reporting it."""

    def __init__(
        self, on_step: Callable[[StepReport], None] | None, timer: Callable[[], float]
    ) -> None:
        self._on_step = on_step
        self._timer = timer

    def run(self, name: str, call: Callable[[], T]) -> T:
        started = self._timer()
        result = call()
        if self._on_step is not None:
            self._on_step(StepReport(name=name, elapsed=self._timer() - started, result=result))
        return result


def activate_device(
    client: DeviceClient,
    *,
    on_step: Callable[[StepReport], None] | None = None,
    on_poll: Callable[[DeviceStatus], None] | None = None,
    pairing_attempts: int = 3,
    sleep: Callable[[float], None] | None = None,
    timer: Callable[[], float] = time.monotonic,
) -> ActivationResult:
    """Bootstrap → pairing code → wait until claimed → attest → keys → config → terminal
    parameters → activate, calling ``on_step`` with a StepReport after each step.

    A device that bootstrap reports already claimed (or activated: a re-activation) skips the
    pairing steps. An expired pairing code is replaced, up to ``pairing_attempts`` codes in
    all; then PairingCodeExpired propagates. Any other error stops the flow where it happened.
    """
    steps = _Steps(on_step, timer)
    bootstrap = steps.run("bootstrap", client.bootstrap)
    status = None
    if bootstrap.device_status == "inactive":
        status = _pair(client, steps, on_poll=on_poll, attempts=pairing_attempts, sleep=sleep)
    steps.run("attest", client.attest)
    key_set = steps.run("keys", client.download_keys)
    config = steps.run("config", lambda: client.fetch_config(key_set_id=key_set.key_set_id))
    params = steps.run(
        "terminal_parameters",
        lambda: client.fetch_terminal_parameters(key_set_id=key_set.key_set_id),
    )
    activation = steps.run("activate", client.activate)
    return ActivationResult(
        status=status, config=config, terminal_parameters=params, activation=activation
    )


def _pair(
    client: DeviceClient,
    steps: _Steps,
    *,
    on_poll: Callable[[DeviceStatus], None] | None,
    attempts: int,
    sleep: Callable[[float], None] | None,
) -> DeviceStatus:
    for attempt in range(1, attempts + 1):
        steps.run("pairing_code", client.request_pairing_code)
        try:
            return steps.run(
                "wait_until_claimed",
                lambda: client.wait_until_claimed(on_poll=on_poll, sleep=sleep),
            )
        except PairingCodeExpired:
            if attempt >= attempts:
                raise
    raise ValueError("pairing_attempts must be at least 1")
