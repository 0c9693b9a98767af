from typing import ClassVar

from pydantic import Field

from shared.settings import ServiceSettings


class MatchingSettings(ServiceSettings):
    """Matching's settings (VROEG_*)."""

    service_name: ClassVar[str] = "matching"
    default_port: ClassVar[int] = 8002

    consecutive_window_months: int = Field(
        3,
        ge=1,
        le=6,
        description="Default months looked back for a consecutive match (3 in the policy "
        "plan, up to 6 in the national monitor); a municipality's own rule (vroeg matchregels) "
        "overrides it.",
    )
    consumer_batch_size: int = Field(
        2000,
        ge=1,
        description="Most records a consumer takes per batch: matching's statements per batch "
        "are fixed, so larger batches cost less per signal.",
    )
    consumer_lanes: int = Field(
        3,
        ge=1,
        le=6,
        description="Transactions a batch is split into, by household key, run side by side: "
        "while one lane waits for the database, another applies the rules.",
    )
    bundling_check_interval_s: float = Field(
        5.0, description="How often held (bundled) matches are checked for forwarding."
    )
