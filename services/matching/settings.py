from typing import ClassVar

from pydantic import Field

from services.matching.domain import DEFAULT_CONSECUTIVE_MONTHS, MAX_CONSECUTIVE_MONTHS
from shared.settings import ServiceSettings, consumer_batch_size_field, consumer_lanes_field


class MatchingSettings(ServiceSettings):
    """Matching's settings (VROEG_*)."""

    service_name: ClassVar[str] = "matching"
    default_port: ClassVar[int] = 8002

    consecutive_window_months: int = Field(
        DEFAULT_CONSECUTIVE_MONTHS,
        ge=1,
        le=MAX_CONSECUTIVE_MONTHS,
        description="Default months looked back for a consecutive match (3 in the policy "
        "plan, up to 6 in the national monitor); a municipality's own rule (vroeg matchregels) "
        "overrides it.",
    )
    # Matching's statements per batch are fixed, so larger batches cost less per signal;
    # with three lanes, one waits for the database while another applies the rules.
    consumer_batch_size: int = consumer_batch_size_field(2000)
    consumer_lanes: int = consumer_lanes_field(3)
    bundling_check_interval_s: float = Field(
        5.0, description="How often held (bundled) matches are checked for forwarding."
    )
