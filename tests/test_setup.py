"""Configuration errors and migrations: the two things every start relies on."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests.stack import Stack
from worker.adapters import postgres
from worker.config import ConfigError, load_settings

BASE = {
    "database_url": "postgresql://u@127.0.0.1:1/db",
    "kafka_bootstrap_servers": "127.0.0.1:1",
    "fanfare_webhook_secret": "whsec_a, whsec_b",
}


def test_secrets_and_keys_are_comma_separated_lists() -> None:
    settings = load_settings(**BASE, reservation_api_keys="k1,k2")
    assert [s.get_secret_value() for s in settings.fanfare_webhook_secret] == ["whsec_a", "whsec_b"]
    assert [k.get_secret_value() for k in settings.reservation_api_keys] == ["k1", "k2"]
    assert "whsec_a" not in repr(settings)  # secrets never printed


@pytest.mark.parametrize(
    ("override", "variable"),
    [
        ({"listen_port": 70000}, "LISTEN_PORT"),
        ({"fanfare_webhook_secret": " , "}, "FANFARE_WEBHOOK_SECRET"),
        ({"consumer_batch_max": 0}, "CONSUMER_BATCH_MAX"),
        ({"log_level": "loud"}, "LOG_LEVEL"),
        # Fanfare's 44.5 h retry span plus the commands topic's 120 h.
        ({"inbox_retention_hours": 164}, "INBOX_RETENTION_HOURS"),
        ({"commands_topic_retention_hours": 200}, "INBOX_RETENTION_HOURS"),
        ({"history_retention_days": 6}, "HISTORY_RETENTION_DAYS"),
        ({"history_retention_days": 0}, "HISTORY_RETENTION_DAYS"),
    ],
)
def test_invalid_value_names_the_variable(override: dict[str, object], variable: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(**{**BASE, **override})
    message = str(exc.value)
    assert message.startswith(f"invalid configuration: {variable}:")
    assert "\n" not in message


def test_a_missing_variable_stops_the_process_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    env.update(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", FANFARE_WEBHOOK_SECRET="whsec_x")
    env.pop("DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "worker", "consumer"],
        env=env,
        cwd=tmp_path,  # no .env file on the way
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("invalid configuration: DATABASE_URL:")


async def test_migrations_are_safe_twice_and_concurrently(stack: Stack) -> None:
    name = f"mig_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(stack.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = stack.database_url.rpartition("/")[0] + f"/{name}"
    try:
        # Two processes' worth at once: they queue on the advisory lock.
        results = await asyncio.gather(postgres.migrate(url), postgres.migrate(url))
        assert sorted(len(r) for r in results) == [0, len(postgres.migration_files())]
        assert await postgres.migrate(url) == []  # and once more: nothing to do
        conn = await asyncpg.connect(url)
        try:
            names = [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")]
        finally:
            await conn.close()
        assert sorted(names) == [p.name for p in postgres.migration_files()]
    finally:
        admin = await asyncpg.connect(stack.database_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_kafka_connection_options_carry_tls_and_sasl_to_every_client() -> None:
    from worker.adapters import kafka

    plain = kafka.connection_options(load_settings(**BASE))
    assert plain == {"bootstrap_servers": "127.0.0.1:1", "security_protocol": "PLAINTEXT"}
    managed = load_settings(
        **BASE,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc",
        kafka_sasl_password="s3cret",
    )
    options = kafka.connection_options(managed)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["ssl_context"].check_hostname  # verified TLS, system trust
    assert (options["sasl_mechanism"], options["sasl_plain_username"]) == ("SCRAM-SHA-512", "svc")
    assert options["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(managed)
    producer = kafka.durable_producer(managed)
    assert producer.client._security_protocol == "SASL_SSL"
    consumer = kafka.command_consumer(managed)
    assert consumer._client._sasl_mechanism == "SCRAM-SHA-512"


def test_settings_env_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a parent hands a role process is read back as the same settings."""
    from worker.config import Settings, settings_env

    original = load_settings(
        **BASE,
        reservation_api_keys="k1,k2",
        listen_port=18080,
        kafka_sasl_password="pw",
        forward_unknown_events_topic="fwd",
    )
    for name, value in settings_env(original).items():
        monkeypatch.setenv(name, value)
    assert Settings() == original  # type: ignore[call-arg]
