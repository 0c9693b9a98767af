"""Settings every service shares; each service subclasses `ServiceSettings` for its own.

A process is one service: its environment is its configuration (VROEG_*). The embedded
stack (`vroeg up`) writes the values it chose to `.vroeg/runtime.env`, which every
settings class reads as well, so a CLI started in another terminal finds the same stack.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

RUNTIME_ENV_FILE = ".vroeg/runtime.env"

# Development-only secrets. They make `make run` work with no configuration at all and are
# refused when VROEG_ENVIRONMENT=production (see `refuse_development_secrets`).
DEVELOPMENT_SECRET_PREFIX = "development-only-"
MINIMUM_SECRET_LENGTH = 32
PLACEHOLDER_WORDS = ("replace_me", "replace-me", "changethis", "changeme", "secret", "example")


# Settings whose default differs per service: one definition (bounds, text) each, and the
# service's own default where it declares the field again.


def consumer_batch_size_field(default: int) -> Any:
    return Field(default, ge=1, description="Most records a consumer takes per batch.")


def consumer_lanes_field(default: int) -> Any:
    return Field(
        default,
        ge=1,
        le=6,
        description="Transactions a batch is split into, by household key, run side by side: "
        "one lane's database round trips overlap another's work.",
    )


def database_pool_size_field(default: int) -> Any:
    return Field(
        default,
        ge=1,
        le=50,
        description="Database connections kept open. Opening one costs a PostgreSQL backend: "
        "too small a pool for the concurrent work makes a long latency tail.",
    )


def database_pool_overflow_field(default: int) -> Any:
    return Field(
        default,
        ge=0,
        le=50,
        description="Connections opened beyond the pool under a peak, and closed after it. "
        "All services' pools and overflows together must stay under PostgreSQL's "
        "max_connections (README, 'Tuning').",
    )


class ServiceSettings(BaseSettings):
    """Settings shared by every service; read from VROEG_* variables."""

    model_config = SettingsConfigDict(
        env_prefix="VROEG_",
        env_file=RUNTIME_ENV_FILE,
        env_file_encoding="utf-8",
        extra="ignore",
    )

    service_name: ClassVar[str] = "shared"
    default_port: ClassVar[int] = 8000

    environment: Literal["development", "production"] = Field(
        "development",
        description="`production` refuses development secrets and turns on strict checks.",
    )
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma separated."
    )
    kafka_idempotence: bool = Field(
        False,
        description="Idempotent producer. Off for the embedded Tansu broker (unsupported there); "
        "turn on with Apache Kafka.",
    )
    kafka_partitions: int = Field(6, description="Partitions per topic when topics are created.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How clients talk to Kafka. PLAINTEXT for the embedded Tansu broker; "
        "SSL or SASL_SSL for Apache Kafka. Production refuses SASL_PLAINTEXT: the password "
        "would cross the network readable.",
    )
    kafka_ssl_cafile: str | None = Field(
        None, description="CA bundle (PEM) that signed the brokers' certificates; None: system CAs."
    )
    kafka_ssl_certfile: str | None = Field(
        None, description="Client certificate (PEM) for mutual TLS; needs kafka_ssl_keyfile."
    )
    kafka_ssl_keyfile: str | None = Field(
        None, description="Private key (PEM, unencrypted) of the client certificate."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism with SASL_SSL / SASL_PLAINTEXT."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password.")
    postgres_url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:5432",
        description="PostgreSQL server URL (SQLAlchemy form); each service sets its own database.",
    )
    database_prefix: str = Field(
        "vroeg", description="Each service's database is named <prefix>_<service>."
    )
    database_pool_size: int = database_pool_size_field(8)
    database_pool_overflow: int = database_pool_overflow_field(4)
    http_host: str = Field("127.0.0.1", description="Interface the HTTP server binds to.")
    http_shared_port: bool = Field(
        False,
        description="Let several replicas on one host listen on the same port (SO_REUSEPORT): "
        "the kernel spreads new connections over them. Off by default, so that a stray process "
        "can never quietly take a share of the traffic.",
    )
    port: int | None = Field(
        None, description="HTTP port; default per service (intake 8001 ... retention 8005)."
    )
    otel_exporter: Literal["none", "console", "otlp", "file"] = Field(
        "none", description="Where spans go: OTLP/HTTP in production, a JSON-lines file in tests."
    )
    otel_file: str = Field(
        ".vroeg/traces/spans.jsonl", description="Span file when otel_exporter=file."
    )
    otel_endpoint: str = Field(
        "http://127.0.0.1:4318/v1/traces", description="OTLP/HTTP endpoint when otel_exporter=otlp."
    )
    log_level: str = Field("INFO", description="Log level of the structured (JSON) logs.")
    consumer_batch_size: int = consumer_batch_size_field(500)
    consumer_lanes: int = consumer_lanes_field(1)
    consumer_max_attempts: int = Field(
        3, description="Attempts at one message before it goes to the dead-letter topic."
    )
    consumer_retry_backoff_s: float = Field(
        0.5, description="First wait before retrying after an infrastructure error (doubles)."
    )
    consumer_retry_backoff_max_s: float = Field(
        30.0, description="Longest wait between retries of a batch after infrastructure errors."
    )
    consumer_max_transient_retries: int = Field(
        5,
        ge=1,
        description="Batches in a row that may fail on a transient database error (deadlock, "
        "statement timeout, a broken operation) before the batch is taken record by record "
        "and a record that keeps failing is dead-lettered with the reason. An unreachable "
        "database or broker never counts: it is waited for, however long.",
    )
    consumer_transient_budget_s: float = Field(
        300.0,
        ge=0,
        description="How long one record, taken on its own, may keep failing on a transient "
        "database error (a lock held elsewhere, a statement timeout) before its attempts count "
        "towards the dead-letter topic: contention is waited out, a record that fails for "
        "longer is dead-lettered with the reason.",
    )
    consumer_session_timeout_ms: int = Field(
        6_000, description="Kafka consumer session timeout; a dead replica is noticed after it."
    )
    consumer_fetch_max_wait_ms: int = Field(
        50, description="Longest the broker holds a fetch open waiting for new records."
    )
    consumer_max_poll_interval_ms: int = Field(
        60_000, description="Longest a batch may take before the broker assumes the consumer hung."
    )
    outbox_batch_size: int = Field(1000, description="Most outbox rows relayed per round.")
    outbox_poll_interval_s: float = Field(
        0.25, description="Relay poll interval; commits in this process wake it at once."
    )
    outbox_max_record_bytes: int = Field(
        1_048_576,
        ge=1,
        description="Largest record the relay publishes (Kafka's default message.max.bytes "
        "and producer max_request_size); a larger outbox row goes to the dead-letter topic.",
    )
    outbox_linger_s: float = Field(
        0.005,
        description="How long the relay waits after a wake-up so that commits arriving together "
        "are published in one round.",
    )

    @property
    def http_port(self) -> int:
        return self.port or self.default_port

    @property
    def database_name(self) -> str:
        return f"{self.database_prefix}_{self.service_name}"

    @property
    def database_url(self) -> str:
        url = make_url(self.postgres_url).set(database=self.database_name)
        return url.render_as_string(hide_password=False)

    @property
    def keystore_url(self) -> str:
        """The key store of per-person data keys: a vault of its own, owned by no service."""
        url = make_url(self.postgres_url).set(database=f"{self.database_prefix}_keys")
        return url.render_as_string(hide_password=False)

    @property
    def consumer_group(self) -> str:
        return f"{self.database_prefix}-{self.service_name}"

    @model_validator(mode="after")
    def check_kafka_security(self) -> ServiceSettings:
        """SASL settings come whole or not at all; client certificates come with their key."""
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"kafka_security_protocol {self.kafka_security_protocol} needs "
                "kafka_sasl_mechanism, kafka_sasl_username and kafka_sasl_password"
            )
        if not sasl and (self.kafka_sasl_mechanism or self.kafka_sasl_username):
            raise ValueError(
                "kafka_sasl_* settings need kafka_security_protocol SASL_SSL or SASL_PLAINTEXT"
            )
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            raise ValueError("kafka_ssl_certfile and kafka_ssl_keyfile go together")
        if self.environment == "production" and self.kafka_security_protocol == "SASL_PLAINTEXT":
            raise ValueError(
                "kafka_security_protocol SASL_PLAINTEXT sends the Kafka password unencrypted: "
                "use SASL_SSL in production"
            )
        return self

    @model_validator(mode="after")
    def refuse_development_secrets(self) -> ServiceSettings:
        """In production every secret must be a real one: not the development default, not a
        placeholder, and at least 32 characters."""
        if self.environment == "production":
            for name, value in self.secret_values().items():
                if value.startswith(DEVELOPMENT_SECRET_PREFIX):
                    raise ValueError(f"{name} still holds a development secret")
                if len(value) < MINIMUM_SECRET_LENGTH or any(
                    word in value.lower() for word in PLACEHOLDER_WORDS
                ):
                    raise ValueError(f"{name} looks like a placeholder or is too short")
        return self

    def secret_values(self) -> dict[str, str]:
        return {
            name: value.get_secret_value()
            for name, value in self.__dict__.items()
            if isinstance(value, SecretStr)
        }
