from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr, model_validator

from shared.crypto import PersonalDataSettings
from shared.settings import (
    DEVELOPMENT_SECRET_PREFIX,
    database_pool_overflow_field,
    database_pool_size_field,
)


class IntakeSettings(PersonalDataSettings):
    """Intake's settings (VROEG_*)."""

    service_name: ClassVar[str] = "intake"
    default_port: ClassVar[int] = 8001

    # About the concurrent partner requests one replica serves (bench/intake: 25 and 10
    # served 50 clients best; 25 and 0, or 40 and 0, served fewer).
    database_pool_size: int = database_pool_size_field(25)
    database_pool_overflow: int = database_pool_overflow_field(10)
    household_key_secret: SecretStr = Field(
        SecretStr(DEVELOPMENT_SECRET_PREFIX + "household-key"),
        description="Regional secret for the keyed hash of normalised addresses (only intake "
        "sees addresses). Changing it splits every household's history: rotate with care.",
    )
    token_signing_key: SecretStr = Field(
        SecretStr(DEVELOPMENT_SECRET_PREFIX + "token-signing-key-0123456789abcdef"),
        description="HMAC key that signs partner access tokens (HS256).",
    )
    token_lifetime_s: int = Field(900, description="Lifetime of a partner access token.")
    token_issuer: str = Field("vroeg-intake", description="`iss` of partner access tokens.")

    delivery_chunk_size: int = Field(1000, description="Signals of a delivery per transaction.")
    delivery_parallel_chunks: int = Field(
        2,
        ge=1,
        description="Chunks of one delivery in flight at once (one database connection each); "
        "while one waits for the database another is validated.",
    )
    delivery_max_lines: int = Field(100_000, description="Most signals in one delivery.")
    delivery_lease_s: float = Field(
        60, description="A worker's hold on a delivery; another replica takes over after it."
    )
    delivery_poll_interval_s: float = Field(
        1.0, description="How often a worker looks for deliveries other replicas received."
    )
    max_signal_bytes: int = Field(64 * 1024, description="Largest body of POST /api/v1/signalen.")
    max_delivery_bytes: int = Field(
        64 * 1024 * 1024, description="Largest body of POST /api/v1/leveringen."
    )
    rate_limit_per_s: float = Field(
        200, description="Requests per second per partner (per replica) before 429."
    )
    rate_limit_burst: int = Field(400, description="Requests a partner may send in one burst.")
    audit_commit_timeout_s: float = Field(
        5.0,
        description="Longest a partner call waits for its audit record to commit; after it "
        "the call is answered 503 instead (an answered call is always audited).",
    )
    audit_retry_after_s: int = Field(5, description="Retry-After of that 503.")
    public_url: str = Field(
        "http://127.0.0.1:8001",
        description="Where partners reach this API (scheme and host); the OpenAPI document's "
        "server. Must be https in production.",
    )

    @model_validator(mode="after")
    def https_in_production(self) -> IntakeSettings:
        if self.environment == "production" and not self.public_url.startswith("https://"):
            raise ValueError("public_url must be an https URL in production")
        return self
