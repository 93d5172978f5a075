"""Configuration from environment variables (and an optional `.env`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ConfigError(Exception):
    """Invalid configuration; the message names the variable."""


# What a bearer key may call: `storefront` (the default) every route but the
# operator ones; `operator` every route.
STOREFRONT_SCOPE = "storefront"
OPERATOR_SCOPE = "operator"
API_KEY_SCOPES = (STOREFRONT_SCOPE, OPERATOR_SCOPE)


def api_key_entry(entry: str) -> tuple[str, str]:
    """A RESERVATION_API_KEYS entry, `key` or `key:scope`, as (key, scope).
    The scope follows the last colon, so a key with a colon of its own must
    name its scope. The ValueError never quotes the entry: what follows a
    colon may be part of a key."""
    key, colon, scope = entry.rpartition(":")
    if not colon:
        key, scope = entry, STOREFRONT_SCOPE
    if scope not in API_KEY_SCOPES:
        raise ValueError(f"an entry names an unknown scope (scopes: {', '.join(API_KEY_SCOPES)})")
    if not key:
        raise ValueError("an entry has a scope but no key")
    return key, scope


# Fanfare retries a failed delivery for about 44 hours (its guide): the
# longest a duplicate of a webhook can come after the first one.
FANFARE_RETRY_SPAN_HOURS = 44.5


def _split_csv(value: object) -> object:
    # Lists arrive as comma-separated strings; pydantic-settings would
    # otherwise insist on JSON for list-typed variables.
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    database_url: str = Field(description="PostgreSQL DSN (postgresql://user@host:port/db)")
    kafka_bootstrap_servers: str = Field(description="Kafka bootstrap servers, host:port[,...]")
    fanfare_webhook_secret: Annotated[list[SecretStr], NoDecode] = Field(
        description="Active Fanfare signing secrets, comma-separated (several during rotation)",
    )
    reservation_api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Bearer keys accepted by the API, comma-separated, each `key` (storefront) "
        "or `key:operator` (also the operator routes)",
    )
    api_wait_seconds: float = Field(
        default=5.0, gt=0, description="How long an API write waits for its applied outcome"
    )
    metrics_experience_labels: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="Experiences a process names in the hold counters' `experience` label; "
        "later ones are `other`. 0: none, every experience is `all`",
    )
    ops_host: str = Field(default="127.0.0.1", description="bind host of the ops endpoints")
    ops_port: int = Field(
        default=9090, ge=0, le=65535, description="healthz/readyz/metrics of non-HTTP roles"
    )
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8080, ge=1, le=65535)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8081, ge=1, le=65535)

    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = Field(
        default=None, description="CA bundle for the brokers' certificates (default: system trust)"
    )
    kafka_ssl_certfile: str | None = Field(default=None, description="client certificate (mTLS)")
    kafka_ssl_keyfile: str | None = Field(default=None, description="client key (mTLS)")

    commands_topic: str = "reservations.commands"
    events_topic: str = "reservations.events"
    dead_letter_topic: str = "reservations.commands.dlq"
    quarantine_topic: str = Field(
        default="reservations.quarantine",
        description="Signed deliveries whose data could not be translated (credentials "
        "digested), kept for `worker quarantine replay`",
    )
    forward_unknown_events_topic: str | None = Field(
        default=None,
        description="If set, Fanfare events of unknown type are produced to this topic "
        "(whole envelope, credentials digested) before the 2xx; unset: acknowledged only",
    )
    topic_partitions: int = Field(default=12, ge=1)
    topic_replication_factor: int = Field(default=1, ge=1)
    consumer_group: str = "reservation-consumers"
    consumer_instance_id: str | None = Field(
        default=None,
        description="Static group membership (KIP-345): unique per consumer process and stable "
        "across its restarts (the pod name); unset or empty: dynamic membership",
    )
    consumer_session_timeout_ms: int = Field(
        default=10_000,
        ge=1_000,
        description="A member silent this long is dropped and its partitions reassigned; also "
        "how long a rebalance waits for a member still finishing its batch",
    )
    consumer_heartbeat_interval_ms: int = Field(
        default=1_000,
        ge=100,
        description="How often a member heartbeats: how soon it learns of a rebalance",
    )

    reservation_window_seconds: int = Field(default=600, ge=1)
    reservation_buffer_seconds: int = Field(default=60, ge=0)
    signature_tolerance_seconds: int = Field(default=300, ge=1)
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    produce_timeout_seconds: float = Field(default=5.0, gt=0)
    http_body_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Deadline for a request body to arrive whole (408 after)"
    )
    http_idle_timeout_seconds: float = Field(
        default=15.0, gt=0, description="Idle or unfinished-header connections closed after this"
    )

    commands_topic_retention_hours: float = Field(
        default=120.0,
        gt=0,
        description="retention.ms of the commands topic when the service creates it: how long "
        "after it was written a command can still be read (and applied) again",
    )
    inbox_retention_hours: float = Field(
        default=168.0,
        gt=0,
        description="Applied command ids kept this long; at least Fanfare's retry span plus "
        "COMMANDS_TOPIC_RETENTION_HOURS",
    )
    history_retention_days: float = Field(
        default=30.0,
        gt=0,
        description="Ended admissions, ended holds, remembered endings and cart versions no "
        "decision needs are deleted this long after their time; grant tombstones an "
        "INBOX_RETENTION_HOURS later",
    )

    consumer_batch_max: int = Field(default=500, ge=1)
    consumer_poll_ms: int = Field(default=200, ge=1)
    db_pool_max: int = Field(default=10, ge=1)

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop", description="uvloop, or the standard library's loop to compare"
    )

    @field_validator("consumer_instance_id")
    @classmethod
    def _empty_instance_id_is_dynamic(cls, value: str | None) -> str | None:
        # An empty downward-API value must not make every process one member.
        return value.strip() or None if value is not None else None

    @field_validator("consumer_heartbeat_interval_ms")
    @classmethod
    def _heartbeat_within_session(cls, value: int, info: ValidationInfo) -> int:
        session = info.data.get("consumer_session_timeout_ms")
        if session is not None and value * 3 > session:
            raise ValueError("must be at most a third of CONSUMER_SESSION_TIMEOUT_MS")
        return value

    @field_validator("inbox_retention_hours")
    @classmethod
    def _inbox_outlives_redelivery(cls, value: float, info: ValidationInfo) -> float:
        # A duplicate arrives at most FANFARE_RETRY_SPAN_HOURS after the first
        # delivery, and is readable on the commands topic for its retention.
        topic = info.data.get("commands_topic_retention_hours")
        if topic is not None and value < FANFARE_RETRY_SPAN_HOURS + topic:
            raise ValueError(
                f"must be at least {FANFARE_RETRY_SPAN_HOURS} h (Fanfare's retry span) plus "
                f"COMMANDS_TOPIC_RETENTION_HOURS ({topic:g} h)"
            )
        return value

    @field_validator("history_retention_days")
    @classmethod
    def _history_outlives_inbox(cls, value: float, info: ValidationInfo) -> float:
        # A grant is refused by its tombstone once its admission is pruned:
        # the tombstone must outlive every way the grant can come back.
        inbox = info.data.get("inbox_retention_hours")
        if inbox is not None and value * 24 < inbox:
            raise ValueError(f"must cover INBOX_RETENTION_HOURS ({inbox:g} h)")
        return value

    @field_validator("fanfare_webhook_secret", "reservation_api_keys", mode="before")
    @classmethod
    def _secrets_from_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("reservation_api_keys")
    @classmethod
    def _known_scopes(cls, value: list[SecretStr]) -> list[SecretStr]:
        for entry in value:
            api_key_entry(entry.get_secret_value())
        return value

    @field_validator("fanfare_webhook_secret")
    @classmethod
    def _at_least_one_secret(cls, value: list[SecretStr]) -> list[SecretStr]:
        if not value:
            raise ValueError("at least one secret is required")
        return value


def load_settings(**overrides: object) -> Settings:
    """Build settings or raise ConfigError with one line naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        variable = str(first["loc"][0]).upper() if first["loc"] else "configuration"
        raise ConfigError(f"invalid configuration: {variable}: {first['msg']}") from None


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that make a process read `settings` back:
    how a parent (a test, the bench) starts roles with its own settings."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, list):
            value = ",".join(_plain(v) for v in value)
        env[name.upper()] = _plain(value)
    return env


def _plain(value: object) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)
