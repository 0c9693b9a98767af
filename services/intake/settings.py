from __future__ import annotations

import datetime as dt
from typing import ClassVar

from pydantic import BaseModel, Field, SecretStr, model_validator

from shared.crypto import PersonalDataSettings
from shared.settings import (
    DEVELOPMENT_SECRET_PREFIX,
    database_pool_overflow_field,
    database_pool_size_field,
)


class PreviousTokenKey(BaseModel):
    """A signing key that was rotated out: tokens it signed are accepted until the date."""

    kid: str = Field(min_length=1, max_length=64)
    key: SecretStr
    accepted_until: dt.datetime = Field(
        description="Timezone-aware; at least the token lifetime after the rotation."
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
    token_key_id: str = Field(
        "k1",
        min_length=1,
        max_length=64,
        description="Key id (`kid`) of token_signing_key; give each new key a new id.",
    )
    token_previous_keys: list[PreviousTokenKey] = Field(
        default_factory=list,
        description="Rotated-out keys still accepted until their date, as JSON: "
        '[{"kid": "k0", "key": "...", "accepted_until": "2026-12-01T12:00:00Z"}].',
    )
    token_audience: str = Field("vroeg-partner-api", description="`aud` of partner access tokens.")
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
    # A partner needs a token every token_lifetime_s; these leave room for restarts and
    # several replicas of a partner's system, and stop a client guessing secrets.
    token_rate_per_client_per_s: float = Field(
        1.0, description="Token requests per second per client id (per replica) before 429."
    )
    token_burst_per_client: int = Field(20, description="Token requests per client id in a burst.")
    # The source is request.client: the TCP peer, or the X-Forwarded-For address when the
    # peer is a proxy uvicorn trusts (environment FORWARDED_ALLOW_IPS, default 127.0.0.1).
    # Behind a reverse proxy or load balancer on another address, set FORWARDED_ALLOW_IPS
    # to it, or every partner shares the proxy's one bucket. (There is no
    # trusted_proxy_hops setting of our own: uvicorn takes the nearest untrusted hop.)
    token_rate_per_source_per_s: float = Field(
        10.0,
        description="Token requests per second per source address (per replica) before 429. "
        "Behind a proxy the source is the forwarded address only if FORWARDED_ALLOW_IPS "
        "names that proxy; otherwise all requests share the proxy's bucket.",
    )
    token_burst_per_source: int = Field(
        100, description="Token requests per source address in a burst."
    )
    rate_limit_max_keys: int = Field(
        100_000,
        description="Most rate-limit buckets one limiter keeps; idle (full) ones are dropped "
        "first, so guessed client ids cannot grow memory without bound.",
    )
    delivery_max_in_flight: int = Field(
        5,
        ge=1,
        description="Deliveries of one partner not yet processed before a new one gets 429.",
    )
    delivery_max_reading_per_partner: int = Field(
        2,
        ge=1,
        description="Deliveries of one partner read and parsed at once (per replica); one "
        "more is refused 429 before its body is read.",
    )
    delivery_retry_after_s: int = Field(
        30, description="Retry-After of a delivery refused because too many are in flight."
    )
    public_url: str = Field(
        "http://127.0.0.1:8001",
        description="Where partners reach this API (scheme and host); the OpenAPI document's "
        "server. Must be https in production.",
    )

    @model_validator(mode="after")
    def https_in_production(self) -> IntakeSettings:
        if self.environment == "production" and not self.public_url.startswith("https://"):
            raise ValueError("public_url must be an https URL in production")
        kids = [self.token_key_id, *(key.kid for key in self.token_previous_keys)]
        if len(set(kids)) != len(kids):
            raise ValueError("every token signing key needs a key id of its own")
        for previous in self.token_previous_keys:
            if previous.accepted_until.tzinfo is None:
                raise ValueError("accepted_until of a previous token key needs a time zone")
            if self.environment == "production" and len(previous.key.get_secret_value()) < 32:
                raise ValueError(f"previous token key {previous.kid} is too short")
        return self
