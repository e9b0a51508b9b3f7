"""Heartbeats on a schedule (PROTOCOL §8)::

    schedule = HeartbeatSchedule(client, report=lambda: {"battery_pct": battery(), "printer": "ok"})
    threading.Thread(target=schedule.run, args=(stop_event,), daemon=True).start()

Each beat reports the terminal's health, then fetches the config or the terminal parameters
again when the server holds another version, so a merchant's change reaches the terminal
within one heartbeat. The next beat comes after the server's ``next_heartbeat_s``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from viopay_device.client import DeviceClient
from viopay_device.errors import DeviceError
from viopay_device.models import Heartbeat

logger = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_INTERVAL = 60.0  # until the server has said otherwise, and after a failure


class HeartbeatSchedule:
    """Beats for ``client``; ``report`` returns the health members to send each time."""

    def __init__(
        self,
        client: DeviceClient,
        *,
        report: Callable[[], Mapping[str, Any]] = dict,
        on_refresh: Callable[[bool, bool], None] | None = None,
    ) -> None:
        self._client, self._report, self._on_refresh = client, report, on_refresh
        self.interval = DEFAULT_HEARTBEAT_INTERVAL
        self.last: Heartbeat | None = None
        self.last_error: DeviceError | None = None

    def beat(self) -> Heartbeat:
        """One heartbeat, and the refetches it calls for."""
        beat = self._client.heartbeat(**dict(self._report()))
        self.last, self.interval = beat, float(beat.next_heartbeat_s)
        changed = self._client.refresh_changed(beat)
        if any(changed) and self._on_refresh is not None:
            self._on_refresh(*changed)
        return beat

    def run(self, stop: threading.Event) -> None:
        """Beat until ``stop`` is set; a failed beat is logged and tried at the next period."""
        while not stop.is_set():
            try:
                self.beat()
                self.last_error = None
            except DeviceError as exc:
                self.last_error = exc
                logger.warning("heartbeat failed: %s", type(exc).__name__)
            stop.wait(self.interval)
