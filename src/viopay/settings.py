"""Configuration: one pydantic-settings class read from ``VIOPAY_*`` environment variables.

With nothing set, the server runs on the *embedded default*: a SQLite file under ``./var``,
an in-process cache, its own token issuer and master key file, and the sandbox processor.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Literal

import semver
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from viopay.crypto.wrapping import decode_master_key

_SEMVER_FIELD_HELP = "a SemVer 2.0 version such as 1.4.2"


# Terminals a server process keeps warm (VIOPAY_TERMINAL_CACHE_SIZE's default).
TERMINAL_CACHE_SIZE = 4096


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIOPAY_", extra="ignore", frozen=True)

    data_dir: Path = Field(
        default=Path("var"),
        description="Where the embedded default keeps its files (made absolute at start).",
    )
    database_url: str | None = Field(
        default=None,
        description="postgresql://… or sqlite:///path; default: a SQLite file in data_dir.",
    )
    redis_url: str | None = Field(default=None, description="redis://…; default: in-process cache.")
    redis_prefix: str = Field(default="viopay:", description="Prefix of every Redis key.")
    master_key: SecretStr | None = Field(
        default=None,
        description="Base64 of 32 bytes; wraps every key at rest. Required with PostgreSQL.",
    )
    master_key_file: Path | None = Field(
        default=None,
        description="Master key file (embedded default: data_dir/master.key, made at first start).",
    )
    hsm_module: Path | None = Field(
        default=None,
        description="PKCS#11 library of the HSM holding the master key (e.g. /usr/lib/softhsm/libsofthsm2.so); unset: key file.",
    )
    hsm_token: str | None = Field(default=None, description="Label of the HSM token.")
    hsm_pin: SecretStr | None = Field(default=None, description="User PIN of the HSM token.")
    hsm_key_label: str = Field(
        default="viopay-master", description="Label of the master key (AES-256) on the token."
    )
    master_key_refresh_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="How often a server re-reads which master keys exist (online rotation).",
    )
    min_pos_version: str = Field(default="1.0.0", description="Oldest POS app version accepted.")
    latest_pos_version: str | None = Field(
        default=None, description="Newest published POS app version."
    )
    oidc_issuer: str | None = Field(
        default=None,
        description="OpenID provider's issuer URL (Keycloak: https://HOST/realms/REALM); default: embedded issuer.",
    )
    oidc_audience: str = Field(
        default="viopay", description="Expected `aud` (or `azp`) of Bearer tokens."
    )
    oidc_client_id: str | None = Field(
        default=None, description="The portal's client at the OpenID provider (sign-in with PKCE)."
    )
    oidc_client_secret: SecretStr | None = Field(
        default=None, description="That client's secret (none for a public client)."
    )
    oidc_jwks_refresh_seconds: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="Least time between two JWKS fetches made for a token naming an unknown kid.",
    )
    token_ttl_seconds: int = Field(
        default=3600, ge=60, le=86400, description="Embedded issuer token life."
    )
    rotation_grace_seconds: int = Field(default=600, ge=0, le=86400)
    keyset_max_envelopes: int = Field(default=2**24, ge=10, le=2**24)
    processor: str = Field(
        default="sandbox",
        description="Payment processor: sandbox (PROTOCOL §4.6), or package.module:factory of a connector.",
    )
    sandbox_latency_ms: int = Field(
        default=0,
        ge=0,
        le=60_000,
        description="Time the sandbox processor takes for every call (§4.6).",
    )
    loop_stall_ms: int = Field(
        default=0,
        ge=0,
        le=60_000,
        description="Log event_loop_stalled, with the stack that held it, when a process's event loop is held longer than this (0: off).",
    )
    recovery_delay_seconds: int = Field(
        default=60,
        ge=1,
        le=86_400,
        description="Age at which a payment intent without an outcome is finished by recovery (§4.7).",
    )
    webhook_allow_insecure: bool = Field(
        default=False,
        description="Allow http:// webhook URLs and any address (tests and local development only).",
    )
    webhook_retry_schedule: str = Field(
        default="5,300,1800,7200,18000,36000,36000",
        description="Seconds between webhook attempts after the first, comma-separated (§7).",
    )
    webhook_concurrency: int = Field(
        default=16,
        ge=1,
        le=256,
        description="Webhook deliveries one server process attempts at once.",
    )
    webhook_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often a server process looks for due webhook deliveries.",
    )
    terminal_cache_size: int = Field(
        default=TERMINAL_CACHE_SIZE,
        ge=1,
        le=1_000_000,
        description="Terminals whose authentication row and unwrapped keys a server process keeps (past it, the least recently seen are read again: correct, one read more). Size it for the terminals one process serves: each beats every minute.",
    )
    heartbeat_interval_seconds: int = Field(
        default=60, ge=1, le=3600, description="next_heartbeat_s told to terminals (§8)."
    )
    fleet_check_seconds: float = Field(
        default=10.0,
        gt=0,
        le=30,
        description="How often the fleet timer marks terminals offline (§8).",
    )
    pairing_signature: Literal["required", "off"] = Field(
        default="required",
        description="Pairing-code and status need the §2.2 signature (required), or not (off: firmware built to the original flow).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = Field(
        default=True, description="JSON logs (structlog); false for console output."
    )
    public_url: str = Field(default="http://127.0.0.1:8000", description="Base URL of this server.")
    db_pool_size: int = Field(default=10, ge=1, le=200)
    redis_pool_size: int = Field(
        default=50,
        ge=1,
        le=1000,
        description="Redis connections per process; a command waits up to 10 s for one (then 503).",
    )

    @field_validator("min_pos_version", "latest_pos_version")
    @classmethod
    def _semver(cls, value: str | None) -> str | None:
        if value is not None and not semver.Version.is_valid(value):
            raise ValueError(f"must be {_SEMVER_FIELD_HELP}, got {value!r}")
        return value

    @field_validator("data_dir", "master_key_file")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Absolute once, at start: a command run from another folder names the same files,
        # and every message can say exactly which folder it used.
        return None if value is None else value.expanduser().absolute()

    @field_validator("master_key")
    @classmethod
    def _master_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                decode_master_key(value.get_secret_value())
            except ValueError:
                raise ValueError(
                    "must be base64 of 32 bytes (make one with `viopay keys new-master`)"
                ) from None
        return value

    @field_validator("processor")
    @classmethod
    def _processor(cls, value: str) -> str:
        if value != "sandbox" and not re.fullmatch(r"[\w.]+:[\w.]+", value):
            raise ValueError("must be 'sandbox' or 'package.module:factory'")
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _retry_schedule(cls, value: str) -> str:
        try:
            delays = [int(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise ValueError("must be whole seconds, comma-separated, such as 5,300,1800") from None
        if any(d < 0 or d > 7 * 86400 for d in delays):
            raise ValueError("each delay must be 0-604800 seconds")
        return value

    @property
    def webhook_retry_delays(self) -> tuple[int, ...]:
        """VIOPAY_WEBHOOK_RETRY_SCHEDULE as seconds: the delay before each retry."""
        return tuple(int(part) for part in self.webhook_retry_schedule.split(",") if part.strip())

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^(postgres(ql)?(\+asyncpg)?|sqlite(\+aiosqlite)?)://", value):
            raise ValueError("must start with postgresql:// or sqlite:///")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(redis|rediss|unix)://", value):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _production_needs_master_key(self) -> Settings:
        if self.hsm_module is not None and (self.hsm_token is None or self.hsm_pin is None):
            raise ValueError("VIOPAY_HSM_MODULE needs VIOPAY_HSM_TOKEN and VIOPAY_HSM_PIN")
        if (
            not self.embedded
            and self.master_key is None
            and self.master_key_file is None
            and self.hsm_module is None
        ):
            raise ValueError(
                "VIOPAY_MASTER_KEY (base64 of 32 bytes) or VIOPAY_HSM_MODULE is required with "
                "PostgreSQL: every server process must wrap and unwrap keys with the same master "
                "key (make one with `viopay keys new-master`)"
            )
        if self.latest_pos_version is not None and semver.Version.parse(
            self.latest_pos_version
        ) < semver.Version.parse(self.min_pos_version):
            raise ValueError("VIOPAY_LATEST_POS_VERSION must not be below VIOPAY_MIN_POS_VERSION")
        return self

    @property
    def embedded(self) -> bool:
        """True when the database is SQLite (the embedded default)."""
        return self.async_database_url.startswith("sqlite")

    @cached_property
    def async_database_url(self) -> str:
        url = self.database_url or f"sqlite:///{(self.data_dir / 'viopay.db').as_posix()}"
        for plain, driver in (
            ("postgresql://", "postgresql+asyncpg://"),
            ("postgres://", "postgresql+asyncpg://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if url.startswith(plain):
                return driver + url[len(plain) :]
        return url

    @property
    def latest_version(self) -> str:
        return self.latest_pos_version or self.min_pos_version

    @property
    def resolved_master_key_file(self) -> Path:
        return self.master_key_file or self.data_dir / "master.key"


def load_settings() -> Settings:
    return Settings()
