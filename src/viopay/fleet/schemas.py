"""The heartbeat's plaintext (PROTOCOL §8): every member optional and bounded."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt


class HeartbeatIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    battery_pct: StrictInt | None = Field(default=None, ge=0, le=100)
    charging: StrictBool | None = None
    network: Literal["wifi", "ethernet", "cellular"] | None = None
    signal_dbm: StrictInt | None = Field(default=None, ge=-150, le=0)
    printer: Literal["ok", "paper_low", "paper_out", "error"] | None = None
    pending_offline: StrictInt | None = Field(default=None, ge=0, le=1_000_000)
    uptime_s: StrictInt | None = Field(default=None, ge=0, le=10**9)

    def given(self) -> dict[str, object]:
        """The members the terminal sent (an omitted member keeps its last value)."""
        return {name: getattr(self, name) for name in self.model_fields_set}
